"""Verification: greedy scenarios and a statistical proof that speculative sampling is exact."""

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from specdec.core.config import SamplingParams
from specdec.core.errors import Unavailable
from specdec.core.sampling import Stream, process_logits, sample_from, uniform
from specdec.core.verify import (
    DenseDraftProbs,
    OneHotDraftProbs,
    SampledVerify,
    outcomes_on_device,
    verify_greedy,
    verify_sampling,
    verify_sampling_rows,
)

V = 8


def logits_with_argmax(ids: list[int], vocab: int = V) -> torch.Tensor:
    """[len(ids), vocab] logits whose argmax at row i is ids[i]."""
    out = torch.zeros(len(ids), vocab)
    out[torch.arange(len(ids)), torch.tensor(ids)] = 10.0
    return out


def test_all_accepted_gets_bonus_token():
    result = verify_greedy([1, 2, 3], [1, 2, 3, 4])
    assert result.accepted == 3 and result.token_ids == [1, 2, 3, 4]


def test_early_mismatch_is_recovered_by_target_argmax():
    result = verify_greedy([1, 2, 3], [1, 5, 3, 4])
    assert result.accepted == 1 and result.token_ids == [1, 5]


def test_first_token_mismatch_commits_one_token():
    result = verify_greedy([7, 2], [0, 2, 3])
    assert result.accepted == 0 and result.token_ids == [0]


def test_no_drafts_is_plain_decoding():
    assert verify_greedy([], [6]).token_ids == [6]


def test_seeded_sampling_is_deterministic():
    p = torch.softmax(torch.randn(4, V, generator=torch.Generator().manual_seed(0)), -1)
    q = torch.softmax(torch.randn(3, V, generator=torch.Generator().manual_seed(1)), -1)
    runs = {tuple(verify_sampling([1, 2, 3], DenseDraftProbs(q, [1, 2, 3]), p, seed=42, start=10).token_ids)
            for _ in range(5)}
    assert len(runs) == 1


class LostDraftProbs(DenseDraftProbs):
    """A remote draft's q: its scalars came with the proposal, and it died before a row was fetched."""

    def row(self, i: int) -> torch.Tensor:
        raise Unavailable("draft", "the draft service went away")


def test_cycles_verified_together_are_verified_as_each_alone():
    """A batched step's sampled cycles are verified at once (two reads back for all): each row's result is the one
    it gets alone, whether a draft is rejected (the residual drawn from), all are accepted (the bonus), none were
    proposed, q is one-hot, or its q row cannot be fetched (the drafts set aside, the first position decided alone)."""
    g = torch.Generator().manual_seed(3)
    vocab, rows, probs = 50, [], []
    for i in range(40):
        k = i % 5
        p = torch.softmax(2 * torch.randn(k + 1, vocab, generator=g), -1)  # [k+1, V]
        q = torch.softmax(2 * torch.randn(k, vocab, generator=g), -1)  # [k, V]
        drafts = torch.multinomial(q, 1, generator=g)[:, 0].tolist() if k else []
        kind = (DenseDraftProbs, LostDraftProbs, None)[i % 3]
        rows.append(SampledVerify(drafts, kind(q, drafts) if kind and k else None, 100 + i, 7 * i))
        probs.append(p)
    alone = [verify_sampling(r.drafts, r.probs or OneHotDraftProbs(r.drafts, vocab), p, seed=r.seed, start=r.start)
             for r, p in zip(rows, probs)]
    assert verify_sampling_rows(rows, torch.cat(probs)) == alone
    assert any(0 < x.accepted < len(r.drafts) for r, x in zip(rows, alone))  # a rejection after an acceptance
    assert any(x.accepted == len(r.drafts) > 0 for r, x in zip(rows, alone))  # all accepted: the bonus
    assert any(x.dropped for x in alone) and all(x.accepted == 0 for x in alone if x.dropped)


def test_a_steps_rows_q_of_their_drafts_is_read_with_p_in_one_read(monkeypatch):
    """Rows whose q is held on a device (in-process drafts) read nothing when their proposal is made, and a step's
    verify reads every row's q(x_i) with p(x_i): two reads to the host for all rows (the second draws), as the rows
    of a one-hot q take; not one more per row. A proposal's read made while the step that verifies it is on the
    device would wait for that step."""
    g = torch.Generator().manual_seed(5)
    vocab, reads = 50, []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append(self.shape) or tolist(self))
    qs = [torch.softmax(2 * torch.randn(1 + i % 4, vocab, generator=g), -1) for i in range(12)]  # [k, V] each
    drafts = [torch.multinomial(q, 1, generator=g)[:, 0].tolist() for q in qs]
    probs = [torch.softmax(2 * torch.randn(len(q) + 1, vocab, generator=g), -1) for q in qs]  # [k + 1, V] each
    reads.clear()  # the drafts' own draws above
    rows = [SampledVerify(x, DenseDraftProbs(q, x), 200 + i, 5 * i) for i, (q, x) in enumerate(zip(qs, drafts))]
    results = verify_sampling_rows(rows, torch.cat(probs))
    assert len(reads) == 2, reads
    monkeypatch.undo()
    assert results == [verify_sampling(x, DenseDraftProbs(q, x), p, seed=200 + i, start=5 * i)
                       for i, (q, x, p) in enumerate(zip(qs, drafts, probs))]  # each alone
    assert [rows[0].probs.token_prob(i) for i in range(len(rows[0].drafts))] == rows[0].probs.token_probs_held().tolist()


def test_outcomes_worked_out_on_the_device_are_the_hosts():
    """What the engine launches after a sampled verify before reading it (`outcomes_on_device`: every row's accepted
    drafts and the token drawn after them, no host read) is what `verify_sampling_rows` then gives each row:
    rejections, all accepted, no drafts, one-hot q, rows of different lengths."""
    g = torch.Generator().manual_seed(7)
    vocab, rows, probs = 40, [], []
    for i in range(60):
        k = (0, 1, 2, 3, 4, 6)[i % 6]
        p = torch.softmax(1.5 * torch.randn(k + 1, vocab, generator=g), -1)  # [k+1, V]
        q = torch.softmax(1.5 * torch.randn(k, vocab, generator=g), -1) if k else None  # [k, V]
        if k and i % 5 == 0:
            q = 0.5 * q + 0.5 * p[:k]  # closer to p: more accepted, some rows all
        drafts = torch.multinomial(q, 1, generator=g)[:, 0].tolist() if k else []
        dense = DenseDraftProbs(q, drafts) if k and i % 4 else None  # else one-hot on the drafts
        rows.append(SampledVerify(drafts, dense, 300 + i, 11 * i))
        probs.append(p)
    target = torch.cat(probs)
    accepted, tokens = outcomes_on_device(rows, target)
    host = verify_sampling_rows(rows, target)
    assert accepted.tolist() == [x.accepted for x in host]
    assert tokens.tolist() == [x.token_ids[-1] for x in host]
    assert {0 < x.accepted < len(r.drafts) for r, x in zip(rows, host)} == {True, False}
    assert any(x.accepted == len(r.drafts) > 0 for r, x in zip(rows, host))  # every draft accepted: the bonus


# ---- distribution tests -----------------------------------------------------------------------------

TARGET_LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, 0.3, 1.2])
DRAFT_LOGITS = torch.tensor([0.0, 2.0, -1.0, 1.5, 1.0, 0.5, -0.3, 0.2])  # disagrees with the target
SETTINGS = {
    "temperature": SamplingParams(temperature=1.0),
    "hot": SamplingParams(temperature=1.7),
    "top_k": SamplingParams(temperature=0.8, top_k=4),
    "top_p": SamplingParams(temperature=1.0, top_p=0.7),
    "top_k+top_p": SamplingParams(temperature=1.2, top_k=5, top_p=0.9),
}
DRAWS = 12_000
K = 3


def broken_verify(draft_ids, draft_probs, target_probs, *, seed, start):
    """A classic bug: on rejection, resample from p instead of norm(max(0, p - q))."""
    for i, x in enumerate(draft_ids):
        if uniform(seed, start + i, Stream.ACCEPT) * draft_probs.token_prob(i) < float(target_probs[i, x]):
            continue
        return [*draft_ids[:i], sample_from(target_probs[i], uniform(seed, start + i, Stream.RESIDUAL))]
    return [*draft_ids, sample_from(target_probs[-1], uniform(seed, start + len(draft_ids), Stream.RESIDUAL))]


def speculative_first_tokens(params: SamplingParams, verify, draws: int = DRAWS, onehot: bool = False):
    """Output tokens at positions 0 and 1 over many seeds (context-free p, so both should follow p)."""
    p = process_logits(TARGET_LOGITS.expand(K + 1, V), params)
    q = process_logits(DRAFT_LOGITS.expand(K, V), params)
    first, second = np.zeros(V, int), np.zeros(V, int)
    for seed in range(draws):
        drafts = [sample_from(q[i], uniform(seed, i, Stream.DRAFT)) for i in range(K)]
        probs = OneHotDraftProbs(drafts, V) if onehot else DenseDraftProbs(q, drafts)
        out = verify(drafts, probs, p, seed=seed, start=0)
        tokens = out.token_ids if hasattr(out, "token_ids") else out
        first[tokens[0]] += 1
        if len(tokens) > 1:
            second[tokens[1]] += 1
    return p[0].numpy(), first, second


def chi_square_p(expected_probs: np.ndarray, counts: np.ndarray) -> float:
    expected_probs = expected_probs.astype(np.float64)
    support = expected_probs > 0
    assert counts[~support].sum() == 0, "sampled a token the target gives probability 0"
    expected = expected_probs[support] / expected_probs[support].sum() * counts[support].sum()
    return float(chisquare(counts[support], expected).pvalue)


@pytest.mark.parametrize("name", SETTINGS)
def test_speculative_sampling_matches_target_distribution(name):
    p, first, second = speculative_first_tokens(SETTINGS[name], verify_sampling)
    assert chi_square_p(p, first) > 0.01
    assert chi_square_p(p, second) > 0.01


def test_one_hot_draft_is_exact_too():
    p, first, _ = speculative_first_tokens(SETTINGS["top_k"], verify_sampling, onehot=True)
    assert chi_square_p(p, first) > 0.01


def test_target_only_and_speculative_agree_two_sample():
    from scipy.stats import chi2_contingency
    params = SETTINGS["temperature"]
    p, spec, _ = speculative_first_tokens(params, verify_sampling)
    plain = np.bincount([sample_from(torch.tensor(p), uniform(s + 10**6, 0, Stream.RESIDUAL))
                         for s in range(DRAWS)], minlength=V)
    assert chi2_contingency(np.stack([spec, plain])).pvalue > 0.01


def test_the_chi_square_test_detects_a_broken_sampler():
    p, first, _ = speculative_first_tokens(SETTINGS["temperature"], broken_verify)
    assert chi_square_p(p, first) < 0.01
