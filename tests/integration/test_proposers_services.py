"""Every proposer through the services: greedy output equals target-only, seeded sampling equals the
same proposer in process, and requests for a proposer no draft runs are refused."""

import pytest

from specdec.core.config import ProposerKind, SamplingParams
from specdec.serving.client import Client, build_request
from tests.integration.servers import running_stack
from tests.unit.proposers.test_proposers import COPY_PROMPTS, run


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", [ProposerKind.NGRAM, ProposerKind.HYBRID])
def test_services_with_each_proposer(tiny_pair, kind):
    with running_stack(draft=["--proposer", kind.value]) as stack, Client(stack.address, timeout_s=60) as client:
        for prompt in COPY_PROMPTS[:4]:
            result = client.generate(build_request(prompt, max_new_tokens=40, ignore_eos=True, proposer=kind))
            assert result.token_ids == run(tiny_pair, prompt, None).token_ids
        sampled = client.generate(build_request(COPY_PROMPTS[0], max_new_tokens=40, ignore_eos=True, k=4,
                                                sampling=SamplingParams(temperature=0.8, seed=9)))
        assert sampled.token_ids == run(tiny_pair, COPY_PROMPTS[0], kind, sampling=SamplingParams(
            temperature=0.8, seed=9)).token_ids
        by_proposer = sampled.summary.speculation.accepted_tokens_by_proposer
        assert sum(by_proposer.values()) == sampled.summary.speculation.accepted_tokens
        with pytest.raises(Exception, match="no healthy draft runs"):
            other = ProposerKind.DRAFT_MODEL
            client.generate(build_request("x", max_new_tokens=2, proposer=other))
