"""The orchestrator's logic: validate, tokenize once, route, relay the target's stream as text.

It is the control plane: the per-token traffic flows draft <-> target directly; here we only see one
message per verification cycle from the target.
"""

from __future__ import annotations

import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import grpc

from orchestrator.backends import Backend, BackendPool
from specdec.config import MAX_K, SamplingParams
from specdec.decoder import FinishReason
from specdec.detokenize import TextStream
from specdec.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from specdec.grpc_util import FINISH_FROM_PB, PROPOSER_FROM_PB, error_from_status, sampling_to_pb
from specdec.models import encode_prompt
from specdec.sampling import fresh_seed
from specdec.stats import SpecStats
from specdec.telemetry import Metrics, outgoing_metadata, tracer
from specdec.v1 import target_pb2, target_pb2_grpc

MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
CHAT_ROLES = ("system", "user", "assistant")
LARGE_PROMPT_BYTES = 16 * 1024  # prompts above this are tokenized one at a time


def max_token_bytes(tokenizer) -> int:
    """An upper bound on the UTF-8 bytes of text one token stands for: the longest vocabulary entry's own
    UTF-8 length (byte-level and SentencePiece entries spell a byte with a character of 1-3 bytes, so this
    never undercounts). A prompt longer than context x this cannot fit, whatever its tokens."""
    return max(len(token.encode("utf-8")) for token in tokenizer.get_vocab())


class Admission:
    """Bounded concurrency: a global limit and a per-client limit; beyond them RESOURCE_EXHAUSTED,
    at once (clients retry with backoff), so load can never grow memory without bound."""

    def __init__(self, max_requests: int, max_per_client: int) -> None:
        self.max_requests, self.max_per_client = max_requests, max_per_client
        self._lock = threading.Lock()
        self._total = 0
        self._per_client: dict[str, int] = {}

    @contextmanager
    def admit(self, client: str):
        with self._lock:
            if self._total >= self.max_requests:
                raise ResourceExhausted(f"the orchestrator is at its limit of {self.max_requests} concurrent "
                                        "requests; retry later")
            if self._per_client.get(client, 0) >= self.max_per_client:
                raise ResourceExhausted(f"this client already has {self.max_per_client} requests running "
                                        "(the per-client limit); retry later")
            self._total += 1
            self._per_client[client] = self._per_client.get(client, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._total -= 1
                self._per_client[client] -= 1
                if not self._per_client[client]:
                    del self._per_client[client]


@dataclass(frozen=True)
class OrchestratorSettings:
    default_max_new_tokens: int = 128
    max_new_tokens: int = 4096  # the limit a request may ask for
    k: int = 4  # draft tokens per cycle (the maximum, with adaptive K) unless a request fixes it
    adaptive_k: bool = True  # choose K per cycle, down to 0 when speculation does not pay
    overlap: bool = True  # draft the next block while the target verifies
    max_requests: int = 256  # concurrent requests, all clients together
    max_requests_per_client: int = 64  # concurrent requests of one client (its token, else its host)


@dataclass
class ClientRequest:
    """A client's request, as plain values (the servicer fills it from protobuf)."""

    prompt: str | None = None
    messages: list[dict] | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_new_tokens: int | None = None
    stop: tuple[str, ...] = ()
    k: int | None = None
    ignore_eos: bool = False
    proposer: str | None = None  # route to a draft running this proposer; None = any


@dataclass
class TextEvent:
    text: str
    token_ids: list[int]


@dataclass
class Summary:
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    stats: SpecStats
    draft_failed: bool
    session_id: str
    network_wait_s: float


class Orchestrator:
    def __init__(self, tokenizer, fingerprint: str, pool: BackendPool, settings: OrchestratorSettings,
                 metrics: Metrics | None = None) -> None:
        self.tokenizer = tokenizer
        self.metrics = metrics or Metrics("orchestrator")
        self.fingerprint = fingerprint
        self.pool = pool
        self.settings = settings
        self.active = 0
        self._lock = threading.Lock()
        self.admission = Admission(settings.max_requests, settings.max_requests_per_client)
        self.max_token_bytes = max_token_bytes(tokenizer)
        self._large_prompts = threading.Lock()
        self.metrics.track(lambda: self.active, lambda: sum(
            b.info.free_kv_slots for b in pool.targets if b.healthy and b.info is not None))

    def validate(self, req: ClientRequest) -> None:
        """Check every field (the prompt's length is checked against the routed target's context later)."""
        if req.messages is not None:
            if not req.messages:
                raise InvalidArgument("chat.messages", "must not be empty")
            for i, m in enumerate(req.messages):
                if m["role"] not in CHAT_ROLES:
                    raise InvalidArgument(f"chat.messages[{i}].role", f"must be one of {CHAT_ROLES}, got {m['role']!r}")
        elif not req.prompt:
            raise InvalidArgument("prompt", "must not be empty (send `prompt` or `chat`)")
        if req.max_new_tokens is not None and not 1 <= req.max_new_tokens <= self.settings.max_new_tokens:
            raise InvalidArgument("max_new_tokens",
                                  f"must be in [1, {self.settings.max_new_tokens}], got {req.max_new_tokens}")
        if req.k is not None and not 0 <= req.k <= MAX_K:
            raise InvalidArgument("k", f"must be in [0, {MAX_K}], got {req.k}")
        if len(req.stop) > MAX_STOP_STRINGS:
            raise InvalidArgument("stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(req.stop)}")
        for s in req.stop:
            if not s or len(s) > MAX_STOP_CHARS:
                raise InvalidArgument("stop", f"each stop string must have 1..{MAX_STOP_CHARS} characters")
        req.sampling.validate()

    def tokenize(self, req: ClientRequest, context_len: int) -> list[int]:
        """The prompt's token ids, if they fit `context_len` (with room for one new token).

        A prompt whose text could not fit even if every token were the vocabulary's longest is refused
        before any tokenizing: tokenizing megabytes costs seconds of CPU and hundreds of MB that the
        allocator keeps. What passes that bound is tokenized one large prompt at a time, so a burst of
        them takes one core, not all of them, from everyone else's requests.
        """
        texts = [req.prompt] if req.messages is None else [m["content"] for m in req.messages]
        field = "prompt" if req.messages is None else "chat.messages"
        limit = (context_len - 1) * self.max_token_bytes
        chars = sum(map(len, texts))
        size = chars if chars > limit else sum(len(t.encode()) for t in texts)
        if size > limit:
            raise InvalidArgument(field, f"is at least {size} bytes; the target's context of {context_len} tokens "
                                         f"holds at most {limit} bytes of text")
        if size > LARGE_PROMPT_BYTES:
            with self._large_prompts:
                ids = encode_prompt(self.tokenizer, req.prompt, req.messages)
        else:
            ids = encode_prompt(self.tokenizer, req.prompt, req.messages)
        if len(ids) + 1 > context_len:
            raise InvalidArgument(field, f"is {len(ids)} tokens; the target's context holds {context_len}")
        return ids

    def generate(self, req: ClientRequest, cancelled: threading.Event,
                 timeout_s: float | None = None) -> Iterator[TextEvent | Summary]:
        t0 = time.perf_counter()
        sampling = req.sampling
        attributes = {"gen_ai.operation.name": "text_completion", "gen_ai.request.temperature": sampling.temperature,
                      "gen_ai.request.top_p": sampling.top_p, "gen_ai.request.top_k": sampling.top_k,
                      "gen_ai.request.max_tokens": req.max_new_tokens or self.settings.default_max_new_tokens}
        with tracer().start_as_current_span("Generate", attributes=attributes) as span:
            self.validate(req)
            with tracer().start_as_current_span("route") as route:
                target, draft = self.pool.pick(req.proposer)
                route.set_attribute("specdec.target", target.address)
                route.set_attribute("specdec.draft", draft.address if draft else "")
            span.set_attribute("gen_ai.request.model", target.info.model)
            if target.info.vocab_fingerprint != self.fingerprint:
                raise FailedPrecondition(f"target {target.info.model!r} at {target.address} has vocabulary "
                                         f"{target.info.vocab_fingerprint}, the orchestrator's tokenizer "
                                         f"{self.fingerprint}")
            with tracer().start_as_current_span("tokenize"):
                prompt_ids = self.tokenize(req, target.info.context_length)
            span.set_attribute("gen_ai.usage.input_tokens", len(prompt_ids))
            k = self.settings.k if req.k is None else req.k
            session_id = uuid.uuid4().hex
            span.set_attribute("specdec.session_id", session_id)
            request = target_pb2.TargetGenerateRequest(
                session_id=session_id, prompt_ids=prompt_ids, sampling=sampling_to_pb(req.sampling),
                seed=req.sampling.seed if req.sampling.seed is not None else fresh_seed(),
                max_new_tokens=req.max_new_tokens or self.settings.default_max_new_tokens,
                ignore_eos=req.ignore_eos, k=k if draft else 0, draft_address=draft.address if draft and k else "",
                overlap=self.settings.overlap, adaptive_k=self.settings.adaptive_k and req.k is None)
            for event in self._relay(request, req.stop, target, draft, cancelled, timeout_s, t0):
                if isinstance(event, Summary):
                    st = event.stats
                    span.set_attributes({
                        "gen_ai.usage.output_tokens": event.completion_tokens,
                        "gen_ai.response.finish_reasons": [event.finish_reason.value],
                        "specdec.drafts": st.drafts, "specdec.draft_tokens": st.draft_tokens,
                        "specdec.accepted_tokens": st.accepted_tokens,
                        "specdec.mean_acceptance_length": st.mean_acceptance_length,
                        "specdec.draft_failed": event.draft_failed})
                    self.metrics.ttft.labels("orchestrator").observe(st.time_to_first_token_s)
                    self.metrics.request.labels("orchestrator").observe(st.wall_time_s)
                yield event

    def _relay(self, request, stop: tuple[str, ...], target: Backend, draft: Backend | None, cancelled: threading.Event,
               timeout_s: float | None, t0: float) -> Iterator[TextEvent | Summary]:
        stats = SpecStats(prompt_tokens=len(request.prompt_ids))
        text = TextStream(self.tokenizer, stop)
        finish, draft_failed, network_wait = FinishReason.LENGTH, False, 0.0
        stub = target_pb2_grpc.TargetServiceStub(target.channel)
        call = stub.Generate(request, timeout=timeout_s, metadata=outgoing_metadata(target.metadata))
        stop_watch = threading.Thread(target=lambda: cancelled.wait() and call.cancel(), daemon=True)
        stop_watch.start()
        backends = [b for b in (target, draft) if b is not None and request.k]
        for b in backends or [target]:
            b.active += 1
        with self._lock:
            self.active += 1
        try:
            for msg in call:
                c = msg.cycle
                sources = [PROPOSER_FROM_PB.get(s, "draft-model") for s in c.draft_sources]
                stats.observe_cycle(c.k, c.accepted, sources)
                self.metrics.observe_cycle(c.k, c.accepted, sources, c.verify_ms / 1e3,
                                           (c.verify_ms + c.wait_for_draft_ms) / 1e3, len(msg.token_ids))
                stats.verify_time_s += c.verify_ms / 1e3
                if c.k:
                    stats.draft_time_s += c.draft_ms / 1e3
                    stats.wait_time_s += c.wait_for_draft_ms / 1e3
                    network_wait += max(0.0, c.wait_for_draft_ms - c.draft_ms) / 1e3
                    if request.overlap:
                        stats.overlap_hits += c.overlap_hit
                        stats.overlap_misses += not c.overlap_hit
                draft_failed |= msg.draft_failed
                emitted, delta = [], ""
                for token in msg.token_ids:
                    emitted.append(token)
                    delta += text.push(token)
                    if text.stopped:
                        break
                if stats.new_tokens == 0 and emitted:
                    stats.time_to_first_token_s = time.perf_counter() - t0
                stats.new_tokens += len(emitted)
                if text.stopped:
                    finish = FinishReason.STOP
                    call.cancel()
                    yield TextEvent(delta, emitted)
                    break
                if msg.finish_reason:
                    finish = FINISH_FROM_PB[msg.finish_reason]
                yield TextEvent(delta, emitted)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED and (cancelled.is_set() or text.stopped):
                return
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                self.pool.mark_unhealthy(target, exc.details() or "stream broke")
                raise Unavailable(f"target {target.address} failed during the request: {exc.details()}") from exc
            raise error_from_status(exc.code(), exc.details()) from exc
        finally:
            for b in backends or [target]:
                b.active -= 1
            with self._lock:
                self.active -= 1
            cancelled.set()  # releases the watcher thread
        if draft_failed and draft is not None:
            self.pool.mark_unhealthy(draft, "failed during a request")
            self.metrics.fallbacks.labels("orchestrator").inc()
        tail = text.flush()
        if tail:
            yield TextEvent(tail, [])
        stats.wall_time_s = time.perf_counter() - t0
        yield Summary(finish_reason=finish, prompt_tokens=len(request.prompt_ids), completion_tokens=stats.new_tokens,
                      stats=stats, draft_failed=draft_failed, session_id=request.session_id,
                      network_wait_s=network_wait)
