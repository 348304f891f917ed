"""`specdec serve draft`: wire a proposer factory into a gRPC server."""

from __future__ import annotations

import argparse
import logging

from draft_service.servicer import DraftServicer
from draft_service.session import predraft_policy
from specdec.compute import Compute
from specdec.errors import InvalidArgument
from specdec.grpc_util import PROPOSER_TO_PB, Server, ServerSettings
from specdec.models import context_length, load_model, load_tokenizer, vocab_fingerprint
from specdec.proposers import DRAFT_MODEL, NGRAM, ProposerFactory, ReplayBook, ReplayFactory, make_factory
from specdec.runner import SLOT_WAIT_S, ModelRunner
from specdec.telemetry import Metrics, server_interceptors
from specdec.v1 import common_pb2, draft_pb2, draft_pb2_grpc

log = logging.getLogger("specdec.draft")

def build(args: argparse.Namespace) -> Server:
    runner = None
    compute = Compute.for_device(None if args.proposer == NGRAM else args.device)  # compute.py says why
    if args.proposer == NGRAM:  # prompt lookup: no model, no GPU; the vocabulary is the target's tokenizer's
        tokenizer = load_tokenizer(args.target)
        model_name, fingerprint, context = f"ngram ({args.target} tokenizer)", vocab_fingerprint(tokenizer), args.max_len
    else:
        loaded = compute.run(load_model, args.draft, "draft", device=args.device, dtype=args.dtype)
        runner = compute.run(ModelRunner, loaded.model, max_len=context_length(loaded.model, args.max_len),
                             max_sessions=args.max_sessions, cpu_kernels=args.cpu_kernels, slot_wait_s=SLOT_WAIT_S)
        model_name, fingerprint, context = loaded.name, loaded.fingerprint, runner.max_len
    info = common_pb2.ServerInfo(model=model_name, vocab_fingerprint=fingerprint, role="draft",
                                 max_sessions=args.max_sessions, context_length=context,
                                 proposer=PROPOSER_TO_PB[args.proposer])
    free_slots = (lambda: runner.free_slots) if runner else (lambda: args.max_sessions - len(servicer.sessions))
    metrics = Metrics("draft")
    servicer = DraftServicer(factory(args, runner), info, free_slots, idle_timeout_s=args.idle_timeout,
                             metrics=metrics, predraft=predraft_policy(args.predraft, runner.device if runner else None),
                             placement=runner.placement if runner else None, compute=compute,
                             vocab_size=runner.vocab_size if runner else None)
    name = draft_pb2.DESCRIPTOR.services_by_name["DraftService"].full_name
    return Server(ServerSettings(host=args.host, port=args.port, tls=args.tls, tokens=args.accepted_tokens,
                                 max_workers=2 * args.max_sessions + 8),
                  [(draft_pb2_grpc.add_DraftServiceServicer_to_server, servicer, name)],
                  interceptors=server_interceptors(), metrics=metrics)


def factory(args: argparse.Namespace, runner: ModelRunner | None) -> ProposerFactory:
    """The proposers this draft serves; with --replay-references, a replayed draft (benchmarks only)."""
    if args.replay_references is None:
        return make_factory(args.proposer, runner)
    if args.proposer != DRAFT_MODEL:
        raise InvalidArgument("replay_references", f"replays a draft model's cost; --proposer {args.proposer} has none")
    replay = ReplayFactory(runner, ReplayBook.load(args.replay_references), args.replay_alpha, args.replay_runner_up)
    log.warning("REPLAYED acceptance: alpha=%.2f over %s (benchmarks only; proposals are not the draft's own)",
                args.replay_alpha, args.replay_references)
    return replay
