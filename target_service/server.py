"""`specdec serve target`: wire a target ModelRunner into a gRPC server."""

from __future__ import annotations

import argparse

from specdec.compute import Compute
from specdec.decoder import eos_ids_of
from specdec.grpc_util import Server, ServerSettings
from specdec.models import context_length, load_model
from specdec.runner import SLOT_WAIT_S, ModelRunner
from specdec.telemetry import Metrics, server_interceptors
from specdec.v1 import common_pb2, target_pb2, target_pb2_grpc
from target_service.servicer import TargetServicer, TargetSettings


def build(args: argparse.Namespace) -> Server:
    compute = Compute.for_device(args.device)  # load and run on one thread (compute.py says why)
    loaded = compute.run(load_model, args.target, "target", device=args.device, dtype=args.dtype)
    runner = compute.run(ModelRunner, loaded.model, max_len=context_length(loaded.model, args.max_len),
                         max_sessions=args.max_sessions, cpu_kernels=args.cpu_kernels, slot_wait_s=SLOT_WAIT_S)
    info = common_pb2.ServerInfo(model=loaded.name, vocab_fingerprint=loaded.fingerprint, role="target",
                                 max_sessions=args.max_sessions, context_length=runner.max_len)
    metrics = Metrics("target")
    servicer = TargetServicer(runner, eos_ids_of(loaded.tokenizer, loaded.model), info,
                              TargetSettings(max_new_tokens=args.max_new_tokens_limit,
                                             draft_timeout_s=args.draft_timeout,
                                             draft_tls=args.tls if args.tls.enabled else None,
                                             internal_token=args.internal_token), metrics, compute)
    name = target_pb2.DESCRIPTOR.services_by_name["TargetService"].full_name
    return Server(ServerSettings(host=args.host, port=args.port, tls=args.tls, tokens=args.accepted_tokens,
                                 max_workers=2 * args.max_sessions + 8),
                  [(target_pb2_grpc.add_TargetServiceServicer_to_server, servicer, name)],
                  interceptors=server_interceptors(), metrics=metrics)
