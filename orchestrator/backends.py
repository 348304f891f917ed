"""Targets and drafts the orchestrator routes to, with their health and load.

A monitor thread asks each backend's grpc.health.v1 service every `interval_s`; a backend that fails
is taken out of routing until it answers SERVING again (so a restarted draft is used again without
any operator action). Routing picks the least-loaded healthy target and draft.
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass
from typing import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from specdec.core.config import ProposerKind
from specdec.core.errors import FailedPrecondition, Unavailable
from specdec.serving.convert import PROPOSER_FROM_PB
from specdec.serving.security import TLSFiles, bearer
from specdec.serving.server import Role, make_channel
from specdec.v1 import common_pb2, draft_pb2, draft_pb2_grpc, target_pb2, target_pb2_grpc

log = logging.getLogger("specdec.orchestrator.backends")


DNS_PREFIX = "dns:///"  # dns:///name:port = one backend per address the name resolves to (headless Services)


@dataclass
class Backend:
    address: str
    role: Role  # TARGET or DRAFT
    channel: grpc.Channel
    metadata: tuple = ()  # the internal credential
    healthy: bool = False
    info: common_pb2.ServerInfo | None = None
    active: int = 0  # requests the orchestrator has running on it
    source: str = ""  # the dns:/// entry it was discovered from, if any
    own: bool = False  # a target's own draft (ServerInfo.own_draft): no service, no address of its own

    def describe(self, timeout: float = 2.0) -> common_pb2.ServerInfo:
        if self.role == Role.TARGET:
            return target_pb2_grpc.TargetServiceStub(self.channel).DescribeTarget(
                target_pb2.DescribeTargetRequest(), timeout=timeout, metadata=self.metadata).info
        return draft_pb2_grpc.DraftServiceStub(self.channel).DescribeDraft(
            draft_pb2.DescribeDraftRequest(), timeout=timeout, metadata=self.metadata).info


class BackendPool:
    def __init__(self, targets: list[str], drafts: list[str], interval_s: float = 0.5,
                 tls: TLSFiles | None = None, token: str | None = None) -> None:
        self.tls, self.metadata = tls, bearer(token)
        self.entries = {Role.TARGET: list(targets), Role.DRAFT: list(drafts)}
        self.targets = [self._make(a, Role.TARGET) for a in targets if not a.startswith(DNS_PREFIX)]
        self.drafts = [self._make(a, Role.DRAFT) for a in drafts if not a.startswith(DNS_PREFIX)]
        self._lock = threading.Lock()
        self.interval_s = interval_s
        self.paired_draft: str | None = None  # set for the paired topology (address as the target sees it)
        self.on_change: Callable[[], None] = lambda: None  # called when a backend's health flips
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

    def _make(self, address: str, role: Role, source: str = "", server_name: str | None = None) -> Backend:
        return Backend(address, role, make_channel(address, self.tls, server_name), self.metadata, source=source)

    def discover(self) -> None:
        """Expand dns:///name:port entries into one backend per resolved address; drop vanished ones."""
        for role, entries in self.entries.items():
            for entry in (e for e in entries if e.startswith(DNS_PREFIX)):
                host, _, port = entry[len(DNS_PREFIX):].rpartition(":")
                try:
                    found = {f"{a[4][0]}:{port}" for a in socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)}
                except OSError:
                    found = set()
                with self._lock:
                    current = self.targets if role == Role.TARGET else self.drafts
                    known = {b.address for b in current if b.source == entry}
                    for b in [b for b in current if b.source == entry and b.address not in found]:
                        current.remove(b)
                        b.channel.close()
                    current.extend(self._make(a, role, entry, host) for a in sorted(found - known))

    def check_all(self) -> None:
        self.discover()
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
        changed = ok != backend.healthy
        if changed:
            log.info("%s %s is now %s", backend.role, backend.address, "healthy" if ok else "unhealthy")
        backend.healthy = ok
        if changed:
            self.on_change()

    def mark_unhealthy(self, backend: Backend, reason: str) -> None:
        if backend.healthy:
            log.warning("%s %s taken out of routing: %s", backend.role, backend.address, reason)
            backend.healthy = False
            self.on_change()

    def ready(self) -> bool:
        """Can route as configured: a healthy target, and a healthy draft where drafts are configured."""
        drafts_ok = (self.paired_draft is not None or not self.entries[Role.DRAFT]
                     or any(d.healthy for d in self.drafts))
        return any(t.healthy and t.info is not None for t in self.targets) and drafts_ok

    def pick(self, proposer: ProposerKind | None = None) -> tuple[Backend, Backend | None]:
        """The least-loaded healthy target, and a healthy draft with the same vocabulary (or None),
        running `proposer` if one is asked for; where no draft service is configured, the target's own
        draft if it runs one."""
        targets = [t for t in self.targets if t.healthy and t.info is not None]
        if not targets:
            raise Unavailable(f"no healthy target among {[t.address for t in self.targets]}")
        target = min(targets, key=lambda b: (b.active, b.info.active_sessions))
        if self.paired_draft is not None:  # paired topology: every target has its own draft on localhost
            return target, Backend(self.paired_draft, Role.DRAFT, None, info=target.info, healthy=True)
        if target.info.own_draft and not self.entries[Role.DRAFT] and proposer in (None, ProposerKind.DRAFT_MODEL):
            return target, Backend("", Role.DRAFT, None, info=target.info, healthy=True, own=True)
        drafts = [d for d in self.drafts if d.healthy and d.info is not None]
        if proposer is not None:
            drafts = [d for d in drafts if PROPOSER_FROM_PB.get(d.info.proposer) == proposer]
            if not drafts:
                raise FailedPrecondition(f"no healthy draft runs the {proposer.value!r} proposer")
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
