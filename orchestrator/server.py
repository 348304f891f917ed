"""`specdec serve orchestrator`: the public API in front of targets and drafts, from typed settings."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.backends import BackendPool
from orchestrator.service import Orchestrator, OrchestratorSettings
from orchestrator.servicer import OrchestratorServicer
from specdec.core.errors import InvalidArgument
from specdec.core.models import load_tokenizer, vocab_fingerprint
from specdec.serving.security import TLSFiles
from specdec.serving.server import Server, ServerSettings
from specdec.serving.telemetry import Metrics, server_interceptors
from specdec.v1 import common_pb2, orchestrator_pb2, orchestrator_pb2_grpc


@dataclass(frozen=True)
class OrchestratorServerSettings:
    server: ServerSettings
    target: str = "tiny"  # the target's spec: its tokenizer is the orchestrator's
    targets: tuple[str, ...] = ("127.0.0.1:50052",)
    drafts: tuple[str, ...] = ()
    paired_draft: str | None = None  # paired topology: every target's own draft, as the target sees it
    health_interval_s: float = 0.5
    orchestrator: OrchestratorSettings = OrchestratorSettings()
    backend_tls: TLSFiles | None = None  # TLS (mTLS with a client cert) towards targets and drafts
    internal_token: str | None = None  # bearer token presented to targets and drafts

    def validate(self) -> "OrchestratorServerSettings":
        if not self.targets:
            raise InvalidArgument("targets", "at least one target address is required")
        if not self.health_interval_s > 0:
            raise InvalidArgument("health_interval", f"must be > 0 seconds, got {self.health_interval_s}")
        self.orchestrator.validate()
        return self


def build(settings: OrchestratorServerSettings) -> tuple[Server, BackendPool]:
    settings.validate()
    tokenizer = load_tokenizer(settings.target)
    fingerprint = vocab_fingerprint(tokenizer)
    pool = BackendPool(list(settings.targets), list(settings.drafts), interval_s=settings.health_interval_s,
                       tls=settings.backend_tls, token=settings.internal_token)
    pool.paired_draft = settings.paired_draft
    metrics = Metrics("orchestrator")
    orchestrator = Orchestrator(tokenizer, fingerprint, pool, settings.orchestrator, metrics)
    info = common_pb2.ServerInfo(model=settings.target, vocab_fingerprint=fingerprint, role="orchestrator")
    name = orchestrator_pb2.DESCRIPTOR.services_by_name["Orchestrator"].full_name
    servicer = OrchestratorServicer(orchestrator, info, authenticated=bool(settings.server.tokens))
    server = Server(settings.server, [(orchestrator_pb2_grpc.add_OrchestratorServicer_to_server, servicer, name)],
                    interceptors=server_interceptors(), metrics=metrics, ready=pool.ready)
    pool.on_change = server.refresh_readiness
    return server, pool
