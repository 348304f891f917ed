"""The target's session logic without a network: what it asks of the draft it opens."""

import pytest

from specdec.core.adaptive import ProbeSchedule
from specdec.core.config import GenerationRequest, SpeculationConfig, TargetRequest
from specdec.core.drafting import PredraftPolicy
from specdec.core.errors import FailedPrecondition
from specdec.core.target_loop import LocalLink
from specdec.proposers.draft_model import DraftModelFactory
from target_service.service import TargetService

pytestmark = pytest.mark.timeout(120)


class Observer:
    def queued(self, seconds):
        pass

    def cycle(self, cycle):
        pass

    def draft_failed(self, reason):
        pass


def test_a_session_starts_its_draft_paused_once_drafting_stopped_paying(tiny_pair):
    """Under load adaptive K stops drafting for every session: a new session's draft then starts paused and
    never prefills the prompt (on a shared GPU or CPU that forward is taken from the batch); the output
    is the target's own."""
    factory = DraftModelFactory(tiny_pair.draft_runner, tiny_pair.target_runner.vocab_size)
    opened = []

    class Links:
        def open(self, address, start, deadline_s):
            proposer = factory.open(start.sampling, start.seed)
            opened.append((start, proposer))
            return LocalLink(proposer, start.prompt_ids, start.k, greedy=True, predraft=PredraftPolicy.NEVER,
                             paused=start.paused)

    service = TargetService(tiny_pair.target_runner, tiny_pair.eos_ids, Links())
    prompt = tiny_pair.encode("def fibonacci(n):")
    expected = tiny_pair.decoder.generate(GenerationRequest(prompt_ids=prompt, max_new_tokens=10,
                                                            ignore_eos=True)).token_ids

    def session(name):
        request = TargetRequest(name, GenerationRequest(prompt_ids=prompt, max_new_tokens=10, ignore_eos=True), 0,
                                SpeculationConfig(k=3, max_k=3, adaptive=True), "local")
        tokens = [t for cycles in service.run(request, lambda fn: None, Observer()) for c in cycles for t in c.new_tokens]
        start, proposer = opened[-1]
        cached = list(proposer.slot.tokens)
        proposer.close()
        return start, cached, tokens

    start, cached, tokens = session("fresh")  # nothing measured yet: drafts from the first cycle
    assert not start.paused and cached[:len(prompt)] == prompt and tokens == expected
    for _ in range(20):  # what earlier sessions found: nothing accepted
        service.acceptance_prior.observe(3, 0)
    service.probes = ProbeSchedule(first=1000)  # and no probe within this short request
    start, cached, tokens = session("later")
    assert start.paused and cached == [] and tokens == expected  # the draft never computed for it


def test_a_request_for_an_own_draft_the_target_does_not_run_is_refused(tiny_pair):
    service = TargetService(tiny_pair.target_runner, tiny_pair.eos_ids, links=None)
    request = TargetRequest("s", GenerationRequest(prompt_ids=[1, 2], max_new_tokens=4), 0,
                            SpeculationConfig(k=3, max_k=3), own_draft=True)
    with pytest.raises(FailedPrecondition, match="runs no draft of its own"):
        next(service.run(request, lambda fn: None, Observer()))
    assert len(service.sessions) == 0 and tiny_pair.target_runner.free_slots == tiny_pair.target_runner.max_sessions
