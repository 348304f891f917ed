"""Proposers draft tokens; they never verify. One small dataclass, `Proposal`, passes to the verifier.

A proposer object belongs to one session (it may hold a KV cache); a `ProposerFactory` makes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch

from specdec.config import SamplingParams
from specdec.runner import ModelRunner
from specdec.sampling import Stream, greedy_token, process_logits, sample_from, uniform
from specdec.verify import DenseDraftProbs, DraftProbs


@dataclass
class Proposal:
    """A claim: "from position `start` the sequence continues with `token_ids`"."""

    start: int  # absolute position of token_ids[0] in prompt + output
    token_ids: list[int]  # [k] draft tokens
    probs: DraftProbs | None  # the draft's processed q per position; None = one-hot (greedy, n-gram)
    source: str  # which proposer made it ("draft-model", "ngram"), for statistics

    @property
    def k(self) -> int:
        return len(self.token_ids)


class Proposer(Protocol):
    """One session's proposer."""

    source: str

    def propose(self, committed: Sequence[int], k: int) -> Proposal:
        """Draft up to k tokens that follow `committed` (the prompt plus everything committed so far)."""
        ...

    def prefill(self, prompt: Sequence[int]) -> None:
        """Warm up on the prompt before the first proposal is asked for."""
        ...

    def close(self) -> None: ...


class ProposerFactory(Protocol):
    def open(self, sampling: SamplingParams, seed: int) -> Proposer: ...


class DraftModelProposer:
    """Drafts with a small model: k autoregressive steps over its own KV cache.

    Rollback is implicit: `ModelRunner.extend` reuses the cached prefix that still agrees with
    `committed` and overwrites the rest, so a verdict needs no separate message to the draft.
    """

    source = "draft-model"

    def __init__(self, runner: ModelRunner, sampling: SamplingParams, seed: int, vocab_size: int) -> None:
        self.runner = runner
        self.sampling = sampling
        self.seed = seed
        self.pad = vocab_size - runner.vocab_size  # q rows are padded with zeros to the target's vocab
        assert self.pad >= 0, "the draft's vocabulary must not be larger than the target's"
        self.session = runner.open()

    def propose(self, committed: Sequence[int], k: int) -> Proposal:
        start = len(committed)
        sequence = list(committed)
        rows: list[torch.Tensor] = []
        for i in range(k):
            logits = self.runner.extend(self.session, sequence, keep=1)[0]  # [V]
            if self.sampling.greedy:
                token = greedy_token(logits)
            else:
                q = torch.nn.functional.pad(process_logits(logits.unsqueeze(0), self.sampling)[0], (0, self.pad))
                token = sample_from(q, uniform(self.seed, start + i, Stream.DRAFT))
                rows.append(q)
            sequence.append(token)
        drafted = sequence[start:]
        probs = DenseDraftProbs(torch.stack(rows), drafted) if rows else None
        return Proposal(start=start, token_ids=drafted, probs=probs, source=self.source)

    def prefill(self, prompt: Sequence[int]) -> None:
        self.runner.extend(self.session, prompt, keep=1)

    def close(self) -> None:
        self.runner.close(self.session)


class DraftModelFactory:
    """Makes DraftModelProposers that share one draft runner."""

    def __init__(self, runner: ModelRunner, vocab_size: int) -> None:
        self.runner = runner
        self.vocab_size = vocab_size  # the target's: q must be comparable with p

    def open(self, sampling: SamplingParams, seed: int) -> DraftModelProposer:
        return DraftModelProposer(self.runner, sampling, seed, self.vocab_size)
