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

import itertools
from dataclasses import dataclass
from typing import NamedTuple, Protocol, Sequence

import torch

from specdec.core.errors import Unavailable
from specdec.core.sampling import Stream, draw, draw_on_device, uniform
from specdec.core.transfer import to_device


@dataclass(frozen=True)
class VerifyResult:
    """What one verification keeps."""

    accepted: int  # number of draft tokens accepted, 0..k
    token_ids: list[int]  # the accepted draft tokens + one recovered or bonus token; len = accepted + 1
    dropped: bool = False  # the draft's q row could not be fetched: its drafts set aside, the position decided alone


class DraftProbs(Protocol):
    """The draft's processed distribution q at each proposed position.

    Verification needs q(x_i) for every proposed token but a whole row of q only at the one position
    that was rejected; remote drafts exploit that by sending the scalars and fetching one row on demand.
    """

    def token_prob(self, i: int) -> float: ...

    def row(self, i: int) -> torch.Tensor: ...  # [V] float32 on the target's device

    def token_probs_held(self) -> torch.Tensor | None:
        """q(x_i) of every proposed token [k], left on the device that holds q, for a verify to read with the target's
        p(x) (one read for every row of a step); None where they are numbers on the host (`token_prob`)."""
        ...


class DenseDraftProbs:
    """q held as a dense [k, V] tensor (in-process drafts). Nothing is read to the host when it is made (a draft's
    proposals are made while the step verifying them may be on the device already): q(x) is read with p(x) by the
    verify (`token_probs_held`), or on the first `token_prob`."""

    def __init__(self, probs: torch.Tensor, token_ids: Sequence[int]) -> None:
        assert probs.dim() == 2 and probs.shape[0] == len(token_ids), "probs must be [k, V]"
        self._probs, self._token_ids = probs, list(token_ids)
        self._held: torch.Tensor | None = None
        self._token_probs: list[float] | None = None

    def token_prob(self, i: int) -> float:
        if self._token_probs is None:
            self._token_probs = self.token_probs_held().tolist()
        return self._token_probs[i]

    def row(self, i: int) -> torch.Tensor:
        return self._probs[i]

    def token_probs_held(self) -> torch.Tensor:
        if self._held is None:
            device = self._probs.device
            rows = torch.arange(len(self._token_ids), device=device)
            self._held = self._probs[rows, to_device(self._token_ids, device)]  # [k]
        return self._held


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

    def token_probs_held(self) -> None:
        return None


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


def drawn_uniform(seed: int, position: int) -> float:
    """The uniform number the token at `position` is drawn with where it is not an accepted draft: a recovered
    token, a bonus token, or a plain cycle's only one (the engine draws those on the device ahead of the host)."""
    return uniform(seed, position, Stream.RESIDUAL)


class SampledVerify(NamedTuple):
    """One sampled cycle's verification, but for its target distributions."""

    drafts: Sequence[int]  # [k]
    probs: DraftProbs | None  # their q (None: all mass on each proposed token)
    seed: int
    start: int  # the absolute position of drafts[0]


def verify_sampling(draft_ids: Sequence[int], draft_probs: DraftProbs, target_probs: torch.Tensor, *, seed: int,
                    start: int) -> VerifyResult:
    """Speculative sampling of one cycle (`verify_sampling_rows`' one row): target_probs [k+1, V] are the processed
    target distributions p; `start` is the absolute position of draft_ids[0], so the random numbers used depend
    only on (seed, position)."""
    return verify_sampling_rows([SampledVerify(draft_ids, draft_probs, seed, start)], target_probs)[0]


def verify_sampling_rows(rows: Sequence[SampledVerify], target_probs: torch.Tensor) -> list[VerifyResult]:
    """Speculative sampling of many cycles at once: accept x_i with probability min(1, p(x_i) / q(x_i)); at the first
    rejection draw the recovered token from norm(max(0, p - q)), else the bonus token from p after the last draft.

    target_probs [sum(k_i + 1), V]: each row's k_i + 1 processed target distributions, rows in order. Every row's
    p(x_i) is read back at once and its coins tossed on the host; then every row's last distribution (the residual
    or p) is drawn from at once (sampling.draw): two reads back for all rows, where one at a time each row took up
    to three; q(x_i) of a q held on a device comes in the first (`DraftProbs.token_probs_held`). Each row's result is
    the one it gets alone. Where a rejected position's q row cannot be fetched (a
    remote draft died), that row's drafts are set aside and its first position decided alone, as a plain cycle's."""
    sizes = [len(r.drafts) + 1 for r in rows]
    assert target_probs.shape[0] == sum(sizes), f"need {sum(sizes)} target rows, got {target_probs.shape[0]}"
    device, vocab = target_probs.device, target_probs.shape[-1]
    firsts = list(itertools.accumulate([0, *sizes[:-1]]))
    at = [[f + i, x] for f, r in zip(firsts, rows) for i, x in enumerate(r.drafts)]
    held = [r.probs.token_probs_held() if r.probs is not None and r.drafts else None for r in rows]
    read = []
    if at:
        where = to_device(at, device).T  # [2, drafts]
        read = torch.cat([target_probs[where[0], where[1]],  # p(x_i) of every row's drafts, then the held q(x_i)
                          *(q[:len(r.drafts)].to(device) for q, r in zip(held, rows) if q is not None)]).tolist()
    p_of_drafts, q_of_drafts = iter(read), iter(read[len(at):])
    finals, q_rows, u, kept = [], [], [], []  # per row: the position drawn from, its q row (None: p itself), ...
    for first, r, q_held in zip(firsts, rows, held):
        q = r.probs if r.probs is not None else OneHotDraftProbs(r.drafts, vocab, device)
        p_x = [next(p_of_drafts) for _ in r.drafts]
        q_of = [next(q_of_drafts) for _ in r.drafts] if q_held is not None else None
        accepted, q_row, dropped = len(r.drafts), None, False
        for i, x in enumerate(r.drafts):
            q_x = q_of[i] if q_of is not None else q.token_prob(i)
            assert q_x > 0.0, f"draft proposed token {x} to which its own q gives probability 0"
            # q(x) <= p(x): always accept. q(x) > p(x): accept with probability p(x) / q(x).
            if uniform(r.seed, r.start + i, Stream.ACCEPT) * q_x < p_x[i]:
                continue
            accepted = i
            try:
                q_row = q.row(i).to(device)
            except Unavailable:
                accepted, dropped = 0, True
            break
        finals.append(first + accepted)
        q_rows.append(q_row)
        u.append(drawn_uniform(r.seed, r.start + accepted))
        kept.append((list(r.drafts[:accepted]), dropped))
    last = target_probs[finals]  # [rows, V]
    rejected = [j for j, q_row in enumerate(q_rows) if q_row is not None]
    if rejected:
        p = last[rejected]
        residual = torch.clamp(p - torch.stack([q_rows[j] for j in rejected]), min=0.0)  # [rejected, V]
        empty = residual.sum(dim=-1, keepdim=True) <= 0.0  # p == q up to rounding: rejection had probability ~0
        last[rejected] = torch.where(empty, p, residual)
    return [VerifyResult(len(drafts), [*drafts, token], dropped)
            for (drafts, dropped), token in zip(kept, draw(last, u))]


def outcomes_on_device(rows: Sequence[SampledVerify], target_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`verify_sampling_rows`' outcome of each row worked out on the device, with no host read: (accepted drafts [rows],
    the token drawn after them [rows]), so that what follows a sampled verify can be launched before the host reads
    it. The same arithmetic as the host's (its coins in float64, its residual, its draw), on target_probs as given:
    where those are not what the host verifies with (a nucleus the device did not find), a row's outcome may differ,
    and whoever launches from it must check it against the host's. Every row's q is held on the device (in-process
    drafts: `token_probs_held`), or one-hot (no probs)."""
    device, vocab = target_probs.device, target_probs.shape[-1]
    sizes = [len(r.drafts) for r in rows]
    width = max(sizes) + 1
    firsts = list(itertools.accumulate([0, *[k + 1 for k in sizes[:-1]]]))
    q_rows = [r.probs if r.probs is not None else OneHotDraftProbs(r.drafts, vocab, device) for r in rows]
    u_accept, u_drawn, at, drafts = [], [], [], []  # per row, padded to `width` columns
    for first, r, k in zip(firsts, rows, sizes):
        u_accept.append([uniform(r.seed, r.start + i, Stream.ACCEPT) for i in range(k)] + [2.0] * (width - k))
        u_drawn.append([drawn_uniform(r.seed, r.start + a) for a in range(k + 1)] + [0.0] * (width - k - 1))
        at.append([first + min(i, k) for i in range(width)])
        drafts.append([*r.drafts, *[0] * (width - k)])
    at_d, drafts_d = to_device(at, device), to_device(drafts, device)  # [rows, width] each
    p_x = target_probs[at_d, drafts_d].double()  # [rows, width]: p(x_i), the last columns padding
    q_x = torch.ones_like(p_x)  # one-hot drafts' q(x_i) = 1
    held = [(b, h) for b, (q, k) in enumerate(zip(q_rows, sizes)) if k and (h := q.token_probs_held()) is not None]
    if held:
        where = to_device([[b, i] for b, _ in held for i in range(sizes[b])], device).T  # [2, held drafts]
        q_x[where[0], where[1]] = torch.cat([h[:sizes[b]].to(device) for b, h in held]).double()
    accepts = to_device(u_accept, device, torch.float64) * q_x < p_x  # a u of 2 never accepts: q_x <= 1 >= p_x
    accepted = accepts.long().cumprod(dim=1).sum(dim=1)  # [rows]
    last = target_probs[at_d.gather(1, accepted[:, None])[:, 0]]  # [rows, V]
    k_d = to_device(sizes, device)  # [rows]
    if sum(sizes):  # each row's q where it rejected (a row that accepted all its drafts: any, unused)
        q_all = torch.stack([q.row(i).to(device) for q, k in zip(q_rows, sizes) for i in range(k)])  # [drafts, V]
        q_first = to_device(list(itertools.accumulate([0, *sizes[:-1]])), device)  # [rows]
        q_last = q_all[q_first + torch.minimum(accepted, (k_d - 1).clamp(min=0))]  # [rows, V]
    else:
        q_last = torch.zeros_like(last)
    residual = torch.clamp(last - q_last, min=0.0)
    rejected = (accepted < k_d) & (residual.sum(dim=-1) > 0.0)  # else (p == q) the host draws p
    last = torch.where(rejected[:, None], residual, last)
    return accepted, draw_on_device(last, to_device(u_drawn, device, torch.float64).gather(1, accepted[:, None])[:, 0])
