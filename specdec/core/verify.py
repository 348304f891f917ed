"""Verification: which draft tokens the target keeps, and the one token it adds.

Vocabulary (as in vLLM's rejection sampler): the output of one verification is
    accepted draft tokens + one *recovered* token (at the first rejection) or one *bonus* token
    (when every draft token was accepted).
So a cycle always commits between 1 and K+1 tokens, and the output equals target-only decoding:
  - greedy: token for token;
  - sampling: in distribution (Leviathan et al. 2023, "Fast Inference from Transformers via
    Speculative Decoding"; Chen et al. 2023, "Accelerating LLM Decoding with Speculative Sampling").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch

from specdec.core.sampling import Stream, sample_from, uniform


@dataclass(frozen=True)
class VerifyResult:
    """What one verification keeps."""

    accepted: int  # number of draft tokens accepted, 0..k
    token_ids: list[int]  # the accepted draft tokens + one recovered or bonus token; len = accepted + 1


class DraftProbs(Protocol):
    """The draft's processed distribution q at each proposed position.

    Verification needs q(x_i) for every proposed token but a whole row of q only at the one position
    that was rejected; remote drafts exploit that by sending the scalars and fetching one row on demand.
    """

    def token_prob(self, i: int) -> float: ...

    def row(self, i: int) -> torch.Tensor: ...  # [V] float32 on the target's device


class DenseDraftProbs:
    """q held as a dense [k, V] tensor (in-process drafts)."""

    def __init__(self, probs: torch.Tensor, token_ids: Sequence[int]) -> None:
        assert probs.dim() == 2 and probs.shape[0] == len(token_ids), "probs must be [k, V]"
        self._probs = probs
        self._token_probs = probs[torch.arange(len(token_ids)), torch.tensor(list(token_ids))].tolist()

    def token_prob(self, i: int) -> float:
        return self._token_probs[i]

    def row(self, i: int) -> torch.Tensor:
        return self._probs[i]


class OneHotDraftProbs:
    """q for a proposer without probabilities (n-gram): all mass on the proposed token. Still exact."""

    def __init__(self, token_ids: Sequence[int], vocab_size: int, device: torch.device | str = "cpu") -> None:
        self._token_ids = list(token_ids)
        self._vocab_size = vocab_size
        self._device = device

    def token_prob(self, i: int) -> float:
        return 1.0

    def row(self, i: int) -> torch.Tensor:
        row = torch.zeros(self._vocab_size, device=self._device)
        row[self._token_ids[i]] = 1.0
        return row


def verify_greedy(draft_ids: Sequence[int], target_ids: Sequence[int]) -> VerifyResult:
    """Accept draft token i while it equals the target's argmax at that position.

    target_ids: [k+1] the target's argmax (ties to the lowest id) at the position of each draft token, then
    at the bonus position (ModelRunner.greedy_ids).
    """
    k = len(draft_ids)
    assert len(target_ids) == k + 1, f"need k+1={k + 1} target ids, got {len(target_ids)}"
    for i, draft_id in enumerate(draft_ids):
        if draft_id != target_ids[i]:
            return VerifyResult(accepted=i, token_ids=[*draft_ids[:i], target_ids[i]])  # recovered
    return VerifyResult(accepted=k, token_ids=[*draft_ids, target_ids[k]])  # bonus


def verify_sampling(
    draft_ids: Sequence[int],
    draft_probs: DraftProbs,
    target_probs: torch.Tensor,
    *,
    seed: int,
    start: int,
) -> VerifyResult:
    """Speculative sampling: accept x_i with probability min(1, p(x_i) / q(x_i)).

    target_probs: [k+1, V] processed target distributions p; `start` is the absolute position of
    draft_ids[0], so the random numbers used depend only on (seed, position).
    """
    k = len(draft_ids)
    assert target_probs.shape[0] == k + 1, f"need k+1={k + 1} target rows, got {target_probs.shape[0]}"
    p_of_draft = target_probs[torch.arange(k), torch.tensor(list(draft_ids), dtype=torch.long)].tolist()
    for i, x in enumerate(draft_ids):
        q_x = draft_probs.token_prob(i)
        assert q_x > 0.0, f"draft proposed token {x} to which its own q gives probability 0"
        # q(x) <= p(x): always accept. q(x) > p(x): accept with probability p(x) / q(x).
        if uniform(seed, start + i, Stream.ACCEPT) * q_x < p_of_draft[i]:
            continue
        # Rejected: sample the recovered token from norm(max(0, p - q)).
        residual = torch.clamp(target_probs[i] - draft_probs.row(i).to(target_probs.device), min=0.0)
        if float(residual.sum()) <= 0.0:  # p == q up to rounding: rejection had probability ~0
            residual = target_probs[i]
        recovered = sample_from(residual, uniform(seed, start + i, Stream.RESIDUAL))
        return VerifyResult(accepted=i, token_ids=[*draft_ids[:i], recovered])
    bonus = sample_from(target_probs[k], bonus_uniform(seed, start + k))
    return VerifyResult(accepted=k, token_ids=[*draft_ids, bonus])


def bonus_uniform(seed: int, position: int) -> float:
    """The uniform number the token after every accepted draft, at `position`, is drawn with (a plain cycle's
    only token included)."""
    return uniform(seed, position, Stream.RESIDUAL)
