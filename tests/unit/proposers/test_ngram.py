"""Prompt-lookup proposer: correct matches, flat per-step cost, rollback."""

import random

from specdec.proposers.ngram import NgramIndex, NgramProposer


def test_proposes_what_followed_the_latest_longest_match():
    p = NgramProposer(min_n=1, max_n=3)
    seq = [5, 6, 7, 8, 9, 1, 6, 7, 2, 3, 6, 7]
    proposal = p.propose(seq, k=3)
    assert proposal.token_ids == [2, 3, 6] and proposal.probs is None and proposal.start == len(seq)
    assert p.propose([5, 6, 7, 8, 9, 1, 6, 7, 8], k=2).token_ids == [9, 1]  # longer match (6, 7, 8) wins


def test_no_match_proposes_nothing():
    assert NgramProposer().propose([1, 2, 3, 4], k=4).token_ids == []


def test_rollback_forgets_removed_tokens():
    index = NgramIndex(1, 2)
    index.sync([1, 2, 3, 1, 2, 9])
    index.sync([1, 2, 3, 1])  # drop "2, 9"
    assert index.lookup(3).tokens == [2, 3, 1]
    fresh = NgramIndex(1, 2)
    fresh.sync([1, 2, 3, 1])
    assert index._last_end == fresh._last_end


def test_hit_rate_scores_lookup_on_the_sequence_itself():
    index = NgramIndex(1, 2)
    index.sync([1, 2, 3, 4] * 10)  # perfectly periodic: every length-2 match predicts right
    assert index.hit_rate(2) > 0.9
    noisy = NgramIndex(1, 2)
    rng = random.Random(0)
    noisy.sync([rng.randrange(12) for _ in range(400)])  # random: lookup is right ~1/12 of the time
    assert noisy.hit_rate(1) < 0.3 and noisy.hit_rate(2) < 0.3
    assert NgramIndex(1, 2).hit_rate(2) == 0.5  # nothing seen: the prior


def test_rollback_restores_hit_rates():
    index, fresh = NgramIndex(1, 3), NgramIndex(1, 3)
    index.sync([1, 2, 3, 1, 2, 3, 1, 2])
    index.sync([1, 2, 3, 1, 2, 3, 9, 9, 1, 2])
    index.sync([1, 2, 3, 1, 2])
    fresh.sync([1, 2, 3, 1, 2])
    assert [index.hit_rate(n) for n in (1, 2, 3)] == [fresh.hit_rate(n) for n in (1, 2, 3)]


def cost_per_step(length: int) -> tuple[float, float]:
    """(dictionary operations, best-of-5 seconds) per propose step on a sequence of `length` tokens."""
    import time
    proposer = NgramProposer(1, 4)
    seq = [(i * 7919) % 97 for i in range(length)]
    proposer.prefill(seq)
    before, best = proposer.index.operations, float("inf")
    for rep in range(5):
        t0 = time.perf_counter()
        for step in range(100):  # each step: the sequence grows by one token, then a proposal
            seq.append((rep * 100 + step) % 97)
            proposer.propose(seq, 4)
        best = min(best, (time.perf_counter() - t0) / 100)
    return (proposer.index.operations - before) / 500, best


def test_lookup_cost_per_step_is_flat_in_sequence_length():
    (ops_1k, time_1k), (ops_8k, time_8k) = cost_per_step(1_000), cost_per_step(8_000)
    assert ops_8k <= ops_1k * 1.05, (ops_1k, ops_8k)
    assert time_8k < 2.0 * time_1k, (time_1k, time_8k)  # generous for a noisy machine; O(n) would be ~8x
