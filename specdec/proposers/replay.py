"""Replayed acceptance for systems benchmarks: a real draft's cost, the target's own tokens at a chosen rate."""

from __future__ import annotations

import json
import logging
import pathlib
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from specdec.core.config import ProposerKind, SamplingParams
from specdec.core.errors import InvalidArgument
from specdec.core.proposal import Feedback, Proposal
from specdec.core.runner import Grouped, ModelRunner
from specdec.core.sampling import Stream, uniform
from specdec.proposers.base import ModelDrafting, Pick

log = logging.getLogger("specdec.replay")


def argmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """The real forward's tokens [B, 1], read to the host as a real draft's must be: without that read a draft on
    its own GPU would run unwaited, in parallel with the target, for free. The replay then picks its own."""
    return logits.argmax(-1, keepdim=True)


def replays_right(seed: int, position: int, alpha: float) -> bool:
    """Whether a replayed draft proposes the target's own token at `position` (else a wrong one): decided by the
    session's seed and the position alone, so runs are reproducible."""
    return uniform(seed, position, Stream.DRAFT) < alpha


class ReplayProposer(ModelDrafting):
    """A draft with real cost and replayed acceptance, for systems benchmarks without real weights.

    The draft model's forward runs for every proposed token (its real cost on the real shapes), but
    the token it proposes is the target's known greedy continuation with probability `alpha` and a
    wrong token otherwise (decided per position from the seed, so runs are reproducible). Its runner-up
    (what overlap pre-drafts from where the target rejects) is the right token with probability
    `runner_up` where the top token is wrong: a rate measured on a real pair (scripts/runner_up_rate.py).
    The continuation comes from a ReplayBook, found by the prompt the session starts from. Greedy only.
    Results must be labelled "replayed acceptance".
    """

    source = ProposerKind.DRAFT_MODEL

    def __init__(self, runner: ModelRunner, book: "ReplayBook", alpha: float, seed: int,
                 runner_up: float = 0.0) -> None:
        self.runner, self.book, self.alpha, self.seed = runner, book, alpha, seed
        self.runner_up = runner_up
        self.reference: list[int] | None = None  # prompt + the target's greedy output, once the prompt is seen
        self._agreed = 0  # the committed tokens checked against the reference so far (-1: they left it)
        self._by_position: dict[int, tuple[int, int]] = {}  # `_replayed`'s answers: each position is asked for
        #                                 several times (a chain's feed, its pick, a chain's steps launched ahead)
        self.slot = runner.open()
        self.group = Grouped(argmax_rows, self._pick, self._token)

    def before_propose(self, committed: Sequence[int]) -> None:
        self._find(committed)
        self._check(committed)

    def _check(self, committed: Sequence[int]) -> None:
        """Warn once where the committed sequence leaves the reference: from there every draft is wrong, so the
        session's acceptance is not the replayed rate (the target decided a near-tie otherwise than when its
        continuation was recorded; the benchmark's exactness check says whether its output differs from the others)."""
        if self._agreed < 0:
            return
        reference, end = self.reference, min(len(committed), len(self.reference))
        at = next((i for i in range(self._agreed, end) if committed[i] != reference[i]), None)
        if at is None:
            self._agreed = max(self._agreed, end)
            return
        self._agreed = -1
        log.warning("replayed draft: the sequence left its reference at position %d (%d there, the reference has %d): "
                    "its drafts from there are wrong, and its acceptance is not the replayed rate",
                    at, committed[at], reference[at])

    def propose_branches(self, chain: Sequence[int], roots: Sequence[tuple[int, int]],
                         k: int) -> list[Proposal] | None:
        self._find(chain)
        return super().propose_branches(chain, roots, k)

    def _find(self, tokens: Sequence[int]) -> None:
        if self.reference is None:
            self.reference = self.book.find(tokens)

    def _pick(self, drafted: list[int], position: int) -> Pick:
        return Pick(*self._replayed(position), None)

    def _token(self, position: int) -> int:
        """The token it drafts at `position`, known before the draft's logits: a chained draft feeds it on."""
        return self._replayed(position)[0]

    def _replayed(self, position: int) -> tuple[int, int]:
        """(proposed token, runner-up) at `position`."""
        replayed = self._by_position.get(position)
        if replayed is None:
            right = self.reference[position] if position < len(self.reference) else 0
            wrong = [(right + i) % self.runner.vocab_size for i in (1, 2)]
            if replays_right(self.seed, position, self.alpha):
                replayed = right, wrong[0]
            else:
                replayed = wrong[0], right if uniform(self.seed, position, Stream.RUNNER_UP) < self.runner_up else wrong[1]
            self._by_position[position] = replayed
        return replayed

    def prefill(self, prompt: Sequence[int]) -> None:
        self._find(prompt)  # an unknown prompt is refused here, when its session starts
        super().prefill(prompt)

    def close(self) -> None:
        self.runner.close(self.slot)

    def observe(self, feedback: Feedback) -> None:
        pass  # nothing to weigh: it always drafts the same way


class ReplayBook:
    """The target's greedy continuations of known prompts (each: prompt + output), for replayed drafts.

    The bench makes one by decoding every prompt target-only; `--replay-references FILE` gives a draft
    service one (JSON lines of `prompt_ids` and `output_ids`, as `specdec bench` writes them).
    """

    def __init__(self, references: Sequence[tuple[Sequence[int], Sequence[int]]]) -> None:
        self._by_prompt = {tuple(prompt): [*prompt, *output] for prompt, output in references}
        self._lengths = sorted({len(prompt) for prompt, _ in references}, reverse=True)

    @classmethod
    def load(cls, path: str) -> "ReplayBook":
        try:
            rows = [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]
            return cls([(row["prompt_ids"], row["output_ids"]) for row in rows])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidArgument("replay_references", f"cannot read {path}: {exc!r}") from exc

    def realised(self, alpha: float, requests: Iterable[tuple[Sequence[int], int]]) -> float | None:
        """The share of draft positions a replayed draft gets right over `requests` (each: a prompt this book holds,
        and its session's seed), at each position of its output after the first (which the prompt's own step
        draws): a position is right by seed and position alone, so where requests share a seed (a benchmark's
        one seed) the same positions come out right each time, and this, not `alpha`, is the rate the runs replay.
        None without such positions."""
        right = [replays_right(seed, position, alpha) for prompt, seed in requests
                 for position in range(len(prompt) + 1, len(self._by_prompt[tuple(prompt)]))]
        return sum(right) / len(right) if right else None

    def save(self, path: str) -> None:
        pathlib.Path(path).write_text("".join(json.dumps({"prompt_ids": list(p), "output_ids": ids[len(p):]}) + "\n"
                                              for p, ids in self._by_prompt.items()))

    def find(self, tokens: Sequence[int]) -> list[int]:
        """Prompt + continuation of the longest known prompt that `tokens` start with."""
        for n in self._lengths:
            if n <= len(tokens) and (reference := self._by_prompt.get(tuple(tokens[:n]))) is not None:
                return reference
        raise InvalidArgument("prompt_ids", f"no replay reference for this prompt of {len(tokens)} tokens "
                                            f"({len(self._by_prompt)} known)")


@dataclass(frozen=True)
class ReplayRates:
    """How often a replayed draft is right: its top token (alpha), and where that is wrong, its runner-up."""

    alpha: float = 0.8
    runner_up: float = 0.49

    def validate(self) -> "ReplayRates":
        for name, rate in (("replay_alpha", self.alpha), ("replay_runner_up", self.runner_up)):
            if not 0.0 <= rate <= 1.0:
                raise InvalidArgument(name, f"must be in [0, 1], got {rate}")
        return self


def replay_factory(runner: ModelRunner, references: str, rates: ReplayRates) -> "ReplayFactory":
    """A replayed draft over `runner`, from a file of the target's continuations (benchmarks only: said loudly)."""
    log.warning("REPLAYED acceptance: alpha=%.2f over %s (benchmarks only; proposals are not the draft's own)",
                rates.alpha, references)
    return ReplayFactory(runner, ReplayBook.load(references), rates)


class ReplayFactory:
    """ReplayProposers drafting the continuations of a ReplayBook."""

    def __init__(self, runner: ModelRunner, book: ReplayBook, rates: ReplayRates) -> None:
        self.runner, self.book, self.rates = runner, book, rates.validate()

    def open(self, sampling: SamplingParams, seed: int) -> ReplayProposer:
        if not sampling.greedy:
            raise InvalidArgument("sampling", "replayed acceptance is defined for greedy decoding only")
        return ReplayProposer(self.runner, self.book, self.rates.alpha, seed, self.rates.runner_up)
