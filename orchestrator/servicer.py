"""Orchestrator servicer: protobuf <-> TextRequest / text events and summaries."""

from __future__ import annotations

import hashlib
import threading

from orchestrator.service import Orchestrator
from specdec.core.detokenize import TextEvent
from specdec.core.errors import InvalidArgument
from specdec.serving.convert import summary_to_pb, text_request_from_pb
from specdec.serving.security import authorization_headers
from specdec.serving.server import Role
from specdec.v1 import common_pb2, orchestrator_pb2, orchestrator_pb2_grpc


def client_identity(metadata, peer: str, authenticated: bool) -> str:
    """Who is asking, for per-client limits: the bearer token when tokens are checked (the interceptor let
    exactly one valid one through), else the peer's host; a header nobody checked names no one."""
    headers = authorization_headers(metadata)
    if len(headers) > 1:
        raise InvalidArgument("authorization", "more than one `authorization` header")
    if authenticated:
        return "token:" + hashlib.sha256(headers[0].encode()).hexdigest()[:16]
    return "peer:" + peer.rsplit(":", 1)[0]  # e.g. "ipv4:127.0.0.1:53412" -> "peer:ipv4:127.0.0.1"


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServicer):
    def __init__(self, orchestrator: Orchestrator, info: common_pb2.ServerInfo, authenticated: bool = False) -> None:
        self.orchestrator = orchestrator
        self.info = info
        self.authenticated = authenticated  # bearer tokens are checked (identity = the token)

    def Generate(self, request, context):
        return self.orchestrator.metrics.count_outcomes(self._generate(request, context))

    def _generate(self, request, context):
        client = client_identity(context.invocation_metadata(), context.peer(), self.authenticated)
        with self.orchestrator.admission.admit(client):
            yield from self._admitted(request, context)

    def _admitted(self, request, context):
        cancelled = threading.Event()
        context.add_callback(cancelled.set)
        remaining = context.time_remaining()  # a huge number when the client set no deadline
        timeout = remaining if remaining is not None and remaining < 1e6 else None
        for event in self.orchestrator.generate(text_request_from_pb(request), cancelled, timeout):
            if isinstance(event, TextEvent):
                yield orchestrator_pb2.GenerateResponse(text=event.text, token_ids=event.token_ids)
            else:
                yield orchestrator_pb2.GenerateResponse(summary=summary_to_pb(event))

    def GetServerInfo(self, request, context):
        response = orchestrator_pb2.GetServerInfoResponse(orchestrator=self.info)
        response.orchestrator.active_sessions = self.orchestrator.admission.running
        for backend in self.orchestrator.pool.all:
            try:
                info = backend.describe(timeout=1.0)  # fresh load figures, not the cached identity
            except Exception:  # noqa: BLE001 - an unreachable backend is simply absent from the answer
                continue
            (response.targets if backend.role == Role.TARGET else response.drafts)[backend.address].CopyFrom(info)
        return response
