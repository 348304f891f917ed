"""Every proposer is lossless: greedy output equals target-only, in process and through the services."""

import random
import time

import pytest

from draft_service.servicer import feedback_from_pb
from draft_service.session import DraftSession
from specdec.adaptive import AcceptanceEstimate
from specdec.client import Client, build_request
from specdec.config import GenerationRequest, SamplingParams, SpeculationConfig
from specdec.decoder import CycleResult, SpeculativeDecoder
from specdec.proposers import PROPOSER_KINDS, Feedback, Proposal, make_factory
from target_service.draft_link import verdict_to_pb
from tests.conftest import PROMPTS
from tests.servers import running_stack

COPY_PROMPTS = [p + "\n" + p for p in PROMPTS[:6]]  # repeated text gives n-gram lookup something to find


def run(engine, prompt: str, kind: str | None, k: int = 4, max_new: int = 40, sampling=SamplingParams()):
    factory = make_factory(kind, engine.draft_runner, engine.target_runner.vocab_size) if kind else None
    decoder = SpeculativeDecoder(engine.target_runner, engine.tokenizer, engine.eos_ids, factory,
                                 SpeculationConfig(k=k if kind else 0))
    return decoder.generate(GenerationRequest(prompt_ids=engine.encode(prompt), max_new_tokens=max_new,
                                              sampling=sampling, ignore_eos=True))


@pytest.mark.parametrize("kind", PROPOSER_KINDS)
def test_greedy_equality_for_every_proposer(tiny_engine, kind):
    drafted = 0
    for prompt in PROMPTS[:12] + COPY_PROMPTS:
        result = run(tiny_engine, prompt, kind)
        assert result.token_ids == run(tiny_engine, prompt, None).token_ids, (kind, prompt)
        drafted += result.stats.draft_tokens
        assert set(result.stats.draft_tokens_by_source) <= {"ngram", "draft-model"}
        assert sum(result.stats.accepted_tokens_by_source.values()) == result.stats.accepted_tokens
    assert drafted > 0


def test_hybrid_uses_lookup_where_it_is_reliable_and_the_model_elsewhere(tiny_engine):
    stats = run(tiny_engine, COPY_PROMPTS[0], "hybrid", max_new=60).stats
    assert stats.draft_tokens_by_source.get("ngram", 0) > 0
    assert stats.draft_tokens_by_source.get("draft-model", 0) > 0
    hybrid = make_factory("hybrid", tiny_engine.draft_runner).open(SamplingParams(), 0)
    try:
        periodic = [11, 12, 13, 14, 15] * 8  # lookup has predicted every token here
        assert hybrid.propose(periodic, 3).source == "ngram"
        assert hybrid.propose(periodic, 3).token_ids == [11, 12, 13]
        rng = random.Random(0)
        unreliable = [rng.randrange(10, 30) for _ in range(120)]  # random: matches are short and wrong
        hybrid.ngram.index.sync(unreliable)
        assert hybrid.ngram.index.continuation(3)  # lookup would propose something (short matches abound)...
        proposal = hybrid.propose(unreliable, 3)
        assert proposal.source == "draft-model" and len(proposal.token_ids) == 3  # ...but the model drafts
    finally:
        hybrid.close()


def test_hybrid_weighs_measured_costs(tiny_engine):
    """Once costs are measured the hybrid takes whichever option should commit most tokens per second."""
    hybrid = make_factory("hybrid", tiny_engine.draft_runner).open(SamplingParams(), 0)
    try:
        rng = random.Random(1)
        fresh = [rng.randrange(10, 30) for _ in range(40)] + [99]  # 99 occurs nowhere before: no lookup
        copying = [11, 12, 13, 14, 15] * 8  # lookup matches 4 tokens here
        assert hybrid.propose(fresh, 4).source == "draft-model"  # cold: the model drafts, to be measured
        hybrid.observe(Feedback("draft-model", 4, 4, 0.40))
        model_k, costs = hybrid.model_k, hybrid.model_k.costs
        assert model_k.alpha == 1.0 and costs.verify_s[4] == 0.40 and costs.draft_step_s > 0
        costs.draft_step_s = 0.2  # an expensive model: free lookup wins on copied text
        assert hybrid.propose(copying, 3).source == "ngram"
        hybrid.observe(Feedback("ngram", 3, 0, 0.35))
        assert hybrid.lookup_acceptance[4].value == 0.0  # measured: lookups on 4-token matches failed

        # a useless model: plain decoding (an empty proposal) beats drafting
        model_k.acceptance, costs.draft_step_s, costs.verify_s = AcceptanceEstimate(0.8, 0, 5), 0.05, {0: 0.30, 4: 0.50}
        assert hybrid.propose(fresh, 4).token_ids == []
        model_k.acceptance = AcceptanceEstimate(0.8, 9, 10)  # a good, cheap model beats a lookup measured to fail...
        assert hybrid.propose(copying, 3).source == "draft-model"
        # ...and a lookup measured to succeed beats an expensive model
        hybrid.lookup_acceptance[4] = AcceptanceEstimate(0.8, 19, 20)
        costs.draft_step_s = 0.2
        proposal = hybrid.propose(copying, 3)
        assert proposal.source == "ngram" and proposal.token_ids == [11, 12, 13]
    finally:
        hybrid.close()


def test_draft_model_catches_up_apart_from_drafting(tiny_engine, monkeypatch):
    """After cycles drafted by lookup (or none), the gap is one prefill timed apart, so the draft time a
    proposal reports stays k decode steps: the per-token cost adaptive K weighs."""
    proposer = make_factory("draft-model", tiny_engine.draft_runner).open(SamplingParams(), 0)
    runner, extend = proposer.runner, proposer.runner.extend
    fed = []

    def slow_prefill(session, tokens, keep):
        fed.append(len(tokens) - len(session.tokens))
        if fed[-1] > 2:
            time.sleep(0.3)  # make the catch-up unmistakable
        return extend(session, tokens, keep)

    monkeypatch.setattr(runner, "extend", slow_prefill)
    try:
        sequence = list(range(10, 100))
        proposer.prefill(sequence[:5])
        fed.clear()
        t0 = time.perf_counter()
        proposal = proposer.propose(sequence, 3)
        assert time.perf_counter() - t0 > 0.3 and 0 < proposal.draft_s < 0.3
        assert fed == [len(sequence) - 6, 1, 1, 1]  # one prefill over the gap, then three draft steps
        assert len(proposal.token_ids) == 3 and proposer.session.tokens[:len(sequence)] == sequence
        fed.clear()  # all three drafts accepted plus a bonus: two missing, left to the first draft step
        proposer.propose(sequence + proposal.token_ids + [41], 3)
        assert fed == [2, 1, 1]
    finally:
        proposer.close()


def test_verdicts_carry_feedback_to_the_draft_proposer():
    class Recorder:
        source = "ngram"
        seen: list = []

        def prefill(self, prompt): pass

        def propose(self, committed, k):
            return Proposal(start=len(committed), token_ids=[1] * k, probs=None, source=self.source)

        def observe(self, feedback):
            self.seen.append(feedback)

    cycle = CycleResult(new_tokens=[5, 6], k=3, accepted=1, verify_s=0.25, start=3, draft_sources=["ngram"] * 3)
    sent = feedback_from_pb(verdict_to_pb(cycle, next_k=2))
    assert sent == Feedback("ngram", 3, 1, 0.25)
    session = DraftSession(Recorder(), [7, 8, 9], k=3, overlap=False)
    session.start()
    session.on_verdict(3, [5, 6], 2, sent)
    assert Recorder.seen == [sent]


def test_seeded_sampling_with_ngram_is_reproducible(tiny_engine):
    sampling = SamplingParams(temperature=0.8, top_k=30, seed=5)
    a = run(tiny_engine, COPY_PROMPTS[1], "ngram", sampling=sampling)
    b = run(tiny_engine, COPY_PROMPTS[1], "ngram", sampling=sampling)
    assert a.token_ids == b.token_ids


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["ngram", "hybrid"])
def test_services_with_each_proposer(tiny_engine, kind):
    with running_stack(draft=["--proposer", kind]) as stack, Client(stack.address, timeout_s=60) as client:
        for prompt in COPY_PROMPTS[:4]:
            result = client.generate(build_request(prompt, max_new_tokens=40, ignore_eos=True, proposer=kind))
            assert result.token_ids == run(tiny_engine, prompt, None).token_ids
        sampled = client.generate(build_request(COPY_PROMPTS[0], max_new_tokens=40, ignore_eos=True, k=4,
                                                sampling=SamplingParams(temperature=0.8, seed=9)))
        assert sampled.token_ids == run(tiny_engine, COPY_PROMPTS[0], kind, sampling=SamplingParams(
            temperature=0.8, seed=9)).token_ids
        by_proposer = sampled.summary.speculation.accepted_tokens_by_proposer
        assert sum(by_proposer.values()) == sampled.summary.speculation.accepted_tokens
        with pytest.raises(Exception, match="no healthy draft runs"):
            other = "draft-model" if kind != "draft-model" else "ngram"
            client.generate(build_request("x", max_new_tokens=2, proposer=other))
