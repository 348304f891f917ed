"""`specdec serve orchestrator`: the public API in front of targets and drafts."""

from __future__ import annotations

import argparse

from orchestrator.backends import BackendPool
from orchestrator.service import Orchestrator, OrchestratorSettings
from orchestrator.servicer import OrchestratorServicer
from specdec.grpc_util import Server, ServerSettings
from specdec.models import load_tokenizer, vocab_fingerprint
from specdec.telemetry import Metrics, server_interceptors
from specdec.v1 import common_pb2, orchestrator_pb2, orchestrator_pb2_grpc


def build(args: argparse.Namespace) -> tuple[Server, BackendPool]:
    tokenizer = load_tokenizer(args.target)
    fingerprint = vocab_fingerprint(tokenizer)
    pool = BackendPool(args.targets, args.drafts, interval_s=args.health_interval,
                       tls=args.tls if args.tls.enabled else None, token=args.internal_token)
    pool.paired_draft = args.paired_draft
    orchestrator = Orchestrator(tokenizer, fingerprint, pool, OrchestratorSettings(
        default_max_new_tokens=args.default_max_new_tokens, max_new_tokens=args.max_new_tokens_limit,
        k=args.k, adaptive_k=not args.fixed_k, overlap=not args.no_overlap,
        max_requests=args.max_requests, max_requests_per_client=args.max_requests_per_client), metrics := Metrics("orchestrator"))
    info = common_pb2.ServerInfo(model=args.target, vocab_fingerprint=fingerprint, role="orchestrator")
    name = orchestrator_pb2.DESCRIPTOR.services_by_name["Orchestrator"].full_name
    servicer = OrchestratorServicer(orchestrator, info, authenticated=bool(args.accepted_tokens))
    server = Server(ServerSettings(host=args.host, port=args.port, tls=args.tls, tokens=args.accepted_tokens,
                                   max_workers=args.max_workers),
                    [(orchestrator_pb2_grpc.add_OrchestratorServicer_to_server, servicer, name)],
                    interceptors=server_interceptors(), metrics=metrics)
    return server, pool
