"""A small Python client for the public Orchestrator API (used by `specdec client`, tests and bench)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

from google.protobuf import json_format

from specdec.config import SamplingParams
from specdec.grpc_util import PROPOSER_TO_PB, make_channel, sampling_to_pb
from specdec.security import TLSFiles, bearer
from specdec.v1 import orchestrator_pb2, orchestrator_pb2_grpc


@dataclass
class ClientResult:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    summary: orchestrator_pb2.GenerateSummary | None = None

    def to_dict(self) -> dict:
        summary = json_format.MessageToDict(self.summary, preserving_proto_field_name=True) if self.summary else {}
        spec = summary.get("speculation", {})
        stats = {
            "drafts": int(spec.get("drafts", 0)), "draft_tokens": int(spec.get("draft_tokens", 0)),
            "accepted_tokens": int(spec.get("accepted_tokens", 0)),
            "accepted_per_position": [int(x) for x in spec.get("accepted_per_position", [])],
            "mean_acceptance_length": spec.get("mean_acceptance_length", 1.0),
            "tokens_per_second": summary.get("tokens_per_second", 0.0),
            "overlap_hits": int(spec.get("overlap_hits", 0)), "overlap_misses": int(spec.get("overlap_misses", 0)),
            "latency_ms": summary.get("latency", {}), "draft_failed": summary.get("draft_failed", False),
            "accepted_tokens_by_proposer": {k: int(v) for k, v in spec.get("accepted_tokens_by_proposer", {}).items()},
            "draft_tokens_by_proposer": {k: int(v) for k, v in spec.get("draft_tokens_by_proposer", {}).items()},
        }
        return {"text": self.text, "token_ids": self.token_ids,
                "finish_reason": summary.get("finish_reason", "FINISH_REASON_UNSPECIFIED"), "stats": stats}


def build_request(prompt: str | None = None, *, messages: list[dict] | None = None,
                  sampling: SamplingParams = SamplingParams(), max_new_tokens: int | None = None,
                  stop: tuple[str, ...] = (), k: int | None = None, ignore_eos: bool = False,
                  proposer: str | None = None) -> orchestrator_pb2.GenerateRequest:
    request = orchestrator_pb2.GenerateRequest(sampling=sampling_to_pb(sampling), stop=list(stop),
                                               ignore_eos=ignore_eos)
    if messages is not None:
        request.chat.messages.extend(orchestrator_pb2.ChatMessage(**m) for m in messages)
    else:
        request.prompt = prompt or ""
    if max_new_tokens is not None:
        request.max_new_tokens = max_new_tokens
    if k is not None:
        request.k = k
    if proposer is not None:
        request.proposer = PROPOSER_TO_PB[proposer]
    return request


class Client:
    def __init__(self, address: str, timeout_s: float | None = None, tls: TLSFiles | None = None,
                 token: str | None = None) -> None:
        self.channel = make_channel(address, tls)
        self.stub = orchestrator_pb2_grpc.OrchestratorStub(self.channel)
        self.timeout_s = timeout_s
        self.metadata = bearer(token)

    def stream(self, request: orchestrator_pb2.GenerateRequest) -> Iterator[orchestrator_pb2.GenerateResponse]:
        return self.stub.Generate(request, timeout=self.timeout_s, metadata=self.metadata)

    def server_info(self) -> orchestrator_pb2.GetServerInfoResponse:
        return self.stub.GetServerInfo(orchestrator_pb2.GetServerInfoRequest(), timeout=10, metadata=self.metadata)

    def generate(self, request: orchestrator_pb2.GenerateRequest,
                 on_text: Callable[[str], None] | None = None) -> ClientResult:
        result = ClientResult()
        for msg in self.stream(request):
            result.text += msg.text
            result.token_ids.extend(msg.token_ids)
            if on_text and msg.text:
                on_text(msg.text)
            if msg.HasField("summary"):
                result.summary = msg.summary
        return result

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
