"""The speculative loop is lossless: greedy output equals target-only, token for token."""

import numpy as np
import pytest
from scipy.stats import chi2_contingency

from specdec.core.config import GenerationRequest, SamplingParams, SpeculationConfig
from specdec.core.decoder import SpeculativeDecoder
from tests.conftest import PROMPTS


def decoder(engine, k: int) -> SpeculativeDecoder:
    factory = engine.decoder.proposers
    return SpeculativeDecoder(engine.target_runner, engine.tokenizer, engine.eos_ids, factory,
                              SpeculationConfig(k=k))


def run(engine, prompt: str, k: int, max_new: int = 40, **sampling):
    request = GenerationRequest(prompt_ids=engine.encode(prompt), max_new_tokens=max_new,
                                sampling=SamplingParams(**sampling), ignore_eos=True)
    return decoder(engine, k).generate(request)


@pytest.fixture(scope="module")
def baselines(tiny_pair):
    return {p: run(tiny_pair, p, k=0).token_ids for p in PROMPTS}


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_greedy_speculative_equals_target_only(tiny_pair, baselines, k):
    assert len(PROMPTS) >= 20
    for prompt in PROMPTS:
        result = run(tiny_pair, prompt, k=k)
        assert result.token_ids == baselines[prompt], f"k={k} prompt={prompt!r}"
        assert result.stats.drafts > 0 and result.stats.draft_tokens <= k * result.stats.drafts


def test_tiny_pair_accepts_often_enough_to_exercise_speculation(tiny_pair):
    stats = [run(tiny_pair, p, k=4).stats for p in PROMPTS[:8]]
    accepted, drafts = sum(s.accepted_tokens for s in stats), sum(s.drafts for s in stats)
    assert 1 + accepted / drafts >= 1.5


def test_stats_are_consistent(tiny_pair):
    s = run(tiny_pair, PROMPTS[0], k=4).stats
    assert s.new_tokens == 40
    assert s.accepted_tokens == s.accepted_per_position[0] + sum(s.accepted_per_position[1:])
    assert s.accepted_per_position == sorted(s.accepted_per_position, reverse=True)
    assert s.mean_acceptance_length == pytest.approx(1 + s.accepted_tokens / s.drafts)
    # every cycle commits accepted + 1 tokens (the last cycle may be cut by max_new_tokens)
    assert s.new_tokens <= s.accepted_tokens + s.cycles


def test_max_new_tokens_and_eos_and_stop_strings(tiny_pair):
    assert len(run(tiny_pair, PROMPTS[1], k=4, max_new=7).token_ids) == 7
    engine = tiny_pair
    full = run(engine, PROMPTS[1], k=4, max_new=40)
    stop = full.text[5:8]
    request = GenerationRequest(prompt_ids=engine.encode(PROMPTS[1]), max_new_tokens=40, stop=(stop,),
                                ignore_eos=True)
    stopped = decoder(engine, 4).generate(request)
    assert stopped.finish_reason.value == "stop"
    assert stopped.text == full.text[:full.text.index(stop)]
    assert stopped.token_ids == full.token_ids[:len(stopped.token_ids)]


def test_seeded_sampling_is_reproducible(tiny_pair):
    a = run(tiny_pair, PROMPTS[2], k=3, temperature=0.9, top_k=20, seed=11)
    b = run(tiny_pair, PROMPTS[2], k=3, temperature=0.9, top_k=20, seed=11)
    c = run(tiny_pair, PROMPTS[2], k=3, temperature=0.9, top_k=20, seed=12)
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids


def test_end_to_end_sampling_distribution_matches_target_only(tiny_pair):
    """First two generated tokens over many seeds: speculative vs target-only (real tiny models)."""
    draws = 400
    joint = {}
    for k in (0, 3):
        outcomes = [tuple(run(tiny_pair, "def ", k=k, max_new=2, temperature=1.0, top_k=4,
                              seed=s + (10**6 if k else 0)).token_ids) for s in range(draws)]
        joint[k] = outcomes
    labels = sorted(set(joint[0]) | set(joint[3]))
    table = np.array([[sum(o == lab for o in joint[k]) for lab in labels] for k in (0, 3)])
    table = table[:, table.sum(0) >= 5]  # chi-square needs non-tiny cells
    assert chi2_contingency(table).pvalue > 0.01
