"""The sweep's in-process engine modes: load clients calling the target service's logic over batched engines
get what target-only decoding gives, and leave every KV slot free."""

import pytest

from specdec.core.batching import BatchedRunner
from specdec.core.config import ProposerKind, SamplingParams
from specdec.proposers import make_factory
from specdec.tools.inprocess import InProcessTarget
from specdec.tools.loadtest import run_clients
from tests.conftest import PROMPTS, greedy

pytestmark = pytest.mark.timeout(300)


def test_engine_clients_get_the_target_only_output_and_free_every_slot(tiny_pair_fp32):
    pair, prompts = tiny_pair_fp32, PROMPTS[:4]
    expected = {p: greedy(pair, p, 10) for p in prompts}
    draft_runner = BatchedRunner(pair.draft.model, max_len=512, max_sessions=4)
    speculating = InProcessTarget(pair.target, max_len=512, max_sessions=4, k=3, adaptive_k=False,
                                  drafts=make_factory(ProposerKind.DRAFT_MODEL, draft_runner), draft_runner=draft_runner)
    plain = InProcessTarget(pair.target, max_len=512, max_sessions=2)
    try:
        result = run_clients(speculating.client, 4, 2, prompts, 10, 120)  # 4 clients x 2 requests at once
        assert result.requests == 8 and not result.errors, result.errors
        assert all(ids == expected[prompts[i]] for i, *ids in result.outputs)
        assert result.draft_tokens > 0 and 0 < result.drafts <= result.cycles  # K = 3 fixed: it drafted
        assert speculating.runner.free_slots == 4 and draft_runner.free_slots == 4
        result = run_clients(plain.client, 2, 1, prompts, 10, 120)
        assert not result.errors and result.drafts == 0
        assert all(ids == expected[prompts[i]] for i, *ids in result.outputs)
        refused = run_clients(plain.client, 1, 1, prompts, 10**6, 120)  # past max_new_tokens' limit
        assert dict(refused.errors) == {"INVALID_ARGUMENT": 1} and plain.runner.free_slots == 2
    finally:
        speculating.close()
        plain.close()


def test_engine_clients_sample_as_asked_and_a_seeded_request_gets_the_same_output_in_a_batch(tiny_pair_fp32):
    """A sampled load (the sweep's --temperature): every request of a prompt carries the same seed, so its output is
    the one that request gets alone, whatever else shares the batch; and it is sampled (not the greedy output)."""
    pair, prompts = tiny_pair_fp32, PROMPTS[:3]
    sampling = SamplingParams(temperature=1.5, seed=11)
    plain = InProcessTarget(pair.target, max_len=512, max_sessions=3)
    try:
        alone = {p: plain.generate(p, 12, sampling).token_ids for p in prompts}
        result = run_clients(lambda: plain.client(sampling), 3, 2, prompts, 12, 120)
        assert result.requests == 6 and not result.errors, result.errors
        assert all(ids == alone[prompts[i]] for i, *ids in result.outputs)
        assert any(alone[p] != greedy(pair, p, 12) for p in prompts)
    finally:
        plain.close()
