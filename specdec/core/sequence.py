"""The target's side of one request: it owns the committed sequence and verifies proposals.

Shared by the in-process decoder and the target service's loop, so there is one implementation of
"verify a proposal and commit" and the gRPC path cannot drift from the reference. Target-only decoding
is the same code with no proposal: it is the baseline every benchmark uses.
"""

from __future__ import annotations

import threading
import time
from typing import NamedTuple

import torch

from specdec.core.config import FinishReason, GenerationRequest
from specdec.core.proposal import Proposal
from specdec.core.runner import Forward, ModelRunner
from specdec.core.sampling import fresh_seed, process_logits
from specdec.core.stats import Cycle
from specdec.core.verify import DraftProbs, SampledVerify, VerifyResult, verify_greedy, verify_sampling_rows


class UsableDrafts(NamedTuple):
    """The part of a proposal the target can verify now."""

    token_ids: list[int]  # [k] draft tokens after the committed sequence
    probs: DraftProbs | None  # their q (None: greedy, or one-hot)
    sources: list[str]  # proposer of each


class Prepared(NamedTuple):
    """A cycle between choosing its drafts and verifying them."""

    drafts: list[int]  # [k]
    probs: DraftProbs | None
    sources: list[str]
    start: int  # committed length before the cycle
    forward: Forward  # what the runner must compute: committed + drafts, k + 1 positions kept


class _ShiftedDraftProbs:
    """q rows of a proposal whose first `offset` tokens were already committed."""

    def __init__(self, inner: DraftProbs, offset: int) -> None:
        self.inner, self.offset = inner, offset

    def token_prob(self, i: int) -> float:
        return self.inner.token_prob(i + self.offset)

    def row(self, i: int) -> torch.Tensor:
        return self.inner.row(i + self.offset)

    def token_probs_held(self) -> torch.Tensor | None:
        held = self.inner.token_probs_held()
        return None if held is None else held[self.offset:]


class TargetSequence:
    """KV invariant between steps: the cache holds committed[:-1]; the last committed token is fed
    together with the drafts, so one forward of k+1 tokens yields the k+1 distributions to verify."""

    def __init__(self, runner: ModelRunner, request: GenerationRequest, eos_ids: set[int],
                 seed: int | None = None, cancelled: threading.Event | None = None) -> None:
        """Takes a KV slot, waiting its turn if the runner queues (`cancelled` ends that wait)."""
        self.runner = runner
        self.request = request
        self.sampling = request.sampling
        self.seed = seed if seed is not None else (
            request.sampling.seed if request.sampling.seed is not None else fresh_seed())
        self.eos_ids = set() if request.ignore_eos else set(eos_ids)
        self.committed: list[int] = list(request.prompt_ids)
        self.prompt_len = len(request.prompt_ids)
        self.finish_reason: FinishReason | None = None
        self.slot = runner.open(cancelled)

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

    def usable_drafts(self, proposal: Proposal | None, limit: int | None = None) -> UsableDrafts | None:
        """The part of a proposal that extends the committed sequence, at most `limit` tokens;
        None if the proposal is stale.

        A proposal claims "from position `start` the sequence is ...". The part before the end of the
        committed sequence must agree with it, else the proposal was built on a wrong guess.
        """
        if proposal is None:
            return UsableDrafts([], None, [])
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
        return UsableDrafts(drafts, probs, proposal.sources()[offset:offset + len(drafts)])

    def prepare(self, proposal: Proposal | None = None, limit: int | None = None,
                usable: UsableDrafts | None = None) -> Prepared:
        """A cycle's first half: the drafts to verify (none: plain decoding) and the forward that scores them.
        `usable`: the proposal's `usable_drafts(proposal, limit)`, where the caller found it already."""
        assert self.finish_reason is None, "a cycle after the sequence finished"
        drafts, probs, sources = usable or self.usable_drafts(proposal, limit) or UsableDrafts([], None, [])
        forward = Forward(self.committed + drafts, len(drafts) + 1, self.sampling.greedy)
        return Prepared(drafts, probs, sources, len(self.committed), forward)

    def sampled_verify(self, prepared: Prepared) -> SampledVerify | None:
        """A sampled cycle's verification but for its target distributions (None: greedy), so that an engine can
        verify many sessions' cycles at once (verify.verify_sampling_rows) and hand each its result."""
        if self.sampling.greedy:
            return None
        return SampledVerify(prepared.drafts, prepared.probs, self.seed, prepared.start)

    def complete(self, prepared: Prepared, top: list[int] | None, logits: torch.Tensor | None,
                 started: float, verified: VerifyResult | None = None) -> Cycle:
        """A cycle's second half, given its forward's argmax (greedy), logits [k+1, V] (sampling), or its
        verification done already (`verified`, from `sampled_verify`): verify, roll the cache back to the new
        committed[:-1], commit 1..k+1 tokens. `started`: when the forward began."""
        drafts, _, sources, start, _ = prepared
        if verified is not None:
            result = verified
        elif self.sampling.greedy:
            result = verify_greedy(drafts, top)
        else:
            result = verify_sampling_rows([self.sampled_verify(prepared)], process_logits(logits, self.sampling))[0]
        if result.dropped:  # the draft died while its q row was fetched: this position was decided alone
            drafts, sources = [], []
        self.runner.truncate(self.slot, start + result.accepted)  # holds the new committed[:-1]
        new_tokens = self._commit(result.token_ids)
        return Cycle(new_tokens=new_tokens, start=start, k=len(drafts), accepted=result.accepted,
                     verify_s=time.perf_counter() - started, draft_sources=sources, finish_reason=self.finish_reason)

    def run_forward(self, forward: Forward) -> tuple[list[int] | None, torch.Tensor | None]:
        """A cycle's forward on this sequence's own slot: (argmax, None) for greedy, which needs only that,
        else (None, logits [k+1, V])."""
        ids, keep, greedy = forward
        if greedy:
            return self.runner.greedy_ids(self.slot, ids, keep), None
        return None, self.runner.extend(self.slot, ids, keep)

    def finish(self, reason: FinishReason) -> None:
        if self.finish_reason is None:
            self.finish_reason = reason

    def close(self) -> None:
        self.runner.close(self.slot)

    def _commit(self, token_ids: list[int]) -> list[int]:
        """Commit the tokens that fit, up to the first end-of-sequence token. -> those committed."""
        committed = token_ids[:self.remaining]
        eos = next((i for i, token in enumerate(committed) if token in self.eos_ids), None)
        if eos is not None:
            committed = committed[:eos + 1]
        self.committed.extend(committed)
        if eos is not None:
            self.finish(FinishReason.EOS)
        elif self.remaining == 0:
            self.finish(FinishReason.LENGTH)
        return committed
