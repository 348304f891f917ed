"""Every proposer is lossless: greedy output equals target-only, in process and through the services."""

import random
import time

import pytest

from specdec.core.adaptive import AcceptanceEstimate
from specdec.core.config import GenerationRequest, ProposerKind, SamplingParams, SpeculationConfig
from specdec.core.decoder import SpeculativeDecoder
from specdec.core.drafting import DraftSession, Verdict
from specdec.core.proposal import Feedback, Proposal
from specdec.core.stats import Cycle
from specdec.core.target_loop import feedback_of
from specdec.proposers import make_factory
from specdec.serving.convert import feedback_from_pb, verdict_to_pb
from tests.conftest import PROMPTS

COPY_PROMPTS = [p + "\n" + p for p in PROMPTS[:6]]  # repeated text gives n-gram lookup something to find


def run(engine, prompt: str, kind: ProposerKind | None, k: int = 4, max_new: int = 40, sampling=SamplingParams()):
    factory = make_factory(kind, engine.draft_runner, engine.target_runner.vocab_size) if kind else None
    decoder = SpeculativeDecoder(engine.target_runner, engine.tokenizer, engine.eos_ids, factory,
                                 SpeculationConfig(k=k if kind else 0))
    return decoder.generate(GenerationRequest(prompt_ids=engine.encode(prompt), max_new_tokens=max_new,
                                              sampling=sampling, ignore_eos=True))


@pytest.fixture(scope="module")
def baselines(tiny_pair):
    return {p: run(tiny_pair, p, None).token_ids for p in PROMPTS[:12] + COPY_PROMPTS}


@pytest.mark.parametrize("kind", list(ProposerKind))
def test_greedy_equality_for_every_proposer(tiny_pair, baselines, kind):
    drafted = 0
    for prompt in PROMPTS[:12] + COPY_PROMPTS:
        result = run(tiny_pair, prompt, kind)
        assert result.token_ids == baselines[prompt], (kind, prompt)
        drafted += result.stats.draft_tokens
        assert set(result.stats.draft_tokens_by_source) <= {"ngram", "draft-model"}
        assert sum(result.stats.accepted_tokens_by_source.values()) == result.stats.accepted_tokens
    assert drafted > 0


def test_hybrid_uses_lookup_where_it_is_reliable_and_the_model_elsewhere(tiny_pair):
    # A seeded sampled request takes the token-only rule (hit rate >= min_hit_rate), so which proposer
    # drafts is the same on every machine; a greedy run weighs measured times, which a loaded CI box moves.
    sampling = SamplingParams(temperature=0.7, seed=0)
    stats = run(tiny_pair, COPY_PROMPTS[1], "hybrid", max_new=60, sampling=sampling).stats
    assert stats.draft_tokens_by_source.get("ngram", 0) > 0
    assert stats.draft_tokens_by_source.get("draft-model", 0) > 0
    hybrid = make_factory("hybrid", tiny_pair.draft_runner).open(SamplingParams(), 0)
    try:
        periodic = [11, 12, 13, 14, 15] * 8  # lookup has predicted every token here
        assert hybrid.propose(periodic, 3).source == "ngram"
        assert hybrid.propose(periodic, 3).token_ids == [11, 12, 13]
        rng = random.Random(0)
        unreliable = [rng.randrange(10, 30) for _ in range(120)]  # random: matches are short and wrong
        hybrid.ngram.index.sync(unreliable)
        assert hybrid.ngram.index.lookup(3).tokens  # lookup would propose something (short matches abound)...
        proposal = hybrid.propose(unreliable, 3)
        assert proposal.source == "draft-model" and len(proposal.token_ids) == 3  # ...but the model drafts
    finally:
        hybrid.close()


def test_hybrid_weighs_measured_costs(tiny_pair):
    """Once costs are measured the hybrid takes whichever option should commit most tokens per second."""
    hybrid = make_factory("hybrid", tiny_pair.draft_runner).open(SamplingParams(), 0)
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


def test_draft_model_catches_up_apart_from_drafting(tiny_pair, monkeypatch):
    """After cycles drafted by lookup (or none), the gap is one prefill timed apart, so the draft time a
    proposal reports stays k decode steps: the per-token cost adaptive K weighs."""
    proposer = make_factory("draft-model", tiny_pair.draft_runner).open(SamplingParams(), 0)
    runner, extend, greedy_ids = proposer.runner, proposer.runner.extend, proposer.runner.greedy_ids
    fed = []

    def slow_prefill(slot, tokens, keep):  # catching up (and prefilling) reads only the argmax: it waits for it
        fed.append(len(tokens) - len(slot.tokens))
        if fed[-1] > 2:
            time.sleep(0.3)  # make the catch-up unmistakable
        return greedy_ids(slot, tokens, keep)

    def draft_step(slot, tokens, keep):
        fed.append(len(tokens) - len(slot.tokens))
        return extend(slot, tokens, keep)

    monkeypatch.setattr(runner, "greedy_ids", slow_prefill)
    monkeypatch.setattr(runner, "extend", draft_step)
    try:
        sequence = list(range(10, 100))
        proposer.prefill(sequence[:5])
        fed.clear()
        t0 = time.perf_counter()
        proposal = proposer.propose(sequence, 3)
        assert time.perf_counter() - t0 > 0.3 and 0 < proposal.draft_s < 0.3 and proposal.catch_up_s >= 0.3
        assert fed == [len(sequence) - 6, 1, 1, 1]  # one prefill over the gap, then three draft steps
        assert len(proposal.token_ids) == 3 and proposer.slot.tokens[:len(sequence)] == sequence
        fed.clear()  # all three drafts accepted plus a bonus: two missing, left to the first draft step
        assert proposer.propose(sequence + proposal.token_ids + [41], 3).catch_up_s < 0.3
        assert fed == [2, 1, 1]
    finally:
        proposer.close()


def test_verdicts_carry_feedback_to_the_draft_proposer():
    class Recorder:
        source = ProposerKind.NGRAM
        seen: list = []

        def prefill(self, prompt): pass

        def propose(self, committed, k):
            return Proposal(start=len(committed), token_ids=[1] * k, probs=None, source=self.source)

        def observe(self, feedback):
            self.seen.append(feedback)

    cycle = Cycle(new_tokens=[5, 6], k=3, accepted=1, verify_s=0.25, start=3, draft_sources=[ProposerKind.NGRAM] * 3)
    sent = feedback_from_pb(verdict_to_pb(cycle, feedback_of(cycle), next_k=2))
    assert sent == Feedback(ProposerKind.NGRAM, 3, 1, 0.25)
    session = DraftSession(Recorder(), [7, 8, 9], k=3, overlap=False)
    session.start()
    session.on_verdict(Verdict(3, [5, 6], 2, sent))
    assert Recorder.seen == [sent]


def test_seeded_sampling_with_ngram_is_reproducible(tiny_pair):
    sampling = SamplingParams(temperature=0.8, top_k=30, seed=5)
    a = run(tiny_pair, COPY_PROMPTS[1], ProposerKind.NGRAM, sampling=sampling)
    b = run(tiny_pair, COPY_PROMPTS[1], ProposerKind.NGRAM, sampling=sampling)
    assert a.token_ids == b.token_ids
