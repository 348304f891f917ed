"""The speculative loop in one process, and the target's side of a request (`TargetSequence`).

`TargetSequence` is shared by this in-process decoder and the target service, so there is one
implementation of "verify a proposal and commit" and the gRPC path cannot drift from the reference.
Target-only decoding is the same code with no proposal: it is the baseline every benchmark uses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol, Sequence

import torch

from specdec.adaptive import AdaptiveK
from specdec.config import FinishReason, GenerationRequest, SpeculationConfig
from specdec.detokenize import TextStream
from specdec.proposers import Feedback, Proposal, ProposerFactory
from specdec.runner import ModelRunner
from specdec.sampling import fresh_seed, process_logits
from specdec.stats import SpecStats
from specdec.verify import DraftProbs, OneHotDraftProbs, VerifyResult, verify_greedy, verify_sampling


@dataclass
class CycleResult:
    """What one target step committed."""

    new_tokens: list[int]  # tokens committed this cycle (after EOS / length cuts)
    k: int  # draft tokens verified
    accepted: int  # of which accepted
    verify_s: float
    start: int  # absolute position of new_tokens[0]
    draft_sources: list[str] = field(default_factory=list)  # proposer of each verified draft token
    finish_reason: FinishReason | None = None

    def feedback(self) -> Feedback:
        """What the proposer learns from this cycle (one block comes from one proposer)."""
        return Feedback(source=self.draft_sources[0] if self.k and self.draft_sources else "", k=self.k,
                        accepted=self.accepted, verify_s=self.verify_s)


class _ShiftedDraftProbs:
    """q rows of a proposal whose first `offset` tokens were already committed."""

    def __init__(self, inner: DraftProbs, offset: int) -> None:
        self.inner, self.offset = inner, offset

    def token_prob(self, i: int) -> float:
        return self.inner.token_prob(i + self.offset)

    def row(self, i: int) -> torch.Tensor:
        return self.inner.row(i + self.offset)


class TargetSequence:
    """The target's side of one request: it owns the committed sequence and verifies proposals.

    KV invariant between steps: the cache holds committed[:-1]; the last committed token is fed
    together with the drafts, so one forward of k+1 tokens yields the k+1 distributions to verify.
    """

    def __init__(self, runner: ModelRunner, request: GenerationRequest, eos_ids: set[int],
                 seed: int | None = None) -> None:
        self.runner = runner
        self.request = request
        self.sampling = request.sampling
        self.seed = seed if seed is not None else (
            request.sampling.seed if request.sampling.seed is not None else fresh_seed())
        self.eos_ids = set() if request.ignore_eos else set(eos_ids)
        self.committed: list[int] = list(request.prompt_ids)
        self.prompt_len = len(request.prompt_ids)
        self.finish_reason: FinishReason | None = None
        self.session = runner.open()

    @property
    def generated(self) -> list[int]:
        return self.committed[self.prompt_len:]

    @property
    def remaining(self) -> int:
        """Tokens this request may still commit (max_new_tokens and the context both bound it)."""
        by_request = self.request.max_new_tokens - (len(self.committed) - self.prompt_len)
        by_context = self.runner.max_len + 1 - len(self.committed)
        return max(0, min(by_request, by_context))

    @property
    def max_k(self) -> int:
        """The most draft tokens worth verifying now: more could never all be committed."""
        return max(0, self.remaining - 1)

    def usable_drafts(self, proposal: Proposal | None,
                      limit: int | None = None) -> tuple[list[int], DraftProbs | None, list[str]] | None:
        """The part of a proposal that extends the committed sequence, at most `limit` tokens;
        None if the proposal is stale.

        A proposal claims "from position `start` the sequence is ...". The part before the end of the
        committed sequence must agree with it, else the proposal was built on a wrong guess.
        """
        if proposal is None:
            return [], None, []
        n = len(self.committed)
        offset = n - proposal.start
        if offset < 0 or proposal.token_ids[:offset] != self.committed[proposal.start:n]:
            return None
        if offset > 0 and offset >= len(proposal.token_ids) and proposal.token_ids:
            return None  # everything it claims is already committed: nothing left to verify
        cap = self.max_k if limit is None else min(limit, self.max_k)
        drafts = proposal.token_ids[offset:offset + cap]
        probs = proposal.probs
        if probs is not None and offset:
            probs = _ShiftedDraftProbs(probs, offset)
        return drafts, probs, proposal.sources()[offset:offset + len(drafts)]

    def step(self, proposal: Proposal | None = None, limit: int | None = None) -> CycleResult:
        """Verify a proposal (or none: plain decoding) and commit 1..k+1 tokens."""
        assert self.finish_reason is None, "step() after the sequence finished"
        drafts, probs, sources = self.usable_drafts(proposal, limit) or ([], None, [])
        start = len(self.committed)
        t0 = time.perf_counter()
        logits = self.runner.extend(self.session, self.committed + drafts, keep=len(drafts) + 1)  # [k+1, V]
        result = self._verify(drafts, probs, logits, start)
        self.runner.truncate(self.session, start + result.accepted)  # holds the new committed[:-1]
        verify_s = time.perf_counter() - t0
        new_tokens = self._commit(result.token_ids)
        return CycleResult(new_tokens=new_tokens, k=len(drafts), accepted=result.accepted, verify_s=verify_s,
                           start=start, draft_sources=sources, finish_reason=self.finish_reason)

    def finish(self, reason: FinishReason) -> None:
        if self.finish_reason is None:
            self.finish_reason = reason

    def close(self) -> None:
        self.runner.close(self.session)

    def _verify(self, drafts: list[int], probs: DraftProbs | None, logits: torch.Tensor,
                start: int) -> VerifyResult:
        if self.sampling.greedy:
            return verify_greedy(drafts, logits)
        target_probs = process_logits(logits, self.sampling)
        if probs is None:
            probs = OneHotDraftProbs(drafts, target_probs.shape[-1], target_probs.device)
        return verify_sampling(drafts, probs, target_probs, seed=self.seed, start=start)

    def _commit(self, token_ids: list[int]) -> list[int]:
        committed = []
        for token in token_ids:
            if self.remaining == 0:
                break
            self.committed.append(token)
            committed.append(token)
            if token in self.eos_ids:
                self.finish(FinishReason.EOS)
                return committed
        if self.remaining == 0:
            self.finish(FinishReason.LENGTH)
        return committed


@dataclass
class GenerationResult:
    token_ids: list[int]  # generated ids only
    text: str
    finish_reason: FinishReason
    stats: SpecStats = field(default_factory=SpecStats)

    def to_dict(self) -> dict:
        return {"text": self.text, "token_ids": self.token_ids, "finish_reason": self.finish_reason.value,
                "stats": self.stats.to_dict()}


class KChooser(Protocol):
    """Decides the draft length of each cycle (fixed, or adaptive.AdaptiveK)."""

    def choose(self, limit: int | None = None) -> int: ...

    def observe(self, k: int, accepted: int, verify_s: float, draft_s: float) -> None: ...


@dataclass
class FixedK:
    k: int

    def choose(self, limit: int | None = None) -> int:
        return self.k if limit is None else min(self.k, limit)

    def observe(self, k: int, accepted: int, verify_s: float, draft_s: float) -> None:
        pass


def adaptive_k(chooser: KChooser) -> KChooser:
    return chooser


class SpeculativeDecoder:
    """Target runner + optional proposer factory: `generate` runs the whole loop in one process."""

    def __init__(self, target: ModelRunner, tokenizer, eos_ids: set[int],
                 proposers: ProposerFactory | None = None,
                 speculation: SpeculationConfig = SpeculationConfig()) -> None:
        self.target = target
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.proposers = proposers
        self.speculation = speculation.validate()

    def cycles(self, request: GenerationRequest, stats: SpecStats,
               choose_k: KChooser | None = None) -> Iterator[CycleResult]:
        """Run the loop, yielding each cycle's committed tokens as soon as they exist."""
        choose_k = choose_k or (AdaptiveK(max_k=self.speculation.max_k, initial_k=max(1, self.speculation.k))
                                if self.speculation.adaptive else FixedK(self.speculation.k))
        sequence = TargetSequence(self.target, request, self.eos_ids)
        proposer = None
        if self.proposers is not None and self.speculation.k > 0:
            proposer = self.proposers.open(request.sampling, sequence.seed)
        stats.prompt_tokens = len(request.prompt_ids)
        try:
            while sequence.finish_reason is None:
                # The first cycle is prefill alone, as in the services (where the draft prefills
                # meanwhile): time to first token is the target's prefill, and seeded runs line up.
                k = choose_k.choose(sequence.max_k) if proposer and stats.cycles > 0 else 0
                proposal = None
                if k > 0:
                    t0 = time.perf_counter()
                    proposal = proposer.propose(sequence.committed, k)
                    stats.draft_time_s += time.perf_counter() - t0  # catch-up included: it is latency too
                cycle = sequence.step(proposal)
                if stats.cycles > 0:  # the prefill cycle says nothing about decode costs
                    choose_k.observe(cycle.k, cycle.accepted, cycle.verify_s, proposal.draft_s if proposal else 0.0)
                    if proposer is not None:
                        proposer.observe(cycle.feedback())
                stats.verify_time_s += cycle.verify_s
                stats.observe_cycle(cycle.k, cycle.accepted, cycle.draft_sources)
                stats.new_tokens += len(cycle.new_tokens)
                yield cycle  # the caller closes the generator early when a stop string matched
        finally:
            sequence.close()
            if proposer is not None:
                proposer.close()

    def generate(self, request: GenerationRequest, on_text: Callable[[str], None] | None = None,
                 choose_k: KChooser | None = None) -> GenerationResult:
        stats = SpecStats()
        text = TextStream(self.tokenizer, request.stop)
        token_ids: list[int] = []
        finish = FinishReason.LENGTH
        t0 = time.perf_counter()
        loop = self.cycles(request, stats, choose_k)
        cycle = next(loop)
        stats.time_to_first_token_s = time.perf_counter() - t0
        while True:
            for token in cycle.new_tokens:
                token_ids.append(token)
                delta = text.push(token)
                if on_text and delta:
                    on_text(delta)
                if text.stopped:
                    break
            if text.stopped:
                finish = FinishReason.STOP
                loop.close()
                break
            if cycle.finish_reason is not None:
                finish = cycle.finish_reason
                break
            cycle = next(loop)
        tail = text.flush()
        if on_text and tail:
            on_text(tail)
        stats.wall_time_s = time.perf_counter() - t0
        stats.new_tokens = len(token_ids)
        return GenerationResult(token_ids=token_ids, text=text.text, finish_reason=finish, stats=stats)


def eos_ids_of(tokenizer, model=None) -> set[int]:
    """Every id that ends generation: the tokenizer's EOS and the model's generation_config EOS ids."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, Sequence):
        ids.update(int(e) for e in eos)
    return ids
