"""Adaptive K's choices, and the replay proposer."""

import logging
import math
import random
import statistics
from dataclasses import dataclass, field

import pytest

from specdec.core import adaptive
from specdec.core.adaptive import (
    PROBE_SHARE,
    TRIAL_SAMPLES,
    TRIAL_STEPS,
    TRY_SHARE,
    AcceptanceEstimate,
    AdaptiveK,
    CatchUp,
    PlainProbes,
    ProbeSchedule,
    SharedPhase,
    StepCosts,
    expected_tokens,
)
from specdec.core.config import GenerationRequest, SamplingParams, SpeculationConfig
from specdec.core.decoder import SpeculativeDecoder
from specdec.core.errors import InvalidArgument
from specdec.proposers.replay import ReplayBook, ReplayFactory, ReplayRates


@dataclass
class Load:
    """A batched engine's load as AdaptiveK sees it (adaptive.BatchLoad), set by hand."""

    rows: int = 1
    load: int | None = None  # the rows the costs are read at, where not `rows` (the most of the last steps)
    verify: dict[int, float] = field(default_factory=dict)  # k -> a step's cost if every row verified k drafts
    cycles: dict[int, float] = field(default_factory=dict)  # k -> the measured cycle of steps of k drafts
    steps: int | None = None  # the engine's steps so far (None: a shared phase's rates are never reused)
    samples: dict[int, int] = field(default_factory=dict)  # k -> how many cycles its measured figure averages
    draft_step: float | None = None  # one draft step's time at this load, as the engine's draft runner timed it
    catch_up: CatchUp | None = None  # what turning drafting on would cost the rows' drafts first
    elsewhere: dict[int, float] = field(default_factory=dict)  # k -> its cycle scaled from another load's
    asked: int = 0  # calls of batch_cycle_cost

    def batch_steps(self) -> int | None:
        return self.steps

    def batch_rows(self) -> int:
        return self.rows

    def load_rows(self) -> int:
        return self.load or self.rows

    def batch_verify_cost(self, k: int) -> float | None:
        return self.verify.get(k)

    def batch_cycle_cost(self, k: int) -> float | None:
        self.asked += 1
        return self.cycles.get(k)

    def batch_cycle_samples(self, k: int) -> int:
        return self.samples.get(k, 0)

    def batch_cycle_elsewhere(self, k: int) -> float | None:
        return self.elsewhere.get(k)

    def batch_draft_step_cost(self) -> float | None:
        return self.draft_step

    def batch_catch_up(self) -> CatchUp | None:
        return self.catch_up


def known(alpha: float) -> AcceptanceEstimate:
    """An acceptance measured over so many drafts that the one K is chosen by (`hoped`) is the estimate itself:
    for tests of what K a given acceptance gets."""
    return AcceptanceEstimate(accepted=alpha * 1e9, judged=1e9)


def feed(chooser: AdaptiveK, alpha: float, verify, draft_step: float, cycles: int = 200) -> None:
    """Simulate cycles with deterministic acceptance close to alpha."""
    credit = 0.0
    for _ in range(cycles):
        k = chooser.choose()
        accepted = 0
        for _ in range(k):
            credit += alpha
            if credit >= 1.0:
                credit -= 1.0
                accepted += 1
            else:
                break
        chooser.observe(k, accepted, verify(k), k * draft_step)


def test_expected_tokens_formula():
    assert expected_tokens(0.0, 4) == 1.0
    assert expected_tokens(1.0, 4) == 5.0
    assert expected_tokens(0.5, 2) == pytest.approx(1.75)


def test_acceptance_pools_blocks_instead_of_averaging_them():
    """All-or-nothing blocks (as on code): 6 of 6, then 0 of 6. Their mean length is what a = 6/7
    predicts; averaging per-block rates would say 0.5 and keep K short."""
    estimate = AcceptanceEstimate(decay=1.0)
    assert estimate.value is None
    for _ in range(10):
        estimate.observe(6, 6)
        estimate.observe(6, 0)
    assert estimate.value == pytest.approx(6 / 7)
    estimate.observe(4, 2)  # 2 accepted, then 1 rejection
    assert estimate.value == pytest.approx(62 / 73)


def test_k_is_chosen_by_a_hoped_acceptance_above_the_estimate_on_little_evidence():
    estimate = AcceptanceEstimate()
    assert estimate.hoped is None
    estimate.observe(4, 0)  # one unlucky block: a = 0 from one judged token
    assert estimate.value == 0.0 and estimate.hoped == pytest.approx(0.2)
    for _ in range(200):
        estimate.observe(4, 3)
    assert estimate.value == pytest.approx(0.75) and 0.75 < estimate.hoped < 0.78  # ~80 judged tokens
    assert known(1.0).hoped == pytest.approx(1.0) and known(0.0).hoped == pytest.approx(0.0, abs=1e-9)


def simulated_sessions(alpha: float, seed: int, sessions: int = 6, tokens: int = 128) -> float:
    """Tokens per second of `sessions` requests one after another with one H200's costs at one client (7B target:
    a plain step 6.5 ms, verify 7.2-7.4; 0.5B draft: 2.7 ms a token) and acceptance `alpha`, drawn at random."""
    rng = random.Random(seed)
    verify = {0: 0.0065, 1: 0.0072, 2: 0.0073, 3: 0.0073, 4: 0.0074}
    costs, prior, probes = StepCosts(), AcceptanceEstimate(), ProbeSchedule()
    elapsed = made = 0.0
    for _ in range(sessions):
        chooser, got = AdaptiveK(max_k=4, costs=costs, prior=prior, probes=probes), 0
        while got < tokens:
            k = chooser.choose(tokens - got)
            accepted = 0
            while accepted < k and rng.random() < alpha:
                accepted += 1
            chooser.observe(k, accepted, verify[k], 0.0027 * k, 0.0003 if k else None)
            elapsed += verify[k] + 0.0027 * k + (0.0003 if k else 0.0)
            got += accepted + 1
        made += got
    return made / elapsed


def test_a_good_draft_is_not_stopped_for_good_by_a_few_unlucky_blocks():
    """The H200 at one client (call g4): one replayed-0.8 run drafted 6 cycles of 765, its first session's estimate
    having fallen to 0.59 after a few blocks. K chosen by the estimate itself stopped drafting in 8% of such
    simulated runs, which then learn from one-token probes only; chosen by the hoped acceptance, a good draft keeps
    (nearly) the best rate, and a useless or break-even one still costs (nearly) nothing."""
    best = expected_tokens(0.8, 4) / (0.0074 + 4 * 0.0027 + 0.0003)  # ~187 tok/s; plain 154
    runs = [simulated_sessions(0.8, seed) for seed in range(100)]
    assert statistics.mean(runs) > 0.97 * best and sum(r < 160 for r in runs) <= 3
    for alpha in (0.0, 0.5):
        assert statistics.mean(simulated_sessions(alpha, seed) for seed in range(20)) > 0.97 / 0.0065


def test_all_or_nothing_acceptance_keeps_k_long():
    chooser, blocks = AdaptiveK(max_k=8), 0
    for _ in range(200):
        k = chooser.choose()
        blocks += k > 0
        chooser.observe(k, k if blocks % 2 else 0, 0.010 * (1 + 0.03 * k), k * 0.0005)
    assert chooser.choose() >= 5


def test_good_draft_on_flat_verify_cost_gets_long_k():
    chooser = AdaptiveK(max_k=8)
    feed(chooser, alpha=0.9, verify=lambda k: 0.010 * (1 + 0.03 * k), draft_step=0.0005)
    assert chooser.choose() >= 5


def test_useless_draft_shrinks_to_zero_and_probes_rarely():
    chooser = AdaptiveK(max_k=8)
    feed(chooser, alpha=0.0, verify=lambda k: 0.010 * (1 + 0.1 * k), draft_step=0.002)
    ks = []
    for _ in range(64):
        k = chooser.choose()
        ks.append(k)
        chooser.observe(k, 0, 0.010 * (1 + 0.1 * k), k * 0.002)
    assert ks.count(0) >= 60 and max(ks) <= 1  # plain decoding, with an occasional k=1 probe
    assert chooser.probes.every > chooser.probes.first  # failed probes back off


def test_probes_whose_catch_up_costs_steps_wait_long_enough_to_take_a_small_share():
    """A paused draft catches up before a probe's block: ~65 ms on the H200, ten plain steps of 6.5 ms
    (docs/benchmarks.md). Doubling from 16 steps alone, a fresh service's first 512 steps held five probes (13%
    of the time); the wait after each is at least its cost over PROBE_SHARE."""
    def probe_waits(catch_up_s: float) -> list[int]:
        chooser = AdaptiveK(max_k=4)
        chooser.observe(0, 0, 0.0065, 0.0)
        chooser.observe(4, 0, 0.0075, 4 * 0.003)  # a useless draft
        waits = []
        for _ in range(2000):
            k = chooser.choose()
            chooser.observe(k, 0, 0.0065 if k == 0 else 0.0070, 0.003 * k, catch_up_s=catch_up_s if k else 0.0)
            if k:
                waits.append(chooser.probes.every)
        return waits

    assert probe_waits(0.0)[:4] == [32, 64, 128, 256]  # cheap probes: doubling
    costly = probe_waits(0.065)
    steps = (0.065 + 0.003) / 0.0065  # what one costs, in plain steps
    assert costly[0] == math.ceil(steps / PROBE_SHARE) and sum(steps for _ in costly) / 2000 <= 2 * PROBE_SHARE


def test_a_stale_plain_cost_does_not_lock_a_useless_draft_in():
    """A fresh service's first plain cycles were slow (20 ms) and then every cycle drafted (k = 1 verifies in
    8 ms): taken as is, plain decoding would look slower than drafting a token nobody accepts, and it would
    never be timed again. A forward of one token per row costs no more than one of two: k = 0 wins."""
    chooser = AdaptiveK(max_k=4)
    for _ in range(5):
        chooser.observe(0, 0, 0.020, 0.0)
    for _ in range(20):
        chooser.observe(1, 0, 0.008, 0.003)
    assert chooser.costs.verify_cost(0) > chooser.costs.verify_cost(1)  # the stale figure is still there
    assert chooser.rate(0) > chooser.rate(1)
    assert chooser.choose() == 0


def test_a_probe_pays_its_round_trip_once_not_per_token():
    """A draft service's cycle waits for the hops to the draft and back besides the drafting itself. A k = 1
    probe of a perfect draft (3 ms per token, 6 ms of round trip, 8 ms steps) must resume drafting: charged
    per token, the same wait would price a draft token at 9 ms and keep K at 0."""
    def after_probe(draft_s: float, round_trip_s: float | None) -> int:
        chooser = AdaptiveK(max_k=4)
        chooser.observe(0, 0, 0.008, 0.0)
        chooser.observe(1, 1, 0.008, draft_s, round_trip_s)
        return chooser.choose()

    assert after_probe(0.003, 0.006) == 4
    assert after_probe(0.009, None) == 0  # the same wait, all of it taken for drafting


def test_sessions_sharing_a_probe_schedule_probe_a_useless_draft_as_rarely_as_one():
    """A probe costs a batch about one padded step and the draft's catching up, whatever its rows: sessions of
    one batch count their plain cycles in steps, and probe together as often as one session alone."""
    def probes(sessions: int, shared: bool) -> int:
        schedule, costs = ProbeSchedule(), StepCosts()
        choosers = [AdaptiveK(max_k=4, costs=costs, probes=schedule if shared else None,
                              batch=Load(rows=sessions) if shared else None) for _ in range(sessions)]
        for chooser in choosers:
            chooser.observe(0, 0, 0.010, 0.0)
            chooser.observe(4, 0, 0.012, 0.008)  # a useless draft: a = 0
        n = 0
        for _ in range(128):  # 128 cycles of every session
            for chooser in choosers:
                k = chooser.choose()
                n += k > 0
                chooser.observe(k, 0, 0.010, 0.002 * k)
        return n

    alone = probes(1, shared=False)
    assert 2 <= alone <= 4  # after 16, 32, 64 plain cycles
    assert probes(16, shared=False) == 16 * alone
    assert probes(16, shared=True) == alone  # 128 steps of 16 rows: after 16, 32, 64 steps


def test_a_draft_that_is_right_but_too_slow_at_this_load_is_probed_ever_more_rarely():
    """Accepted probes alone do not mean drafting pays: under load a perfect draft's tokens can cost more than
    the batch's plain step, and probing it every 16 cycles would cost the batch its probes."""
    chooser = AdaptiveK(max_k=4)
    chooser.observe(0, 0, 0.010, 0.0)
    chooser.observe(4, 4, 0.012, 4 * 0.050)  # every draft accepted, 50 ms a token against 10 ms steps
    ks = []
    for _ in range(512):
        k = chooser.choose()
        ks.append(k)
        chooser.observe(k, k, 0.010, 0.050 * k)
    assert ks.count(0) >= 500 and chooser.probes.every > chooser.probes.first


def test_drafting_resumes_soon_after_the_load_that_made_it_slow_is_gone():
    """A burst of load priced a perfect draft's token at 50 ms; now it costs 3 ms against 8 ms steps. Probes
    back off while drafting does not pay, so each must move the estimate enough to resume within a few."""
    chooser = AdaptiveK(max_k=4)
    chooser.observe(0, 0, 0.008, 0.0)
    chooser.observe(4, 4, 0.009, 4 * 0.050)
    ks: list[int] = []
    while len(ks) < 512 and (not ks or ks[-1] <= 1):
        ks.append(chooser.choose())
        chooser.observe(ks[-1], ks[-1], 0.008, 0.003 * ks[-1])
    assert ks[-1] > 1 and len(ks) < 300, (ks[-1], len(ks))


def test_cpu_like_costs_prefer_small_k():
    """On the 2-core CPU, verifying 5 tokens costs ~2x one (233 ms vs 475 ms), a draft step ~85 ms."""
    table = {0: 0.233, 1: 0.240, 2: 0.300, 4: 0.475, 8: 0.636}
    chooser = AdaptiveK(max_k=8)
    feed(chooser, alpha=0.8, verify=lambda k: table.get(k, 0.233 + 0.05 * k), draft_step=0.085)
    assert 1 <= chooser.choose() <= 3


def test_a_pooled_prior_weighs_no_more_than_its_evidence():
    """A target's first session drafted one block and none of it was accepted (one in five at acceptance 0.8): read
    as 0 of 8 judged drafts, the next sessions' first good probes (1 of 9) kept them decoding plainly for a whole
    request (the H200, call v4); read as the 0 of 1 it is, one accepted probe makes it 1 of 2. A long history still
    weighs as PRIOR_TOKENS."""
    prior = AcceptanceEstimate()
    prior.observe(4, 0)
    fresh = AdaptiveK(max_k=4, prior=prior)
    assert fresh.acceptance.judged == pytest.approx(1.0) and fresh.acceptance.hoped == pytest.approx(0.2)
    fresh.observe(1, 1, 0.010, 0.002)
    assert fresh.alpha == pytest.approx(1 / (1 + adaptive.ACCEPTANCE_DECAY))  # 1 of ~2 (the past decays)
    for _ in range(100):
        prior.observe(4, 3)
    assert AdaptiveK(max_k=4, prior=prior).acceptance.judged == pytest.approx(adaptive.PRIOR_TOKENS)
    assert AdaptiveK(max_k=4, prior=prior).alpha == pytest.approx(prior.value)


def test_sessions_share_costs_and_start_from_the_pooled_acceptance():
    """A new session of a target that has measured its costs chooses from its first cycle: K = 0 where an
    expensive draft never pays (as a 2-core CPU's fp32 draft), a long K where a cheap one does."""
    from specdec.core.adaptive import StepCosts

    expensive = {0: 0.46, 1: 0.88, 2: 0.88, 4: 1.11}
    costs, prior = StepCosts(), AcceptanceEstimate()
    costs.observe(0, expensive[0])  # an earlier plain cycle: before one, plain decoding is taken to cost verify(1)
    feed(AdaptiveK(max_k=4, costs=costs, prior=prior), alpha=0.6, verify=lambda k: expensive.get(k, 1.11),
         draft_step=0.20, cycles=40)
    fresh = AdaptiveK(max_k=4, costs=costs, prior=prior)
    assert fresh.alpha == pytest.approx(prior.value) and fresh.choose() == 0
    alone = AdaptiveK(max_k=4)  # without what the earlier session learned: K = 4 until measured
    assert alone.choose() == 4

    costs, prior = StepCosts(), AcceptanceEstimate()
    feed(AdaptiveK(max_k=8, costs=costs, prior=prior), alpha=0.9, verify=lambda k: 0.010 * (1 + 0.03 * k),
         draft_step=0.0005, cycles=60)
    assert AdaptiveK(max_k=8, costs=costs, prior=prior).choose() >= 5


def phase_member(phase: SharedPhase, costs: StepCosts, alpha: float) -> AdaptiveK:
    """A session drafting in `phase` whose blocks of 8 were all accepted (alpha 1) or none was (alpha 0)."""
    chooser = AdaptiveK(max_k=8, costs=costs, phase=phase, probes=ProbeSchedule(first=10**6), acceptance=known(alpha))
    for _ in range(5):
        chooser.observe(8, 8 if alpha else 0, 0.018, 0.032)
    assert chooser.alpha == pytest.approx(alpha)
    return chooser


def test_sessions_drafting_in_one_phase_choose_k_for_the_whole_batch():
    """Own-draft sessions all wait for one drafting phase and one padded verify: one session's perfect draft
    must not make seven sessions with useless ones draft (each would pay for its K), and once they leave it
    drafts long again. Costs: verify(k) = 10 ms x (1 + 0.1 k), drafting 4 ms per token."""
    costs = StepCosts(smoothing=1.0)
    for k in range(9):
        costs.observe(k, 0.010 * (1 + 0.1 * k), 0.004 * k)
    alone = phase_member(SharedPhase(), costs, 1.0)
    assert alone.choose() == 8  # 9 tokens in 50 ms beat 1 in 10 ms
    phase = SharedPhase()
    perfect = phase_member(phase, costs, 1.0)
    useless = [phase_member(phase, costs, 0.0) for _ in range(7)]
    assert phase.tokens(4) == pytest.approx((7 + 5) / 8)
    assert [c.choose() for c in [perfect, *useless]] == [0] * 8  # 1 + k/8 tokens in 10 + 5k ms: k = 0 for all
    for c in useless:
        c.close()
    assert perfect.choose() == 8 and phase.tokens(8) == pytest.approx(9.0)
    perfect.close()
    assert phase.tokens(0) is None


def test_a_phase_mean_follows_its_members_acceptance_as_it_moves():
    """The members' mean E(a_i, k) is worked out when read: an acceptance that moves after one read counts at the
    next, a member near its end counts no more than its own K's tokens, and one that leaves no longer counts."""
    phase = SharedPhase(max_k=4)
    a, b = object(), object()
    phase.update(a, 0.5, 4)
    phase.update(b, 1.0, 2)
    assert phase.tokens(4) == pytest.approx((expected_tokens(0.5, 4) + 3.0) / 2)
    phase.update(a, 0.0, 4)
    assert phase.tokens(4) == pytest.approx((1.0 + 3.0) / 2)
    assert phase.tokens(1) == pytest.approx((1.0 + 2.0) / 2)
    phase.update(b, None, 2)  # not known: does not weigh in
    assert phase.tokens(4) == pytest.approx(1.0)
    phase.leave(a)
    assert phase.tokens(1) is None


def test_a_phase_of_like_sessions_chooses_what_each_would_alone():
    costs = StepCosts(smoothing=1.0)
    for k in range(9):
        costs.observe(k, 0.010 * (1 + 0.1 * k), 0.004 * k)
    phase = SharedPhase()
    members = [phase_member(phase, costs, 1.0) for _ in range(4)]
    assert [c.choose() for c in members] == [phase_member(SharedPhase(), costs, 1.0).choose()] * 4


def test_replay_proposer_accepts_at_the_replayed_rate(tiny_pair):
    prompt = tiny_pair.encode("def main():")
    request = GenerationRequest(prompt_ids=prompt, max_new_tokens=200, ignore_eos=True)
    reference = prompt + tiny_pair.decoder.generate(request).token_ids
    for alpha in (0.0, 0.9):
        factory = ReplayFactory(tiny_pair.draft_runner, ReplayBook([(prompt, reference[len(prompt):])]),
                                ReplayRates(alpha, 0.0))
        decoder = SpeculativeDecoder(tiny_pair.target_runner, tiny_pair.tokenizer, tiny_pair.eos_ids, factory,
                                     SpeculationConfig(k=4))
        result = decoder.generate(request)
        assert result.token_ids == reference[len(prompt):]  # lossless whatever the draft says
        rate = result.stats.accepted_tokens / result.stats.draft_tokens
        assert (rate == 0.0) if alpha == 0.0 else (0.6 < rate < 1.0), rate


def test_a_replay_book_says_what_rate_its_draft_realises_over_requests(tiny_pair):
    """A replayed draft is right at a position by its session's seed alone, so sessions of one seed replay the same
    positions: the book gives the rate requests (prompt, seed) realise, the share of their outputs' draft positions
    (each output's tokens after its first) that the proposer gets right; requests of seeds of their own average to
    alpha."""
    prompt, output = [1, 2, 3], [(7 * i + 5) % 50 for i in range(300)]
    book = ReplayBook([(prompt, output)])
    proposer = ReplayFactory(tiny_pair.draft_runner, book, ReplayRates(0.8, 0.0)).open(SamplingParams(), seed=0)
    try:
        reference = prompt + output
        proposer.before_propose(prompt)  # finds its reference by the prompt
        right = [proposer._replayed(p)[0] == reference[p] for p in range(len(prompt) + 1, len(reference))]
    finally:
        proposer.close()
    realised = book.realised(0.8, [(prompt, 0)])
    assert realised == sum(right) / len(right)
    assert book.realised(0.8, [(prompt, 0)] * 5) == realised  # one seed: the same positions each time
    assert 0.7 < realised < 0.9 and realised != book.realised(0.8, [(prompt, 1)])  # near alpha, but each seed its own
    assert book.realised(0.8, [(prompt, 0), (prompt, 1)]) == pytest.approx(
        (realised + book.realised(0.8, [(prompt, 1)])) / 2)  # one output's positions each
    assert abs(book.realised(0.8, [(prompt, seed) for seed in range(200)]) - 0.8) < 0.01  # 200 x 299 positions
    assert book.realised(1.0, [(prompt, 0)]) == 1.0 and book.realised(0.0, [(prompt, 0)]) == 0.0
    assert book.realised(0.8, []) is None
    assert ReplayBook([(prompt, [4])]).realised(0.8, [(prompt, 0)]) is None  # no position a draft proposes


def test_a_replayed_draft_warns_once_where_the_sequence_leaves_its_reference(tiny_pair, caplog):
    """Past the point where the committed tokens differ from the recorded continuation, a replayed draft proposes the
    recording's tokens and every one is rejected: it says so, once, with the position."""
    prompt = tiny_pair.encode("def main():")
    reference = [5, 6, 7, 8, 9, 10]
    proposer = ReplayFactory(tiny_pair.draft_runner, ReplayBook([(prompt, reference)]),
                             ReplayRates(1.0, 0.0)).open(SamplingParams(), seed=0)
    try:
        with caplog.at_level(logging.WARNING, logger="specdec.replay"):
            proposer.before_propose(prompt + [5, 6])
            proposer.before_propose(prompt + [5, 6, 7])
            assert not caplog.records
            proposer.before_propose(prompt + [5, 6, 7, 4])
            proposer.before_propose(prompt + [5, 6, 7, 4, 3])
        assert len(caplog.records) == 1
        assert f"left its reference at position {len(prompt) + 3} (4 there, the reference has 8)" in caplog.text
    finally:
        proposer.close()


def test_adaptive_decoder_stays_lossless(tiny_pair):
    prompt = tiny_pair.encode("class Config:")
    request = GenerationRequest(prompt_ids=prompt, max_new_tokens=60, ignore_eos=True)
    plain = SpeculativeDecoder(tiny_pair.target_runner, tiny_pair.tokenizer, tiny_pair.eos_ids).generate(request)
    adaptive = tiny_pair.decoder.generate(request, choose_k=AdaptiveK(max_k=8))
    assert adaptive.token_ids == plain.token_ids
    sampled = SamplingParams(temperature=0.7, seed=3)
    req2 = GenerationRequest(prompt_ids=prompt, max_new_tokens=30, ignore_eos=True, sampling=sampled)
    assert len(tiny_pair.decoder.generate(req2, choose_k=AdaptiveK()).token_ids) == 30


def test_replay_book_finds_the_longest_known_prompt_and_refuses_unknown_ones(tmp_path):
    book = ReplayBook([([1, 2], [3, 4]), ([1, 2, 9], [8])])
    assert book.find([1, 2, 3, 4, 5]) == [1, 2, 3, 4]
    assert book.find([1, 2, 9, 8]) == [1, 2, 9, 8]  # the longer prompt wins where both match
    with pytest.raises(InvalidArgument, match="no replay reference"):
        book.find([7, 1, 2])
    path = tmp_path / "replay.jsonl"
    book.save(str(path))
    assert ReplayBook.load(str(path)).find([1, 2, 9]) == [1, 2, 9, 8]
    for alpha, runner_up, name in ((1.5, 0.0, "replay_alpha"), (0.9, -0.1, "replay_runner_up")):
        with pytest.raises(InvalidArgument, match=name):  # the bench and the draft service both build one
            ReplayFactory(None, book, ReplayRates(alpha, runner_up))
    path.write_text("{not json\n")
    with pytest.raises(InvalidArgument, match="cannot read"):
        ReplayBook.load(str(path))



def test_load_aware_k_stops_speculating_when_plain_batched_steps_are_cheaper():
    """The session's own cycles (padded to the batch's K) show verify(0) = verify(4); the engine's table says
    a plain step at this load costs a third: K goes to 0, while alone the same costs keep K at 4."""
    costs = StepCosts(smoothing=1.0)
    costs.observe(4, 0.030, draft_s=0.008)  # 2 ms per drafted token
    costs.observe(0, 0.030)
    alone = AdaptiveK(max_k=4, costs=costs)
    batched = AdaptiveK(max_k=4, costs=costs, batch=Load(verify={0: 0.010, **{k: 0.030 for k in range(1, 5)}}))
    for chooser in (alone, batched):
        chooser.observe(4, 2, 0.030, 0.008)  # a = 2/3: E(4) = 2.6 tokens
    assert alone.choose() == 4 and batched.choose() == 0


def phase_at(load: Load, alpha_blocks: int = 4) -> AdaptiveK:
    """A session drafting in a phase of a batch at `load`, whose blocks of 4 had 3 drafts accepted (a = 3/4)."""
    costs = StepCosts(smoothing=1.0)
    for k in range(5):  # the parts: verify 13 ms and up, drafting 3.6 ms per token + 1.4 ms per cycle
        costs.observe(k, 0.013 + 0.001 * k, 0.0036 * k, 0.0014 if k else None)
    chooser = AdaptiveK(max_k=4, costs=costs, batch=load, phase=SharedPhase(), probes=ProbeSchedule(first=10**6),
                        acceptance=known(0.75))
    for _ in range(alpha_blocks):
        chooser.observe(4, 3, 0.017, 0.0144)
    return chooser


def test_a_phase_weighs_the_cycles_its_engine_measured_over_the_sum_of_their_parts():
    """64 rows drafting in one phase (the H200 at 64 clients, docs/benchmarks.md): summed from parts, drafting
    two tokens looks worth 1.27x a plain step (2.3 tokens in 23.6 ms against 1 in 13); measured, a plain cycle
    launched ahead takes 9.5 ms and a drafting one 27: plain decoding wins, and it is chosen."""
    assert phase_at(Load()).alpha == pytest.approx(0.75)
    verify = {k: 0.013 + 0.001 * k for k in range(5)}
    by_parts = phase_at(Load(rows=64, verify=verify))
    assert by_parts.choose() == 2 and by_parts.rate(2) / by_parts.rate(0) == pytest.approx(1.27, abs=0.01)
    measured = phase_at(Load(rows=64, verify=verify, cycles={0: 0.0095, 2: 0.027}))
    assert measured.rate(0) == pytest.approx(1 / 0.0095) and measured.choose() == 0
    assert "measured cycles ms 0:9.5 2:27.0" in measured.summary()
    cheap = {0: 0.0095, 1: 0.0131, 2: 0.0167, 3: 0.0203, 4: 0.0239}  # a plain cycle and a draft step per token
    cheap_drafts = phase_at(Load(rows=64, verify=verify, cycles=cheap))
    assert cheap_drafts.choose() == 2  # where drafting measures cheap, the phase drafts, by what it measured
    assert cheap_drafts.rate(2) == pytest.approx(expected_tokens(0.75, 2) / 0.0167, rel=1e-3)


def test_one_more_draft_token_costs_a_phase_at_least_the_draft_step_its_engine_timed():
    """16 rows on the H200 (call w2): a K = 2 cycle measured over hundreds of cycles at 11.5 ms, K = 3 over fewer at
    12.8, the drafting time per token 2.4 ms (a phase's fixed work in it) where a draft step took ~1.4. Raised to K = 2's
    cycle plus 2.4 ms, K = 3 loses to K = 2 at a = 0.75; raised by the step the engine timed, it wins, as measured.
    (Over WELL_MEASURED cycles K = 3's figure would stand as it is.)"""
    verify = {k: 0.0054 + 0.0003 * k for k in range(5)}
    cycles, samples = {0: 0.0054, 1: 0.0095, 2: 0.0115, 3: 0.0128}, {0: 300, 1: 50, 2: 500, 3: 40}
    costs = StepCosts(smoothing=1.0)
    costs.observe(2, 0.006, 0.0048)  # 2.4 ms a token

    def member(draft_step: float | None) -> AdaptiveK:
        load = Load(rows=16, verify=verify, cycles=cycles, samples=samples, draft_step=draft_step)
        return AdaptiveK(max_k=4, costs=costs, batch=load, phase=SharedPhase(), probes=ProbeSchedule(first=10**6),
                         acceptance=known(0.75))

    by_token, timed, dearer = member(None), member(0.0014), member(0.005)  # dearer: never above the per-token figure
    assert by_token.choose() == 2 and by_token.rate(3) == pytest.approx(expected_tokens(0.75, 3) / 0.0139, rel=1e-4)
    assert timed.choose() == 3 and timed.rate(3) == pytest.approx(expected_tokens(0.75, 3) / 0.0129, rel=1e-4)
    assert "draft 2.4 ms/token (a step 1.4)" in timed.summary()
    assert dearer.rate(3) == pytest.approx(by_token.rate(3))


def test_a_shared_phase_says_when_its_rates_turn_drafting_on_or_off(caplog, monkeypatch):
    """A phase that switches drafting on makes every member's draft catch up (at 64 clients on the H200, eight
    60-75 ms phases in 5 s, call n1, with nothing in the log saying at what load it switched): each switch is
    counted, and reported with the load, the rates and how long drafting is held off, at most once a second."""
    now = [0.0]
    monkeypatch.setattr(adaptive.time, "monotonic", lambda: now[0])
    phase = SharedPhase()
    assert phase.switched(2, 1) == 0  # the first choice is no switch
    assert phase.switched(0, 2) == 1  # off: reported at once
    now[0] = 0.5
    assert phase.switched(2, 3) == 0 and phase.switched(3, 4) == 0  # on again, within the second: counted
    now[0] = 1.2
    assert phase.switched(0, 5) == 2  # off again: two switches since the last report
    verify = {k: 0.013 + 0.001 * k for k in range(5)}
    load = Load(rows=48, verify=verify, cycles={0: 0.0095, 1: 0.0131, 2: 0.0167, 3: 0.0203, 4: 0.0239}, steps=1,
                samples=dict.fromkeys(range(5), TRIAL_SAMPLES))  # each K measured: none is tried (`_trial_k`)
    chooser = phase_at(load)
    assert chooser.choose() == 2
    load.cycles, load.steps, now[0] = {0: 0.0095, 2: 0.027}, 2, 5.0
    with caplog.at_level(logging.INFO, logger="specdec.adaptive"):
        assert chooser.choose() == 0
    assert ("shared phase: drafting off at 48 rows (1 switch since the last line; held off for 16 steps): "
            "acceptance 0.75") in caplog.text  # drafting lasted one step: the next switch on waits
    load.load, load.cycles, load.steps, now[0] = 64, {0: 0.0095, 1: 0.0131, 2: 0.0167}, 40, 7.0
    with caplog.at_level(logging.INFO, logger="specdec.adaptive"):
        assert chooser.choose() == 2
    assert "shared phase: drafting on, K = 2 at 48 rows (priced at 64) (1 switch since the last line)" in caplog.text


def test_a_paused_phase_turns_drafting_on_only_for_a_clear_gain():
    """The H200 at 64 clients, replayed 0.8 (call r5): drafting four tokens made 173 tokens/s a row by the rates
    against plain decoding's 164, noise apart, and the phase switched drafting on and off 12 times in a second, each
    switch on a catch-up of every row's draft. A phase decoding plainly turns drafting on only where its rates gain
    SWITCH_ON_GAIN or more; one that drafts goes on drafting while drafting wins at all."""
    verify = {k: 0.013 + 0.001 * k for k in range(5)}
    load = Load(rows=64, verify=verify, cycles={0: 0.0100, 1: 0.0190, 2: 0.0250, 3: 0.0300, 4: 0.0340}, steps=1,
                samples=dict.fromkeys(range(5), TRIAL_SAMPLES))  # each K measured: none is tried (`_trial_k`)
    chooser = phase_at(load)  # a = 3/4
    phase = chooser.phase
    assert chooser.choose() == 0 and phase.paused  # plain wins: 100 tokens/s a row against K = 1's 1.75 / 19 ms = 92
    load.cycles[1], load.steps = 0.0165, 2  # K = 1: 1.75 tokens in 16.5 ms, 106 tokens/s: 6% over plain
    assert chooser.rate(1) / chooser.rate(0) == pytest.approx(1.06, abs=0.01) and chooser.choose() == 0
    load.cycles[1], load.steps = 0.0150, 3  # 117 tokens/s: 17% over plain
    assert chooser.choose() == 1 and not phase.paused
    load.cycles[1], load.steps = 0.0165, 4  # 6% over plain again: a phase that drafts stays on
    assert chooser.choose() == 1
    phase.switched(0, 5)
    assert phase.paused and chooser._drafting_k([None, 90.0, 80.0]) == 1  # no plain figure to weigh it against


def test_a_paused_phase_turns_drafting_on_only_where_the_gain_covers_its_drafts_catch_up(caplog):
    """The H200 at 64 clients (call ap1): a paused phase turned drafting on at 34 rows as its batch drained (K = 4 at
    232 tokens/s a row against 180 plain), then held every row for 48 ms while 25 drafts caught up, with ~40 tokens a
    row left to gain it back on. A draining batch (no session joined for DRAINING_STEPS) turns drafting on only where
    the rows' time saved over the tokens they have left covers the catch-up; one that sessions still join, or where no
    catch-up has been timed, is not charged."""
    verify = {k: 0.013 + 0.001 * k for k in range(5)}
    load = Load(rows=34, verify=verify, cycles={0: 0.0100, 1: 0.0190, 2: 0.0250, 3: 0.0300, 4: 0.0340}, steps=1)
    chooser = phase_at(load)  # a = 3/4
    phase = chooser.phase
    assert chooser.choose() == 0 and phase.paused
    load.cycles[1], load.steps = 0.0150, 2  # K = 1: 1.75 tokens in 15 ms, 117 tokens/s against plain 100: 17% more
    saved = 1.0 / chooser.rate(0) - 1.0 / chooser.rate(1)  # seconds a row saves per token it commits drafting
    load.catch_up = CatchUp(tokens_left=20, tokens_behind=500, seconds=25 * saved, steps_since_join=40)
    caplog.set_level(logging.INFO, logger="specdec.adaptive")
    for step in range(2, 6):  # 20 tokens left do not gain back a catch-up worth 25 tokens' saving
        load.steps = step
        assert chooser.choose() == 0 and phase.paused
    assert caplog.text.count("drafting stays off at 34 rows: its drafts' catch-up on 500 tokens") == 1  # once a second
    assert load.catch_up._replace(steps_since_join=adaptive.DRAINING_STEPS - 1).pays(chooser.rate(0), chooser.rate(1))
    load.catch_up, load.steps = CatchUp(tokens_left=30, tokens_behind=500, seconds=25 * saved, steps_since_join=44), 6
    assert chooser.choose() == 1 and not phase.paused
    assert "drafting on, K = 1 at 34 rows (1 switch since the last line; its drafts' catch-up on 500 tokens" in caplog.text
    load.catch_up, load.steps = CatchUp(tokens_left=1, tokens_behind=500, seconds=1.0, steps_since_join=45), 7
    assert chooser.choose() == 1  # drafting already: nothing left to catch up, no charge
    phase.switched(0, 8)
    load.catch_up, load.steps = None, phase.hold.until  # once its hold allows a switch on (drafting did not last)
    assert phase.paused and chooser.choose() == 1  # no catch-up timed yet: not charged


def test_a_phase_whose_drafting_did_not_last_waits_longer_each_time_to_turn_it_on_again():
    """The H200 at 64 clients (call t2): as sessions ended and joined between rounds the rows swung between 32 and 64,
    the rates favoured drafting at 32 (K = 4 at 187 tokens/s a row against 162) and plain decoding at 64, and the phase
    switched 12 times in a second, each switch on a catch-up of every row's draft. Drafting that lasts fewer than
    `stable` steps holds the next switch on for 16 steps, then 32, ...; drafting that lasts clears the hold; a probe's
    result still says whether drafting pays."""
    verify = {k: 0.013 + 0.001 * k for k in range(5)}
    drafting = {0: 0.0100, 1: 0.0150, 2: 0.0190, 3: 0.0230, 4: 0.0270}  # K = 2: 2.31 tokens in 19 ms, 1.22x plain
    plain = {**drafting, 1: 0.0300, 2: 0.0400, 3: 0.0500, 4: 0.0600}  # drafting loses
    load = Load(rows=32, verify=verify, cycles=dict(drafting), steps=1)
    chooser = phase_at(load)
    phase = chooser.phase
    on = []
    for step in range(2, 200):  # the rates swing every 4 steps
        load.steps, load.cycles = step, dict(drafting if step // 4 % 2 else plain)
        on.append(chooser.choose() > 0)
    switches_on = sum(1 for a, b in zip(on, on[1:]) if b and not a)
    assert 3 <= switches_on <= 5, on  # 16, 32, 64 and 128 steps held: 24 chances to switch on without the hold
    assert phase.hold.wait >= 64
    assert chooser._drafting_k([100.0, 150.0], held=False) == 1  # a probe's result: drafting pays
    load.cycles = dict(drafting)
    for step in range(200, 200 + phase.hold.wait + phase.hold.stable + 2):  # drafting pays for long: it lasts
        load.steps = step
        chooser.choose()
    assert not phase.paused
    load.steps, load.cycles = load.steps + 1, dict(plain)
    assert chooser.choose() == 0 and phase.hold.wait == 0 and phase.hold.allows(load.steps)  # lasted: no hold
    load.steps, load.cycles = load.steps + 1, dict(drafting)
    assert chooser.choose() > 0


def test_a_phase_holds_drafting_off_long_enough_that_its_catch_ups_cost_little():
    """Turning drafting on catches every row's draft up on the tokens of the pause: at 64 rows on the H200 ~80-140 ms,
    a dozen or more plain steps (docs/benchmarks.md, call h4). Drafting that did not last holds the next switch on long
    enough that the dearest catch-up since it was turned on is at most PROBE_SHARE of the wait."""
    hold = adaptive.SwitchHold()
    hold.turned(True, 100)
    hold.caught_up(0.4)  # a new session's catch-up
    hold.caught_up(12.0)  # every row's, at the switch on
    hold.turned(False, 130)
    assert hold.wait == math.ceil(12.0 / adaptive.PROBE_SHARE) and not hold.allows(129 + hold.wait)
    assert hold.allows(130 + hold.wait)
    hold.turned(True, 600)  # a cheap switch on: the doubled wait stands
    hold.caught_up(0.1)
    hold.turned(False, 610)
    assert hold.wait == min(hold.max_wait, 2 * math.ceil(12.0 / adaptive.PROBE_SHARE))
    phase = SharedPhase()
    member = AdaptiveK(max_k=4, costs=StepCosts(), phase=phase)
    member.costs.observe(0, 0.006)
    member.observe(0, 0, 0.006, 0.0, catch_up_s=0.072)  # a member's cycle that waited for a 72 ms catch-up
    assert phase.hold.cost_steps == pytest.approx(12.0)


def test_a_cycle_that_drafts_more_is_never_taken_to_cost_less():
    """A CPU at 32 clients, drafts never accepted: the engine measured k = 1 cycles at 37.4 ms and plain ones at
    39.1 (noise: a k = 1 cycle does a plain cycle's work and more). Taken as is, one token in 37.4 ms beat one in
    39.1 and the batch drafted a third of its cycles for nothing; a drafting cycle now costs at least a plain one
    and a draft step, so plain decoding wins, while a draft that is accepted still drafts."""
    load = Load(rows=32, verify={0: 0.0214, 1: 0.0214}, cycles={0: 0.0391, 1: 0.0374})
    costs = StepCosts(smoothing=1.0)
    for k in range(5):
        costs.observe(k, 0.020 + 0.002 * k, 0.0148 * k, 0.0067 if k else None)
    useless = AdaptiveK(max_k=4, costs=costs, batch=load, phase=SharedPhase(), probes=ProbeSchedule(first=10**6),
                        acceptance=known(0.0))
    useless.observe(4, 0, 0.03, 0.06)
    assert useless.alpha == 0.0
    assert useless.rate(0) == pytest.approx(1 / 0.0391) and useless.choose() == 0
    assert useless.rate(1) == pytest.approx(1 / (0.0391 + 0.015), rel=1e-6)  # a plain cycle and its last draft step
    useful = AdaptiveK(max_k=4, costs=costs, batch=Load(rows=32, verify=load.verify, cycles={0: 0.0391, 1: 0.0374}),
                       phase=SharedPhase(), probes=ProbeSchedule(first=10**6))
    useful.observe(1, 1, 0.03, 0.015)
    assert useful.choose() > 0


def test_of_two_neighbouring_cycles_that_disagree_the_better_measured_one_stands():
    """The H200 at 16 clients (n2): K = 2 cycles measured at 9.8 ms over hundreds of cycles, K = 1 at 10.8 over a few
    probes. Raising K = 2 to K = 1's figure and a draft step (12.0 ms) cut its margin over plain decoding from ~40% to
    14% there; the few-sample K = 1 figure is lowered instead. Where K = 1's is the better measured, K = 2's is raised as
    before, and a useless draft's plain cycle measured more often than its k = 1 probes still wins."""
    cycles = {0: 0.0055, 1: 0.0108, 2: 0.0098, 3: 0.0174, 4: 0.0174}
    costs = StepCosts(smoothing=1.0)
    costs.observe(2, 0.007, 0.0024)  # a draft step of 1.2 ms

    def chooser(samples: dict[int, int], alpha: float = 0.84) -> AdaptiveK:
        load = Load(rows=16, verify={k: 0.006 + 0.0005 * k for k in range(5)}, cycles=cycles, samples=samples)
        return AdaptiveK(max_k=4, costs=costs, batch=load, phase=SharedPhase(), probes=ProbeSchedule(first=10**6),
                         acceptance=known(alpha))

    fresh_k2 = chooser({0: 50, 1: 3, 2: 400, 3: 5, 4: 5})
    assert fresh_k2.rate(2) == pytest.approx(expected_tokens(0.84, 2) / 0.0098, rel=1e-4)
    assert fresh_k2.rate(1) == pytest.approx(expected_tokens(0.84, 1) / (0.0098 - 0.0012), rel=1e-4)
    assert fresh_k2.rate(2) / fresh_k2.rate(0) == pytest.approx(1.43, abs=0.01) and fresh_k2.choose() == 2
    fresh_k1 = chooser({0: 50, 1: 400, 2: 3})
    assert fresh_k1.rate(2) == pytest.approx(expected_tokens(0.84, 2) / (0.0108 + 0.0012), rel=1e-4)
    assert fresh_k1.rate(2) / fresh_k1.rate(0) == pytest.approx(1.17, abs=0.01)
    useless = chooser({0: 400, 1: 3, 2: 3}, alpha=0.0)
    useless.observe(4, 0, 0.03, 0.06)
    assert useless.choose() == 0


def test_a_well_measured_longer_chain_is_not_priced_a_step_a_k_above_a_shorter_one():
    """64 rows on an H100 (call sd4): plain cycles at 6.8 ms, K = 1 at 16.2 and K = 2 at 18.9 (the host's work between
    steps outlasting their draft steps), K = 4 at 17.8 over hundreds of cycles, its draft steps in that work's shadow.
    Raised from K = 1's figure a draft step a K, K = 4 cost 22.2 ms and the batch decoded plainly where K = 4 gives ~1.2x
    its tokens/s; its own well-measured figure now stands (at least K = 2's: a longer chain is no cheaper), while a K
    measured over few cycles is still raised a step over the K below it."""
    from specdec.core.adaptive import WELL_MEASURED

    costs = StepCosts(smoothing=1.0)
    costs.observe(2, 0.009, 0.003)  # a draft step of 1.5 ms
    verify = {0: 0.0067, 1: 0.0083, 2: 0.0089, 3: 0.0109, 4: 0.0109}
    cycles = {0: 0.0068, 1: 0.0162, 2: 0.0189, 4: 0.0178}

    def chooser(samples: dict[int, int]) -> AdaptiveK:
        load = Load(rows=64, verify=verify, cycles=cycles, samples=samples, draft_step=0.0015)
        return AdaptiveK(max_k=4, costs=costs, batch=load, phase=SharedPhase(), probes=ProbeSchedule(first=10**6),
                         acceptance=known(0.75))

    many = chooser({0: 5000, 1: 300, 2: 900, 4: 2000})
    assert many.rate(4) == pytest.approx(expected_tokens(0.75, 4) / 0.0189, rel=1e-4)  # K = 2's figure, no step
    assert many.choose() == 4 and many.rate(4) / many.rate(0) == pytest.approx(1.10, abs=0.01)
    assert many.rate(2) == pytest.approx(expected_tokens(0.75, 2) / 0.0189, rel=1e-4)  # its own, over K = 1's
    few = chooser({0: 5000, 1: 300, 2: 900, 4: WELL_MEASURED - 1})
    assert few.rate(4) == pytest.approx(expected_tokens(0.75, 4) / (0.0189 + 2 * 0.0015), rel=1e-4)
    assert few.choose() == 0  # as before: K = 4 at 21.9 ms gives less than plain decoding


def test_a_drafting_phase_tries_a_k_never_measured_at_its_load_where_its_price_is_close_to_the_best(caplog):
    """16 rows on the H200 (calls lr1, vb1): K = 4's cycle measured 12.1 ms, a plain one 4.9, a draft step 1.2 ms.
    Priced from K = 4's cycle a step a K less, K = 2 (9.7 ms) and K = 3 (10.9) made 9% and 3% fewer tokens/s than
    K = 4, so neither ran, where in process at fixed K, K = 2 made 1.37x target-only against K = 4's 1.28x. A drafting
    phase tries each K priced within TRY_SHARE of the best until TRIAL_SAMPLES cycles measure it; then the measured
    rates choose. Decoding plainly, it tries none (turning drafting on costs every row's draft a catch-up)."""
    verify = {0: 0.0066, 1: 0.0061, 2: 0.0063, 3: 0.0059, 4: 0.0059}
    costs = StepCosts(smoothing=1.0)
    costs.observe(4, 0.0059, 0.0108, 0.0010)  # the parts: 2.7 ms of drafting a token, 1.0 ms a cycle
    load = Load(rows=16, verify=verify, cycles={0: 0.0049, 4: 0.0121}, samples={0: 1000, 4: 5000}, draft_step=0.0012,
                steps=1)
    chooser = AdaptiveK(max_k=4, costs=costs, batch=load, phase=SharedPhase(), probes=ProbeSchedule(first=10**6),
                        acceptance=known(0.8))
    assert chooser.rate(2) < chooser.rate(3) < chooser.rate(4) and chooser.rate(2) > TRY_SHARE * chooser.rate(4)
    assert chooser.rate(1) < TRY_SHARE * chooser.rate(4)
    with caplog.at_level(logging.INFO, logger="specdec.adaptive"):
        assert chooser.choose() == 3  # the untried K priced closest to the best
    assert "shared phase: trying K = 3 at 16 rows, never measured there" in caplog.text
    load.cycles[3], load.samples[3], load.steps = 0.0130, TRIAL_SAMPLES - 1, 2  # a first figure, dear
    assert chooser.rate(3) < TRY_SHARE * chooser.rate(4) and chooser.choose() == 3  # run on until measured, however
    # priced (re-priced each step, untried Ks took turns, and a step whose rows changed K timed none)
    truth = {1: 0.0070, 2: 0.0082, 3: 0.0098}  # what each K's cycle would measure (vb1: 8.2 ms for K = 2)
    tried = [3]
    for step in range(3, 8):
        k = tried[-1]
        load.cycles[k], load.samples[k], load.steps = truth[k], TRIAL_SAMPLES, step
        tried.append(chooser.choose())
        if tried[-1] == k:
            break
    measured = [k for k in range(1, 5) if k in load.cycles]
    best = max(measured, key=chooser.rate)
    assert tried[-1] == best == max(range(5), key=chooser.rate) and chooser.rate(best) > 1.05 * chooser.rate(4)
    assert 2 in tried  # K = 2 was run, not only priced
    paused = AdaptiveK(max_k=4, costs=costs, batch=Load(rows=16, verify=verify, cycles={0: 0.0049, 4: 0.0121},
                                                      samples={0: 1000, 4: 5000}, draft_step=0.0012, steps=1),
                       phase=SharedPhase(), probes=ProbeSchedule(first=10**6), acceptance=known(0.8))
    paused.phase.switched(0, 0)
    assert paused.phase.paused and paused.choose() == 4  # turned on at the best K: no trial yet
    paused.batch.steps = 2
    assert paused.choose() == 3  # drafting now: the untried K
    paused.batch.steps = 2 + TRIAL_STEPS
    assert paused.choose() == 2  # K = 3's trial measured nothing in its steps: it ends, and is not tried again here
    paused.batch.steps = 2 + 2 * TRIAL_STEPS
    assert paused.choose() == 4


def test_a_trial_runs_only_while_the_rows_are_in_the_bucket_it_is_priced_at(caplog):
    """Cycles are filed under the rows that lived them: a trial at 1 row priced at 47 (a dip, call tr1) measured
    nothing at 48 rows and counted K as tried there. No trial starts or goes on while the rows now fall in another
    bucket than the load it is priced at."""
    verify = {0: 0.0066, 1: 0.0061, 2: 0.0063, 3: 0.0059, 4: 0.0059}
    costs = StepCosts(smoothing=1.0)
    costs.observe(4, 0.0059, 0.0108, 0.0010)
    load = Load(rows=1, load=47, verify=verify, cycles={0: 0.0049, 4: 0.0121}, samples={0: 1000, 4: 5000},
                draft_step=0.0012, steps=1)
    chooser = AdaptiveK(max_k=4, costs=costs, batch=load, phase=SharedPhase(), probes=ProbeSchedule(first=10**6),
                        acceptance=known(0.8))
    with caplog.at_level(logging.INFO, logger="specdec.adaptive"):
        assert chooser.choose() == 4 and "trying" not in caplog.text  # a dip: no trial
        load.rows, load.steps = 45, 2
        assert chooser.choose() == 3 and "trying K = 3 at 45 rows (priced at 47)" in caplog.text  # the same bucket
        load.rows, load.steps = 20, 3
        assert chooser.choose() == 4  # the rows left the bucket: the trial ends
    assert chooser.phase.trial is None


def test_a_phase_s_members_compute_its_rates_once_per_engine_step():
    """Every member of a shared phase weighs the same mean and the same engine's costs: the first to choose after a
    step computes the rates (for every k: a cap only cuts them), the others of that step reuse them, and the next
    step computes anew."""
    load = Load(rows=64, verify={k: 0.013 + 0.001 * k for k in range(5)}, cycles={0: 0.0095, 2: 0.027}, steps=7)
    costs = StepCosts(smoothing=1.0)
    costs.observe(4, 0.017, 0.006, 0.0014)
    phase = SharedPhase()
    members = [AdaptiveK(max_k=4, costs=costs, batch=load, phase=phase, probes=ProbeSchedule(first=10**6),
                         acceptance=known(0.75)) for _ in range(3)]
    for m in members:
        m.observe(4, 3, 0.017, 0.006)
    load.asked = 0
    assert [m.choose() for m in members] == [0, 0, 0] and load.asked == 5  # k = 0..4, once for all three
    load.cycles = {0: 0.0095, 1: 0.011, 2: 0.0125, 3: 0.014, 4: 0.0155}  # drafting measured cheap at the next step
    assert members[0].choose() == 0  # the same step: its rates stand
    load.steps = 8
    assert [m.choose() for m in members] == [4, 4, 4] and load.asked == 15  # 5 more for the line logging the switch
    assert members[0].choose(limit=2) == 2 and load.asked == 15  # a row near its end: the phase's K, cut to its cap


def test_a_phase_s_members_fold_one_step_s_costs_in_once():
    """Every member of a phase verified in one step observes the same drafting phase and the same verify: on the H200
    (call w1) 14 members each folding in one slow phase of a ramp made it 96% of the shared draft cost per token (5.6
    ms where a step costs ~2), and drafting turned off at 16 rows. Once per (step, k), it moves the figure by one
    weight; the next step's figures count again, and a member alone (no engine step) observes every cycle."""
    load = Load(rows=14, verify={k: 0.005 + 0.0005 * k for k in range(5)}, steps=10)
    costs = StepCosts(smoothing=0.2)
    costs.observe(2, 0.006, 0.004)  # 2 ms a token
    phase = SharedPhase()
    members = [AdaptiveK(max_k=4, costs=costs, batch=load, phase=phase, acceptance=known(0.8)) for _ in range(14)]
    for m in members:
        m.observe(2, 2, 0.006, 0.0112)  # one slow phase: 5.6 ms a token
    assert costs.draft_step_s == pytest.approx(0.002 + 0.2 * (0.0056 - 0.002))
    members[0].observe(1, 1, 0.0055, 0.002)  # a row near its end verified fewer in the same step: its own figure
    assert costs.verify_s[1] == pytest.approx(0.0055)
    before = costs.draft_step_s
    load.steps = 11
    for m in members:
        m.observe(2, 2, 0.006, 0.004)
    assert costs.draft_step_s == pytest.approx(0.8 * before + 0.2 * 0.002)
    alone = AdaptiveK(max_k=4, costs=StepCosts(smoothing=0.2))
    alone.observe(2, 2, 0.006, 0.004)
    alone.observe(2, 2, 0.006, 0.0112)
    alone.observe(2, 2, 0.006, 0.0112)
    assert alone.costs.draft_step_s == pytest.approx(0.002 + (1 - 0.8 ** 2) * 0.0036)


def test_a_phase_s_members_take_its_k_once_per_engine_step_and_its_plain_steps_count_towards_probes():
    """At 64 rows every member's choice after every step was host time on the H200's plain steps (calls k4, l1, r1):
    the first member to choose after a step decides the phase's K for every cap, the others of that step reuse it
    cut to their caps; each plain step of the phase counts one step towards the shared probe schedule, and one
    member probes for it, so a useless draft is probed as often as one session's."""
    taken = []

    class Counted(AdaptiveK):
        def _best_k(self, cap, steps):
            taken.append((steps, cap))
            return super()._best_k(cap, steps)

    load = Load(rows=2, verify={k: 0.010 + 0.001 * k for k in range(5)}, cycles={0: 0.010, 1: 0.012}, steps=3)
    costs = StepCosts(smoothing=1.0)
    costs.observe(1, 0.011, 0.002, 0.0)
    phase, probes = SharedPhase(), ProbeSchedule(first=1)
    members = [Counted(max_k=4, costs=costs, batch=load, phase=phase, probes=probes, acceptance=known(0.0))
               for _ in range(2)]
    assert [m.choose() for m in members] == [1, 0]  # plain for the phase; its step is due a probe: one member's
    assert taken == [(3, 4)] and members[0]._probing and not members[1]._probing
    assert members[1].choose(limit=2) == 0 and taken == [(3, 4)]  # the same step, another cap: the phase's K stands
    members[0].observe(1, 0, 0.011, 0.0)  # nothing accepted, nothing spent drafting: the next probe waits two steps
    load.steps = 4
    assert [m.choose(limit=2) for m in members] == [0, 0] and taken == [(3, 4), (4, 4)]  # the next step: anew
    load.steps = 5
    assert [m.choose() for m in members] == [1, 0] and members[0]._probing  # two plain steps since: a probe


def test_a_drafting_phase_decodes_plainly_for_a_few_steps_to_measure_a_plain_cycle_again():
    """The H200 at 64 clients (calls g1-g3): a plain cycle measured at 16 ms during the ramp, where target-only's
    takes 8-9, kept the phase drafting, and no plain cycle was measured again. After `first` steps of drafting, the
    phase decodes plainly for `length` steps; when the fresh plain cycle wins it stays plain, and where drafting
    still wins, the next probe waits twice as long."""
    load = Load(rows=64, verify={k: 0.009 + 0.002 * k for k in range(5)}, cycles={0: 0.0164, 2: 0.026}, steps=0)
    costs = StepCosts(smoothing=1.0)
    costs.observe(2, 0.013, 0.008, 0.001)
    phase = SharedPhase()
    phase.plain_probes = PlainProbes(first=10, length=3)
    members = [AdaptiveK(max_k=4, costs=costs, batch=load, phase=phase, probes=ProbeSchedule(first=10**6))
               for _ in range(2)]
    for m in members:
        m.observe(2, 1, 0.013, 0.008)  # a = 1/2: k = 1 makes 1.5 tokens in 16 ms, plain 1 in 16.4
    chosen = []
    for step in range(40):
        load.steps = step
        ks = {m.choose() for m in members}
        assert len(ks) == 1  # one answer per step for the phase
        chosen.append(ks.pop())
    plain = [step for step, k in enumerate(chosen) if k == 0]
    assert plain == [10, 11, 12, 33, 34, 35]  # after 10 steps of drafting, then 20 (drafting still won)
    load.cycles[0] = 0.009  # the probe's plain cycles measured what target-only's are
    load.steps = 40
    assert [m.choose() for m in members] == [0, 0] and phase.plain_probes.since is None  # plain by choice now


def test_plain_probes_back_off_and_reset():
    probes = PlainProbes(first=4, max_every=8, length=2)
    got = [probes.plain(step, drafting=True) for step in range(30)]
    assert [s for s, p in enumerate(got) if p] == [4, 5, 14, 15, 24, 25]  # 4 steps of drafting, then 8 (the most)
    assert not probes.plain(30, drafting=False) and probes.every == 0  # plain by choice: the next wait is `first`
    assert [s for s in range(31, 40) if probes.plain(s, drafting=True)] == [35, 36]


def test_a_k_never_measured_is_priced_from_the_nearest_measured_one():
    """16 rows on the H200 (call w2's figures): a K = 2 cycle measured at 11.5 ms, 2.4 ms of drafting time per token
    (the phase's fixed work in it) where a step took 1.4, 0.9 ms a cycle beyond. Summed from those parts a K = 3 cycle
    costs 14.4 ms and loses to K = 2 at a = 0.75; one more step and 0.3 ms more of verify from K = 2's make 13.2 (w2
    measured 12.8 once it drafted K = 3), and it wins. With no drafting K measured the parts still price it."""
    verify = {k: 0.0054 + 0.0003 * k for k in range(5)}
    costs = StepCosts(smoothing=1.0)
    costs.observe(2, 0.006, 0.0048, 0.0009)  # 2.4 ms a token, 0.9 ms a cycle

    def member(cycles: dict[int, float]) -> AdaptiveK:
        load = Load(rows=16, verify=verify, cycles=cycles, samples={k: 100 for k in cycles}, draft_step=0.0014)
        return AdaptiveK(max_k=4, costs=costs, batch=load, phase=SharedPhase(), probes=ProbeSchedule(first=10**6),
                         acceptance=known(0.75))

    near = member({0: 0.0054, 2: 0.0115})
    assert near.rate(3) == pytest.approx(expected_tokens(0.75, 3) / 0.0132, rel=1e-4)
    assert near.rate(1) == pytest.approx(expected_tokens(0.75, 1) / 0.0098, rel=1e-4)  # from above: a step less
    assert near.choose() == 3
    plain_only = member({0: 0.0054})
    assert plain_only.rate(3) == pytest.approx(expected_tokens(0.75, 3) / (0.0063 + 3 * 0.0024 + 0.0009), rel=1e-4)


def test_a_load_with_only_plain_cycles_measured_prices_a_k_from_another_load_s_cycles_not_its_parts():
    """64 rows on an H100 (call sd4): the batch entered a rows bucket with only plain cycles measured in it, and K = 4,
    summed from its parts (4.7 ms of drafting time a token, the phase's fixed work in it), cost ~31 ms against the
    16-18 ms measured there a second later: drafting turned off. Where another load measured that K's cycle and a
    plain one, this load's plain cycle scaled by their ratio prices it (`batch_cycle_elsewhere`); a K measured at this
    load still comes first, and with neither the parts price it as before."""
    verify = {k: 0.0067 + 0.001 * k for k in range(5)}
    costs = StepCosts(smoothing=1.0)
    costs.observe(4, 0.0107, 0.0188, 0.0021)  # 4.7 ms a token, 2.1 ms a cycle

    def member(cycles: dict[int, float], elsewhere: dict[int, float]) -> AdaptiveK:
        load = Load(rows=58, verify=verify, cycles=cycles, samples={k: 100 for k in cycles}, draft_step=0.0015,
                    elsewhere=elsewhere)
        return AdaptiveK(max_k=4, costs=costs, batch=load, phase=SharedPhase(), probes=ProbeSchedule(first=10**6),
                         acceptance=known(0.75))

    scaled = member({0: 0.0069}, {k: 0.0069 * (1.4 + 0.25 * k) for k in range(1, 5)})  # 48 rows' ratios
    assert scaled.rate(4) == pytest.approx(expected_tokens(0.75, 4) / (0.0069 * 2.4), rel=1e-4)
    assert scaled.choose() > 0  # K = 4: 3.05 tokens in 16.6 ms beat 1 in 6.9
    parts = member({0: 0.0069}, {})
    assert parts.rate(4) == pytest.approx(expected_tokens(0.75, 4) / (0.0107 + 4 * 0.0047 + 0.0021), rel=1e-4)
    assert parts.choose() == 0  # 3.05 tokens in 31.6 ms: what turned drafting off
    here = member({0: 0.0069, 2: 0.0150}, {k: 0.001 for k in range(1, 5)})  # a drafting K measured at this load
    assert here.rate(4) == pytest.approx(expected_tokens(0.75, 4) / (0.0150 + 2 * 0.0015 + 0.002), rel=1e-4)
