"""The speculative loop in one process: propose, verify, commit, until done."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Generator

from specdec.core.adaptive import AdaptiveK, FixedK, KChooser
from specdec.core.config import FinishReason, GenerationRequest, SpeculationConfig
from specdec.core.detokenize import TextStream
from specdec.core.proposal import ProposerFactory
from specdec.core.runner import ModelRunner
from specdec.core.sequence import TargetSequence
from specdec.core.stats import Cycle, SpecStats
from specdec.core.target_loop import InlineLink, TargetLoop


@dataclass
class GenerationResult:
    token_ids: list[int]  # generated ids only
    text: str
    finish_reason: FinishReason
    stats: SpecStats = field(default_factory=SpecStats)

    def to_dict(self) -> dict:
        return {"text": self.text, "token_ids": self.token_ids, "finish_reason": self.finish_reason.value,
                "stats": self.stats.to_dict()}


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

    def cycles(self, request: GenerationRequest, choose_k: KChooser | None = None) -> Generator[Cycle, None, None]:
        """Run the loop, yielding each cycle's committed tokens as soon as they exist: the services' loop
        (TargetLoop) with the proposer drafting on this thread when a block is wanted."""
        choose_k = choose_k or (AdaptiveK(max_k=self.speculation.max_k, initial_k=max(1, self.speculation.k))
                                if self.speculation.adaptive else FixedK(self.speculation.k))
        sequence = TargetSequence(self.target, request, self.eos_ids)
        link = None
        if self.proposers is not None and self.speculation.k > 0:
            link = InlineLink(self.proposers.open(request.sampling, sequence.seed), lambda: sequence.committed,
                              self.speculation.k)
        try:
            yield from TargetLoop(sequence, link, choose_k, threading.Event(), link_k=self.speculation.k).run()
        finally:  # also when the caller closes the generator early (a stop string matched)
            sequence.close()
            if link is not None:
                link.close()

    def generate(self, request: GenerationRequest, on_text: Callable[[str], None] | None = None,
                 choose_k: KChooser | None = None) -> GenerationResult:
        return collect(self.cycles(request, choose_k), request, self.tokenizer, on_text)


def collect(cycles: Generator[Cycle, None, None], request: GenerationRequest, tokenizer,
            on_text: Callable[[str], None] | None = None) -> GenerationResult:
    """A request's result from its cycles as they come (streaming its text to `on_text`): stops at its finish
    or at a stop string, closing `cycles` there (which ends its session and frees its slot)."""
    stats = SpecStats(prompt_tokens=len(request.prompt_ids))
    text = TextStream(tokenizer, request.stop)
    token_ids: list[int] = []
    finish = FinishReason.LENGTH
    t0 = time.perf_counter()
    try:
        for cycle in cycles:
            if not stats.cycles:
                stats.time_to_first_token_s = time.perf_counter() - t0
            stats.observe(cycle)
            for token in cycle.new_tokens:
                token_ids.append(token)
                delta = text.push(token)
                if on_text and delta:
                    on_text(delta)
                if text.stopped:
                    break
            if text.stopped:
                finish = FinishReason.STOP
                break
            if cycle.finish_reason is not None:
                finish = cycle.finish_reason
                break
    finally:
        cycles.close()
    tail = text.flush()
    if on_text and tail:
        on_text(tail)
    stats.wall_time_s = time.perf_counter() - t0
    stats.new_tokens = len(token_ids)
    return GenerationResult(token_ids=token_ids, text=text.text, finish_reason=finish, stats=stats)
