"""The contract between proposers and the verifier: proposers draft, they never verify, and one small
dataclass, `Proposal`, passes from them to the target. Implementations live in `specdec.proposers`.

A proposer object belongs to one session (it may hold a KV cache); a `ProposerFactory` makes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

from specdec.core.config import ProposerKind, SamplingParams
from specdec.core.verify import DraftProbs


@dataclass
class Proposal:
    """A claim: "from position `start` the sequence continues with `token_ids`"."""

    start: int  # absolute position of token_ids[0] in prompt + output
    token_ids: list[int]  # [k] draft tokens
    probs: DraftProbs | None  # the draft's processed q per position; None = one-hot (greedy, n-gram)
    source: ProposerKind  # which proposer made it, for statistics
    token_sources: list[ProposerKind] | None = None  # per token, when a claim mixes proposers (hybrid, remote)
    draft_s: float = 0.0  # the proposer's own time drafting these tokens, catching up on cycles it did
    #                       not draft excluded: what a per-token draft cost (adaptive K) must be fed
    catch_up_s: float = 0.0  # the proposer's time catching up on cycles it did not draft, before drafting these:
    #                          latency the target waits through, but not a cost of drafting (adaptive K)
    catch_up_tokens: int = 0  # the tokens it forwarded in that catch-up (its cache's shortfall, a prompt's included;
    #                           the own draft's phase statistics read it, a link does not carry it)
    ahead: bool = False  # drafted before the verdict on the block before it (overlap)
    runner_ups: list[int] | None = None  # per token, the draft's likeliest other token (greedy drafts with a
    #                                      model): what the target most likely picks where it rejects

    @property
    def k(self) -> int:
        return len(self.token_ids)

    def sources(self) -> list[ProposerKind]:
        return self.token_sources if self.token_sources is not None else [self.source] * len(self.token_ids)


@dataclass
class Feedback:
    """How the target verified one cycle's block: what a proposer that weighs its options learns from."""

    source: ProposerKind | None  # proposer of the verified drafts; None when the target decoded alone (k == 0)
    k: int  # draft tokens verified
    accepted: int  # of which accepted
    verify_s: float  # the target's time for the cycle


class Proposer(Protocol):
    """One session's proposer."""

    source: ProposerKind

    def propose(self, committed: Sequence[int], k: int) -> Proposal:
        """Draft up to k tokens that follow `committed` (the prompt plus everything committed so far)."""
        ...

    def prefill(self, prompt: Sequence[int]) -> None:
        """Warm up on the prompt before the first proposal is asked for."""
        ...

    def observe(self, feedback: Feedback) -> None:
        """The verdict on a cycle (every cycle after the first, drafted or not)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class BranchProposer(Proposer, Protocol):
    """A proposer that drafts several branches in one pass (overlap's pre-drafting)."""

    def propose_branches(self, chain: Sequence[int], roots: Sequence[tuple[int, int]],
                         k: int) -> list[Proposal] | None:
        """For each root (j, token): the k tokens that follow chain[:j] + [token], as propose() would draft
        them; None when they cannot be drafted now (no room left in the cache)."""
        ...


class ProposerFactory(Protocol):
    def open(self, sampling: SamplingParams, seed: int) -> Proposer: ...
