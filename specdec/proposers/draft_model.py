"""The draft-model proposer: a small model drafts k tokens autoregressively over its own KV cache."""

from __future__ import annotations

from typing import Sequence

import torch

from specdec.core.config import ProposerKind, SamplingParams
from specdec.core.proposal import Feedback
from specdec.core.runner import Grouped, ModelRunner, Sampled, draw_sampled
from specdec.proposers.base import ModelDrafting, Pick


def top_three(logits: torch.Tensor) -> torch.Tensor:
    """Per row of logits [B, V]: its argmax (ties to the lowest id, as everywhere) and its top two, [B, 3]."""
    return torch.cat([logits.argmax(-1, keepdim=True), logits.topk(2, dim=-1).indices], dim=-1)


def pick_greedy(best: list[int], position: int) -> Pick:
    """The drafted token and its runner-up, from a row of `top_three`."""
    return Pick(best[0], best[1] if best[1] != best[0] else best[2], None)


GREEDY = Grouped(top_three, pick_greedy)


def _sampled_pick(token: int, q: torch.Tensor) -> Pick:
    """A sampled draft's pick: the token and its q [V] (the target's vocabulary)."""
    return Pick(token, None, q)


class DraftModelProposer(ModelDrafting):
    """Drafts with a small model: k autoregressive steps over its own KV cache.

    Rollback is implicit: `ModelRunner.extend` reuses the cached prefix that still agrees with
    `committed` and overwrites the rest, so a verdict needs no separate message to the draft.
    """

    source = ProposerKind.DRAFT_MODEL

    def __init__(self, runner: ModelRunner, sampling: SamplingParams, seed: int, vocab_size: int) -> None:
        self.runner = runner
        self.sampling = sampling
        self.seed = seed
        self.pad = vocab_size - runner.vocab_size  # q rows are padded with zeros to the target's vocab
        assert self.pad >= 0, "the draft's vocabulary must not be larger than the target's"
        self.slot = runner.open()
        self.group = GREEDY if sampling.greedy else None  # greedy picks depend on the logits alone
        self.sampled = None if sampling.greedy else Sampled(sampling, seed, self.pad, _sampled_pick)

    def _draw(self, logits: torch.Tensor, positions: Sequence[int]) -> list[Pick]:
        """Per row of logits [B, V]: the drafted token, its runner-up when greedy, and q when sampling."""
        if self.sampling.greedy:
            return super()._draw(logits, positions)
        return draw_sampled(logits, [self.sampled] * len(positions), positions)

    def close(self) -> None:
        self.runner.close(self.slot)

    def observe(self, feedback: Feedback) -> None:
        pass  # nothing to weigh: it always drafts the same way


class DraftModelFactory:
    """Makes DraftModelProposers that share one draft runner."""

    def __init__(self, runner: ModelRunner, vocab_size: int) -> None:
        self.runner = runner
        self.vocab_size = vocab_size  # the target's: q must be comparable with p

    def open(self, sampling: SamplingParams, seed: int) -> DraftModelProposer:
        return DraftModelProposer(self.runner, sampling, seed, self.vocab_size)


def warm_up(runner: ModelRunner, k: int = 4) -> None:
    """Draft a few tokens, greedy and sampled, on a throwaway slot before serving: the first use of each kernel
    costs far more than the next (CUDA loads its modules lazily), and the first drafts a deployment times
    are what adaptive K starts from; a draft token that looks several times its price keeps K at 0."""
    factory = DraftModelFactory(runner, runner.vocab_size)
    prompt = list(range(1, 9))
    for sampling in (SamplingParams(), SamplingParams(temperature=1.0, seed=0)):
        proposer = factory.open(sampling, 0)
        try:
            proposer.prefill(prompt)
            proposer.propose(prompt, k)
        finally:
            proposer.close()
