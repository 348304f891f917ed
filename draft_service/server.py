"""`specdec serve draft`: wire a proposer factory into a gRPC server."""

from __future__ import annotations

import argparse

from draft_service.servicer import DraftServicer
from specdec.grpc_util import Server, ServerSettings
from specdec.models import context_length, load_model
from specdec.proposers import DraftModelFactory
from specdec.runner import ModelRunner
from specdec.v1 import common_pb2, draft_pb2, draft_pb2_grpc


def build(args: argparse.Namespace) -> Server:
    loaded = load_model(args.draft, "draft", device=args.device, dtype=args.dtype)
    runner = ModelRunner(loaded.model, max_len=context_length(loaded.model, args.max_len),
                         max_sessions=args.max_sessions)
    info = common_pb2.ServerInfo(model=loaded.name, vocab_fingerprint=loaded.fingerprint, role="draft",
                                 max_sessions=args.max_sessions, context_length=runner.max_len,
                                 proposer=common_pb2.PROPOSER_KIND_DRAFT_MODEL)
    servicer = DraftServicer(DraftModelFactory(runner, runner.vocab_size), info, lambda: runner.free_slots,
                             idle_timeout_s=args.idle_timeout)
    name = draft_pb2.DESCRIPTOR.services_by_name["DraftService"].full_name
    return Server(ServerSettings(host=args.host, port=args.port, max_workers=2 * args.max_sessions + 8),
                  [(draft_pb2_grpc.add_DraftServiceServicer_to_server, servicer, name)])
