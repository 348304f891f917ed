"""Pre-drafting through the services: the branches travel as one DraftProposals message."""

import pytest

from specdec.core.config import GenerationRequest
from specdec.serving.client import Client, build_request
from tests.conftest import PROMPTS
from tests.integration.servers import apart, running_stack
from tests.unit.core.test_drafting import ALWAYS, overlap_run

pytestmark = pytest.mark.timeout(600)


def test_predraft_through_the_services(tiny_pair):
    """The branches travel as one DraftProposals message; the target takes the one that came true."""
    with running_stack(orchestrator=["--k", "4", "--fixed-k"], target=apart("target"),
                       draft=["--predraft", "on", "--no-batching", *apart("draft")]) as stack:
        with Client(stack.address, timeout_s=120) as client:
            for prompt in PROMPTS[:4]:
                expected = tiny_pair.decoder.generate(GenerationRequest(
                    prompt_ids=tiny_pair.encode(prompt), max_new_tokens=60, ignore_eos=True)).token_ids
                result = client.generate(build_request(prompt, max_new_tokens=60, k=4, ignore_eos=True))
                assert result.token_ids == expected, prompt
                _, hits, drafts = overlap_run(tiny_pair, prompt, predraft=ALWAYS)
                spec = result.summary.speculation
                assert (spec.overlap_hits, spec.drafts) == (hits, drafts), prompt  # same blocks as in process
