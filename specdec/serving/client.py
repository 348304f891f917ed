"""A small Python client for the public Orchestrator API (used by `specdec client`, tests and the bench)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

from specdec.core.config import ChatMessage, ProposerKind, SamplingParams, TextRequest
from specdec.core.stats import SpecStats
from specdec.serving.convert import FINISH_FROM_PB, stats_from_summary_pb, text_request_to_pb
from specdec.serving.security import TLSFiles, bearer
from specdec.serving.server import make_channel
from specdec.v1 import orchestrator_pb2, orchestrator_pb2_grpc


@dataclass
class ClientResult:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    summary: orchestrator_pb2.GenerateSummary | None = None

    @property
    def stats(self) -> SpecStats:
        return stats_from_summary_pb(self.summary) if self.summary is not None else SpecStats()

    def to_dict(self) -> dict:
        """What `specdec client --json` prints: the same shape as `specdec generate --json`."""
        finish = FINISH_FROM_PB.get(self.summary.finish_reason) if self.summary is not None else None
        stats = self.stats.to_dict()
        stats["draft_failed"] = bool(self.summary and self.summary.draft_failed)
        return {"text": self.text, "token_ids": self.token_ids, "finish_reason": finish.value if finish else None,
                "stats": stats}


def build_request(prompt: str | None = None, *, messages: list[dict] | None = None,
                  sampling: SamplingParams = SamplingParams(), max_new_tokens: int | None = None,
                  stop: tuple[str, ...] = (), k: int | None = None, ignore_eos: bool = False,
                  proposer: ProposerKind | None = None) -> orchestrator_pb2.GenerateRequest:
    """A GenerateRequest from keyword arguments (chat `messages` as {"role", "content"} dicts)."""
    chat = tuple(ChatMessage(m["role"], m["content"]) for m in messages) if messages is not None else None
    return text_request_to_pb(TextRequest(prompt=prompt, messages=chat, sampling=sampling,
                                          max_new_tokens=max_new_tokens, stop=tuple(stop), k=k,
                                          ignore_eos=ignore_eos, proposer=proposer))


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
