"""Orchestrator servicer: protobuf <-> ClientRequest / events."""

from __future__ import annotations

import hashlib
import threading

from orchestrator.service import ClientRequest, Orchestrator, Summary, TextEvent
from specdec.errors import InvalidArgument
from specdec.grpc_util import FINISH_TO_PB, PROPOSER_FROM_PB, sampling_from_pb
from specdec.security import authorization_headers
from specdec.stats import SpecStats
from specdec.v1 import common_pb2, orchestrator_pb2, orchestrator_pb2_grpc


def request_from_pb(pb: orchestrator_pb2.GenerateRequest) -> ClientRequest:
    which = pb.WhichOneof("input")
    if which is None:
        raise InvalidArgument("input", "set `prompt` or `chat`")
    messages = [{"role": m.role, "content": m.content} for m in pb.chat.messages] if which == "chat" else None
    return ClientRequest(prompt=pb.prompt if which == "prompt" else None, messages=messages,
                         sampling=sampling_from_pb(pb.sampling),
                         max_new_tokens=pb.max_new_tokens if pb.HasField("max_new_tokens") else None,
                         stop=tuple(pb.stop), k=pb.k if pb.HasField("k") else None, ignore_eos=pb.ignore_eos,
                         proposer=proposer_from_pb(pb.proposer))


def proposer_from_pb(kind: int) -> str | None:
    if kind == common_pb2.PROPOSER_KIND_UNSPECIFIED:
        return None
    if kind not in PROPOSER_FROM_PB:
        raise InvalidArgument("proposer", f"unknown proposer kind {kind}")
    return PROPOSER_FROM_PB[kind]


def stats_to_pb(s: SpecStats) -> common_pb2.SpeculationStats:
    return common_pb2.SpeculationStats(
        drafts=s.drafts, draft_tokens=s.draft_tokens, accepted_tokens=s.accepted_tokens,
        accepted_per_position=s.accepted_per_position, mean_acceptance_length=s.mean_acceptance_length,
        cycles=s.cycles, overlap_hits=s.overlap_hits, overlap_misses=s.overlap_misses,
        draft_tokens_by_proposer=s.draft_tokens_by_source, accepted_tokens_by_proposer=s.accepted_tokens_by_source)


def summary_to_pb(s: Summary) -> orchestrator_pb2.GenerateSummary:
    st = s.stats
    return orchestrator_pb2.GenerateSummary(
        finish_reason=FINISH_TO_PB.get(s.finish_reason, common_pb2.FINISH_REASON_UNSPECIFIED),
        prompt_tokens=s.prompt_tokens, completion_tokens=s.completion_tokens, speculation=stats_to_pb(st),
        latency=common_pb2.LatencyBreakdown(
            time_to_first_token_ms=st.time_to_first_token_s * 1e3, draft_ms=st.draft_time_s * 1e3,
            verify_ms=st.verify_time_s * 1e3, network_wait_ms=s.network_wait_s * 1e3, total_ms=st.wall_time_s * 1e3),
        tokens_per_second=st.tokens_per_second, draft_failed=s.draft_failed, session_id=s.session_id)


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
        for event in self.orchestrator.generate(request_from_pb(request), cancelled, timeout):
            if isinstance(event, TextEvent):
                yield orchestrator_pb2.GenerateResponse(text=event.text, token_ids=event.token_ids)
            else:
                yield orchestrator_pb2.GenerateResponse(summary=summary_to_pb(event))

    def GetServerInfo(self, request, context):
        response = orchestrator_pb2.GetServerInfoResponse(orchestrator=self.info)
        response.orchestrator.active_sessions = self.orchestrator.active
        for backend in self.orchestrator.pool.all:
            try:
                info = backend.describe(timeout=1.0)  # fresh load figures, not the cached identity
            except Exception:  # noqa: BLE001 - an unreachable backend is simply absent from the answer
                continue
            (response.targets if backend.role == "target" else response.drafts)[backend.address].CopyFrom(info)
        return response
