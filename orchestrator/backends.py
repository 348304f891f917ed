"""Targets and drafts the orchestrator routes to, with their health and load.

A monitor thread asks each backend's grpc.health.v1 service every `interval_s`; a backend that fails
is taken out of routing until it answers SERVING again (so a restarted draft is used again without
any operator action). Routing picks the least-loaded healthy target and draft.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from specdec.errors import FailedPrecondition, Unavailable
from specdec.grpc_util import PROPOSER_FROM_PB, channel_options
from specdec.v1 import common_pb2, draft_pb2, draft_pb2_grpc, target_pb2, target_pb2_grpc

log = logging.getLogger("specdec.orchestrator.backends")


@dataclass
class Backend:
    address: str
    role: str  # "target" or "draft"
    channel: grpc.Channel
    healthy: bool = False
    info: common_pb2.ServerInfo | None = None
    active: int = 0  # requests the orchestrator has running on it
    lock: threading.Lock = field(default_factory=threading.Lock)

    def describe(self, timeout: float = 2.0) -> common_pb2.ServerInfo:
        if self.role == "target":
            return target_pb2_grpc.TargetServiceStub(self.channel).DescribeTarget(
                target_pb2.DescribeTargetRequest(), timeout=timeout).info
        return draft_pb2_grpc.DraftServiceStub(self.channel).DescribeDraft(
            draft_pb2.DescribeDraftRequest(), timeout=timeout).info


class BackendPool:
    def __init__(self, targets: list[str], drafts: list[str], interval_s: float = 0.5) -> None:
        if not targets:
            raise ValueError("at least one target address is required")
        make = lambda a, r: Backend(a, r, grpc.insecure_channel(a, options=channel_options()))  # noqa: E731
        self.targets = [make(a, "target") for a in targets]
        self.drafts = [make(a, "draft") for a in drafts]
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._monitor, daemon=True, name="backend-health")

    @property
    def all(self) -> list[Backend]:
        return [*self.targets, *self.drafts]

    def start(self) -> None:
        self.check_all()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        for b in self.all:
            b.channel.close()

    def check_all(self) -> None:
        for backend in self.all:
            self.check(backend)

    def check(self, backend: Backend) -> None:
        try:
            status = health_pb2_grpc.HealthStub(backend.channel).Check(
                health_pb2.HealthCheckRequest(), timeout=max(0.2, self.interval_s)).status
            ok = status == health_pb2.HealthCheckResponse.SERVING
            if ok and (backend.info is None or not backend.healthy):
                backend.info = backend.describe()
        except grpc.RpcError:
            ok = False
        if ok != backend.healthy:
            log.info("%s %s is now %s", backend.role, backend.address, "healthy" if ok else "unhealthy")
        backend.healthy = ok

    def mark_unhealthy(self, backend: Backend, reason: str) -> None:
        if backend.healthy:
            log.warning("%s %s taken out of routing: %s", backend.role, backend.address, reason)
        backend.healthy = False

    def pick(self, proposer: str | None = None) -> tuple[Backend, Backend | None]:
        """The least-loaded healthy target, and a healthy draft with the same vocabulary (or None),
        running `proposer` if one is asked for."""
        targets = [t for t in self.targets if t.healthy and t.info is not None]
        if not targets:
            raise Unavailable(f"no healthy target among {[t.address for t in self.targets]}")
        target = min(targets, key=lambda b: (b.active, b.info.active_sessions))
        drafts = [d for d in self.drafts if d.healthy and d.info is not None]
        if proposer is not None:
            drafts = [d for d in drafts if PROPOSER_FROM_PB.get(d.info.proposer) == proposer]
            if not drafts:
                raise FailedPrecondition(f"no healthy draft runs the {proposer!r} proposer")
        matching = [d for d in drafts if d.info.vocab_fingerprint == target.info.vocab_fingerprint]
        if drafts and not matching:
            d = drafts[0]
            raise FailedPrecondition(
                f"draft {d.info.model!r} at {d.address} (vocab {d.info.vocab_fingerprint}) and target "
                f"{target.info.model!r} at {target.address} (vocab {target.info.vocab_fingerprint}) use "
                "different tokenizers; speculative decoding needs one shared vocabulary")
        draft = min(matching, key=lambda b: (b.active, b.info.active_sessions)) if matching else None
        return target, draft

    def _monitor(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check_all()
