"""The speculative loop in one process: propose, verify, commit, until done."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from specdec.core.adaptive import AdaptiveK, FixedK, KChooser
from specdec.core.config import FinishReason, GenerationRequest, SpeculationConfig
from specdec.core.detokenize import TextStream
from specdec.core.proposal import Feedback, ProposerFactory
from specdec.core.runner import ModelRunner
from specdec.core.sequence import TargetSequence
from specdec.core.stats import Cycle, SpecStats


@dataclass
class GenerationResult:
    token_ids: list[int]  # generated ids only
    text: str
    finish_reason: FinishReason
    stats: SpecStats = field(default_factory=SpecStats)

    def to_dict(self) -> dict:
        return {"text": self.text, "token_ids": self.token_ids, "finish_reason": self.finish_reason.value,
                "stats": self.stats.to_dict()}


def feedback_of(cycle: Cycle) -> Feedback:
    """What the proposer learns from a cycle (one block comes from one proposer)."""
    source = cycle.draft_sources[0] if cycle.k and cycle.draft_sources else None
    return Feedback(source=source, k=cycle.k, accepted=cycle.accepted, verify_s=cycle.verify_s)


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
               choose_k: KChooser | None = None) -> Iterator[Cycle]:
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
                    draft_s = time.perf_counter() - t0  # catch-up included: it is latency too
                cycle = sequence.step(proposal)
                if proposal is not None:
                    cycle.draft_s = draft_s
                if stats.cycles > 0:  # the prefill cycle says nothing about decode costs
                    choose_k.observe(cycle.k, cycle.accepted, cycle.verify_s, proposal.draft_s if proposal else 0.0)
                    if proposer is not None:
                        proposer.observe(feedback_of(cycle))
                stats.observe(cycle)
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
