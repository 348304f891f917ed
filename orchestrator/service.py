"""The orchestrator's logic: validate, tokenize once, route, relay the target's stream as text.

It is the control plane: the per-token traffic flows draft <-> target directly; here we only see one
message per verification cycle from the target.
"""

from __future__ import annotations

import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import grpc

from orchestrator.backends import Backend, BackendPool
from specdec.core.config import FinishReason, GenerationRequest, SpeculationConfig, TargetRequest, TextRequest
from specdec.core.detokenize import TextEvent, TextStream
from specdec.core.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from specdec.core.models import encode_prompt
from specdec.core.sampling import fresh_seed
from specdec.core.stats import SpecStats, Summary
from specdec.serving.convert import cycles_from_pb, target_request_to_pb
from specdec.serving.interceptors import error_from_status
from specdec.serving.telemetry import Metrics, outgoing_metadata, tracer
from specdec.v1 import target_pb2_grpc

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

    @property
    def running(self) -> int:
        return self._total

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

    def validate(self) -> "OrchestratorSettings":
        SpeculationConfig(k=self.k).validate()
        for name, value in (("default_max_new_tokens", self.default_max_new_tokens),
                            ("max_new_tokens_limit", self.max_new_tokens), ("max_requests", self.max_requests),
                            ("max_requests_per_client", self.max_requests_per_client)):
            if value < 1:
                raise InvalidArgument(name, f"must be >= 1, got {value}")
        return self


class Orchestrator:
    def __init__(self, tokenizer, fingerprint: str, pool: BackendPool, settings: OrchestratorSettings,
                 metrics: Metrics | None = None) -> None:
        self.tokenizer = tokenizer
        self.metrics = metrics or Metrics("orchestrator")
        self.fingerprint = fingerprint
        self.pool = pool
        self.settings = settings.validate()
        self.admission = Admission(settings.max_requests, settings.max_requests_per_client)
        self.max_token_bytes = max_token_bytes(tokenizer)
        self._large_prompts = threading.Lock()
        self.metrics.track(lambda: (self.admission.running, sum(
            b.info.free_kv_slots for b in pool.targets if b.healthy and b.info is not None), 0))

    def tokenize(self, req: TextRequest, context_len: int) -> list[int]:
        """The prompt's token ids.

        A prompt whose text could not fit even if every token were the vocabulary's longest is refused
        before any tokenizing: tokenizing megabytes costs seconds of CPU and hundreds of MB that the
        allocator keeps. What passes that bound is tokenized one large prompt at a time, so a burst of
        them takes one core, not all of them, from everyone else's requests.
        """
        texts = req.texts
        field = "prompt" if req.messages is None else "chat.messages"
        limit = (context_len - 1) * self.max_token_bytes
        chars = sum(map(len, texts))
        size = chars if chars > limit else sum(len(t.encode()) for t in texts)
        if size > limit:
            raise InvalidArgument(field, f"is at least {size} bytes; the target's context of {context_len} tokens "
                                         f"holds at most {limit} bytes of text")
        messages = [{"role": m.role, "content": m.content} for m in req.messages] if req.messages is not None else None
        if size > LARGE_PROMPT_BYTES:
            with self._large_prompts:
                return encode_prompt(self.tokenizer, req.prompt, messages)
        return encode_prompt(self.tokenizer, req.prompt, messages)

    def generate(self, req: TextRequest, cancelled: threading.Event,
                 timeout_s: float | None = None) -> Iterator[TextEvent | Summary]:
        t0 = time.perf_counter()
        sampling = req.sampling
        max_new_tokens = self.settings.default_max_new_tokens if req.max_new_tokens is None else req.max_new_tokens
        attributes = {"gen_ai.operation.name": "text_completion", "gen_ai.request.temperature": sampling.temperature,
                      "gen_ai.request.top_p": sampling.top_p, "gen_ai.request.top_k": sampling.top_k,
                      "gen_ai.request.max_tokens": max_new_tokens}
        with tracer().start_as_current_span("Generate", attributes=attributes) as span:
            req.validate()
            with tracer().start_as_current_span("route") as route:
                target, draft = self.pool.pick(req.proposer)
                route.set_attribute("specdec.target", target.address)
                route.set_attribute("specdec.draft", ("(the target's own)" if draft.own else draft.address)
                                    if draft else "")
            span.set_attribute("gen_ai.request.model", target.info.model)
            if target.info.vocab_fingerprint != self.fingerprint:
                raise FailedPrecondition(f"target {target.info.model!r} at {target.address} has vocabulary "
                                         f"{target.info.vocab_fingerprint}, the orchestrator's tokenizer "
                                         f"{self.fingerprint}")
            with tracer().start_as_current_span("tokenize"):
                prompt_ids = self.tokenize(req, target.info.context_length)
            generation = GenerationRequest(
                prompt_ids=prompt_ids, max_new_tokens=max_new_tokens,
                sampling=sampling, stop=req.stop, ignore_eos=req.ignore_eos,
            ).validate(max_new_tokens_limit=self.settings.max_new_tokens, context_len=target.info.context_length)
            span.set_attribute("gen_ai.usage.input_tokens", len(prompt_ids))
            k = (self.settings.k if req.k is None else req.k) if draft else 0
            session_id = uuid.uuid4().hex
            span.set_attribute("specdec.session_id", session_id)
            request = TargetRequest(
                session_id=session_id, generation=generation,
                seed=sampling.seed if sampling.seed is not None else fresh_seed(),
                speculation=SpeculationConfig(k=k, max_k=max(1, k), adaptive=self.settings.adaptive_k and req.k is None),
                draft_address=draft.address if draft and k and not draft.own else "", overlap=self.settings.overlap,
                own_draft=bool(draft and k and draft.own))
            for event in self._relay(request, target, draft, cancelled, timeout_s, t0):
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

    def _relay(self, request: TargetRequest, target: Backend, draft: Backend | None, cancelled: threading.Event,
               timeout_s: float | None, t0: float) -> Iterator[TextEvent | Summary]:
        generation = request.generation
        stats = SpecStats(prompt_tokens=len(generation.prompt_ids))
        text = TextStream(self.tokenizer, generation.stop)
        finish, draft_failed = FinishReason.LENGTH, False
        stub = target_pb2_grpc.TargetServiceStub(target.channel)
        call = stub.Generate(target_request_to_pb(request), timeout=timeout_s,
                             metadata=outgoing_metadata(target.metadata))
        stop_watch = threading.Thread(target=lambda: cancelled.wait() and call.cancel(), daemon=True)
        stop_watch.start()
        backends = [b for b in (target, draft) if b is not None and request.speculation.k] or [target]
        for b in backends:
            b.active += 1
        try:
            for msg in call:  # one text event per message, whatever the number of cycles in it
                emitted, delta = [], ""
                for cycle in cycles_from_pb(msg):
                    stats.observe(cycle, overlap=request.overlap)
                    self.metrics.observe_cycle(cycle)
                    draft_failed |= cycle.draft_failed
                    for token in cycle.new_tokens:
                        emitted.append(token)
                        delta += text.push(token)
                        if text.stopped:
                            break
                    if text.stopped:
                        break
                    if cycle.finish_reason is not None:
                        finish = cycle.finish_reason
                if stats.new_tokens == 0 and emitted:
                    stats.time_to_first_token_s = time.perf_counter() - t0
                stats.new_tokens += len(emitted)
                if text.stopped:
                    finish = FinishReason.STOP
                    call.cancel()
                    yield TextEvent(delta, emitted)
                    break
                yield TextEvent(delta, emitted)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED and (cancelled.is_set() or text.stopped):
                return
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                self.pool.mark_unhealthy(target, exc.details() or "stream broke")
                raise Unavailable(f"target {target.address} failed during the request: {exc.details()}") from exc
            raise error_from_status(exc.code(), exc.details()) from exc
        finally:
            for b in backends:
                b.active -= 1
            cancelled.set()  # releases the watcher thread
        if draft_failed and draft is not None and not draft.own:
            self.pool.mark_unhealthy(draft, "failed during a request")
            self.metrics.fallbacks.labels("orchestrator").inc()
        tail = text.flush()
        if tail:
            yield TextEvent(tail, [])
        stats.wall_time_s = time.perf_counter() - t0
        yield Summary(finish_reason=finish, prompt_tokens=len(generation.prompt_ids),
                      completion_tokens=stats.new_tokens, stats=stats, draft_failed=draft_failed,
                      session_id=request.session_id)
