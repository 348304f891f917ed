"""The target's own draft: the target's engine drafts for all its sessions between its steps (core.own_draft).
Outputs equal target-only decoding (greedy) and the same request drafted by a separate draft (seeded sampling);
the drafting is batched; a failing draft leaves the sessions decoding alone, output unchanged."""

import collections
import dataclasses
import logging
import re
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from specdec.core import batching, own_draft
from specdec.core.adaptive import FixedK
from specdec.core.batching import BatchedRunner
from specdec.core.config import FinishReason, GenerationRequest, SamplingParams
from specdec.core.drafting import DraftStart
from specdec.core.errors import InvalidArgument
from specdec.core.own_draft import OwnDraftLink
from specdec.core.runner import Chain, Grouped, draw_sampled
from specdec.core.sequence import TargetSequence
from specdec.core.stats import Cycle
from specdec.core.target_loop import InlineLink, TargetLoop
from specdec.proposers import own_drafts
from specdec.proposers.base import propose_together
from specdec.proposers.draft_model import GREEDY, DraftModelFactory, pick_greedy, top_three
from specdec.proposers.replay import ReplayBook, ReplayFactory, ReplayProposer, ReplayRates
from specdec.tools import engine_log
from tests.conftest import PROMPTS
from tests.unit.core.test_batching import concurrently

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def engine(tiny_pair_fp32):
    """A target engine whose drafter drafts with the tiny draft on a runner without an engine loop, launching each
    verify from the drafted tokens before reading them, as on a GPU."""
    pair = tiny_pair_fp32
    target = BatchedRunner(pair.target.model, max_len=512, max_sessions=16, gather_s=0.005, prefill_chunk=32,
                           early_verify=True)  # as on a GPU
    draft = BatchedRunner(pair.draft.model, launch=None, max_len=512, max_sessions=16, prefill_chunk=32)
    target.drafter = own_drafts(DraftModelFactory(draft, target.vocab_size))
    yield target, draft
    target.stop()


def own_decode(pair, engine, prompt_ids, max_new, k, sampling=SamplingParams(), seed=0, drafts=None):
    """One request through the target's loop on `engine`, drafting with its own draft: (ids, cycles)."""
    target, _ = engine
    drafts = drafts or target.drafter
    request = GenerationRequest(prompt_ids=prompt_ids, max_new_tokens=max_new, ignore_eos=True, sampling=sampling)
    sequence = TargetSequence(target, request, pair.eos_ids, seed=seed)
    link = drafts.open("", DraftStart("s", prompt_ids, sampling, seed, k, overlap=False), None)
    try:
        cycles = [c for c in TargetLoop(sequence, link, FixedK(k), threading.Event()).run()]
        return sequence.generated, cycles
    finally:
        link.close()
        sequence.close()


def separate_decode(pair, prompt_ids, max_new, k, sampling, seed):
    """The request alone on the single-sequence runners, drafting each block when the target asks for it, as
    the in-process decoder does (InlineLink: block for block what the own draft drafts, q included): (ids, cycles)."""
    request = GenerationRequest(prompt_ids=prompt_ids, max_new_tokens=max_new, ignore_eos=True, sampling=sampling)
    sequence = TargetSequence(pair.target_runner, request, pair.eos_ids, seed=seed)
    proposer = DraftModelFactory(pair.draft_runner, pair.target_runner.vocab_size).open(sampling, seed)
    link = InlineLink(proposer, lambda: sequence.committed, k)
    try:
        cycles = list(TargetLoop(sequence, link, FixedK(k), threading.Event()).run())
        return sequence.generated, cycles
    finally:
        link.close()
        sequence.close()


def equal_to_target_only(pair, engine, cases, counts):
    """Decode `cases` (prompt ids, new tokens, K) at once on `engine`, each output asserted equal to target-only
    greedy decoding alone; returns how much `counts()` (launched, kept) grew meanwhile."""
    expected = [pair.decoder.generate(GenerationRequest(prompt_ids=ids, max_new_tokens=n, ignore_eos=True)).token_ids
                for ids, n, _ in cases]
    before = counts()
    got = concurrently([lambda c=c: own_decode(pair, engine, *c) for c in cases])
    assert [out for out, _ in got] == expected
    after = counts()
    return after[0] - before[0], after[1] - before[1]


def staggered(pair, engine, cases, delay_s):
    """Decode `cases` (prompt ids, new tokens, K) on `engine`, each begun `delay_s` after the one before it: sessions
    joining others mid-flight. Returns [(ids, cycles)] in the cases' order."""
    def late(case, delay):
        time.sleep(delay)
        return own_decode(pair, engine, *case)
    return concurrently([lambda c=c, i=i: late(c, delay_s * i) for i, c in enumerate(cases)])


def drafts_as_alone(together, alone):
    """Each request's output, and every block's (K, accepted), equal the same request's decoded alone."""
    for (out, cycles), (want, want_cycles) in zip(together, alone):
        assert out == want
        assert [(c.k, c.accepted) for c in cycles] == [(c.k, c.accepted) for c in want_cycles]


def test_greedy_outputs_equal_target_only_and_drafting_is_batched(tiny_pair_fp32, engine):
    """Mixed prompt lengths (one longer than a prefill chunk), output lengths and K (1..8), sessions joining and
    leaving: each output equals target-only greedy decoding alone; the draft steps held several rows; each verify
    was launched from the drafted tokens before the host read them, and its plan kept it; the engine's log fields on
    that launch's timing hold."""
    pair, (target, draft) = tiny_pair_fp32, engine
    long_prompt = pair.encode("\n".join(PROMPTS[:6]))
    assert len(long_prompt) > target.prefill_chunk
    cases = [(pair.encode(p), 6 + 3 * i, 1 + i % 8) for i, p in enumerate(PROMPTS[:11])]
    cases.append((long_prompt, 12, 4))
    expected = [pair.decoder.generate(GenerationRequest(prompt_ids=ids, max_new_tokens=n, ignore_eos=True)).token_ids
                for ids, n, _ in cases]
    drafted_before, phases, early = target.stats.drafting_s, [], (target.stats.early, target.stats.early_kept)
    early_steps, early_after = target.stats.early_steps, target.stats.early_after_s
    waited, device = target.stats.early_waited_s, target.stats.early_device_s
    before, cpu = target.stats.early_before_s, target.stats.early_before_cpu_s
    target.on_drafting = phases.append  # the target service's metrics (specdec_draft_phase_seconds)
    try:
        got = concurrently([lambda c=c: own_decode(pair, engine, *c) for c in cases])
    finally:
        target.on_drafting = lambda seconds: None
    for (ids, n, k), want, (out, cycles) in zip(cases, expected, got):
        assert out == want, f"k={k}, {len(ids)} prompt tokens, {n} new"
        assert sum(c.k for c in cycles) > 0, "it never drafted"
    assert max(rows for rows in draft.stats.rows_seen) > 4, f"draft steps' rows: {draft.stats.rows_seen}"
    assert phases and sum(phases) == pytest.approx(target.stats.drafting_s - drafted_before)
    launched, kept = target.stats.early - early[0], target.stats.early_kept - early[1]
    assert launched > 0 and kept == launched, "each verify launched from the drafts on the device was its plan's"
    steps, after = target.stats.early_steps - early_steps, target.stats.early_after_s - early_after
    assert 0 < steps <= len(phases)  # such a step is launched inside its phase, at most one a phase: the engine's log
    assert 0 < after < sum(phases)  # says how far into its phase, on average
    waited, device = target.stats.early_waited_s - waited, target.stats.early_device_s - device
    assert 0 < waited <= after and device > 0  # on a CPU the device waits for the host's launch, then runs the forward
    before, cpu = target.stats.early_before_s - before, target.stats.early_before_cpu_s - cpu
    assert 0 < cpu and 0 < before  # and how long after the step before was read the phase began, and the engine
    #                                thread's CPU time of it (not compared: a busy CI host may take a core from it)
    assert draft.stats.ahead_kept > 0  # and chains whose first draft step was launched from the verify's argmax
    assert target.free_slots == target.max_sessions and draft.free_slots == draft.max_sessions


def test_draft_steps_launched_from_the_verify_s_argmax_draft_what_the_host_would(tiny_pair_fp32, engine, monkeypatch):
    """Before the host reads a verify, the draft runner launches each row's next chain's first step from the verify's
    argmax on the device (its accepted drafts and bonus token worked out there), and its later steps, as many as the
    row drafted, each from the token the one before drafted; a chain that begins as the host then expects takes them
    as its first steps. A wrong token there would not change the output (the verify catches it) but the drafts: each
    block drafts and accepts what the same request's does alone, drafting block by block; chains of 3 and 4 drafts
    took their third and fourth steps from ahead."""
    pair, (_, draft) = tiny_pair_fp32, engine
    cases = [(pair.encode(p), 20, k) for p, k in zip(PROMPTS[3:7], (2, 3, 4, 2))]
    alone = [separate_decode(pair, ids, n, k, SamplingParams(), seed=0) for ids, n, k in cases]
    launched, kept, taken = draft.stats.ahead, draft.stats.ahead_kept, collections.Counter()
    timed = dataclasses.replace(draft.stats)
    taken_later = draft._taken_later

    def counting(ahead, chains):
        steps = taken_later(ahead, chains)
        taken.update({s: len(groups[0][0]) for s, groups in enumerate(steps, start=2)})
        return steps
    monkeypatch.setattr(draft, "_taken_later", counting)
    drafts_as_alone(staggered(pair, engine, cases, 0.0), alone)
    launched, kept = draft.stats.ahead - launched, draft.stats.ahead_kept - kept
    assert 0 < kept <= launched, (kept, launched)
    assert taken[2] > 0 and taken[3] > 0 and taken[4] > 0, taken  # steps 2, 3 and 4 of chains taken from ahead
    # each launch's steps are timed (the engine's log: what they cost against the one-token steps the bound prices):
    # a first step at least two tokens wide, then the later ones
    s = draft.stats
    launches, steps = s.ahead_launches - timed.ahead_launches, s.ahead_steps - timed.ahead_steps
    assert launches > 0 and s.ahead_device_s > timed.ahead_device_s and launches < steps <= 4 * launches, (launches, steps)
    assert s.ahead_width - timed.ahead_width >= 2 * launches
    assert 0 <= s.ahead_joined - timed.ahead_joined <= launches and s.ahead_joined_s - timed.ahead_joined_s >= 0
    assert 0 < s.ahead_idled - timed.ahead_idled <= launches and s.ahead_idle_s > timed.ahead_idle_s  # after a verify


def test_a_session_joining_drafting_ones_drafts_its_first_block_from_its_catch_up(tiny_pair_fp32, engine, monkeypatch):
    """A new session's draft catches up on its prompt and reads its first draft step from the same forward, so the
    others' chains take their first step launched ahead instead of running it again with it: every block still drafts
    and accepts what the same request's does alone, and the phases with a joining session took both kinds of
    first step."""
    pair, (_, draft) = tiny_pair_fp32, engine
    cases = [(pair.encode(p), 24, 2) for p in PROMPTS[8:12]]
    alone = [separate_decode(pair, ids, n, k, SamplingParams(), seed=0) for ids, n, k in cases]
    mixed = []
    taken_ahead = draft._taken_ahead

    def counting(requests):
        values = taken_ahead(requests)
        if values is not None and len({r.chain.first is None for r in requests}) == 2:
            mixed.append(len(requests))
        return values

    monkeypatch.setattr(draft, "_taken_ahead", counting)

    drafts_as_alone(staggered(pair, engine, cases, 0.05), alone)
    assert mixed, "no session joined a phase whose other chains took their step launched ahead"


def test_a_joining_session_s_draft_catches_up_in_the_draft_step_launched_from_its_prompt_step(tiny_pair_fp32, engine,
                                                                                                 monkeypatch):
    """A session whose prompt step is verified with others' drafted blocks: the draft step launched ahead from that
    step's argmax also forwards its prompt and first token into its draft's slot, and its first drafting phase takes
    that as its catch-up, with no forward of its own. Every session catches up once, by a forward of its own (the
    first, whose prompt step verified no drafts, and one whose prompt is wider than a graph step) or in such a step,
    whose launch holds its first chain's later steps too (no forwards of their own after the other rows'); every
    block drafts and accepts what the same request's does alone."""
    pair, (_, draft) = tiny_pair_fp32, engine
    long_prompt = pair.encode("\n".join(PROMPTS[:3]))
    assert len(long_prompt) >= draft.graph_max_tokens
    cases = [(pair.encode(p), 24, 2) for p in PROMPTS[12:16]] + [(long_prompt, 16, 3)]
    cases += [(pair.encode(p), 12, 3) for p in PROMPTS[16:19]]
    alone = [separate_decode(pair, ids, n, k, SamplingParams(), seed=0) for ids, n, k in cases]
    caught_up, catch_up_reads = [], draft.catch_up_reads

    def counted(calls):
        caught_up.extend(len(ids) for _, ids, _ in calls)
        return catch_up_reads(calls)

    monkeypatch.setattr(draft, "catch_up_reads", counted)
    later, taken_later = [], BatchedRunner._taken_later

    def spied(self, ahead, chains):
        steps = taken_later(self, ahead, chains)
        later.extend(r for step in steps for members, _, _ in step for r in members if r.chain.first is not None)
        return steps
    monkeypatch.setattr(BatchedRunner, "_taken_later", spied)
    joins, kept, timed = draft.stats.joins, draft.stats.joins_kept, draft.stats.ahead_joined

    drafts_as_alone(staggered(pair, engine, cases, 0.04), alone)
    joins, kept = draft.stats.joins - joins, draft.stats.joins_kept - kept
    assert kept >= 1 and kept <= joins, (kept, joins)
    assert draft.stats.ahead_joined > timed  # such steps are timed apart (the engine's log: what a join costs them)
    assert len(caught_up) + kept == len(cases), (caught_up, kept)
    assert len(long_prompt) + 1 in caught_up  # too wide to join: it caught up itself
    assert later  # joined chains took their later steps from the launch


def test_new_prompts_fed_over_steps_at_the_verifies_width_draft_and_decode_as_alone(tiny_pair_fp32, engine,
                                                                                      monkeypatch):
    """New prompts wider than the verifies they join are fed over steps at the verifies' width (`_split_joins`, where
    the cost table makes widening dear, as at many rows on a GPU), their drafts catching up as usual: every request's
    output and blocks (K, accepted) are those it gets alone."""
    pair, (target, _) = tiny_pair_fp32, engine
    monkeypatch.setattr(target.costs, "cost", lambda rows, tokens: 1e-3 * rows * tokens)
    cases = [(pair.encode(PROMPTS[i]), n, k) for i, n, k in ((0, 96, 4), (2, 96, 2), (5, 16, 4), (18, 16, 4),
                                                              (3, 16, 2), (21, 12, 4), (1, 12, 2))]
    assert sum(len(ids) > k + 1 for ids, _, k in cases) >= 5  # prompts wider than a verify
    alone = [separate_decode(pair, ids, n, k, SamplingParams(), seed=0) for ids, n, k in cases]
    split = target.stats.joins_split
    drafts_as_alone(staggered(pair, engine, cases, 0.04), alone)
    assert target.stats.joins_split > split, target.stats.joins_split - split
    assert target.free_slots == target.max_sessions


def test_a_join_whose_proposer_cannot_begin_is_left_to_its_drafting_phase():
    """A new session's draft whose proposer refuses its prompt (a replayed draft with no reference for it) launches no
    catch-up with the other rows' draft steps (where its error would stop the engine's loop): its own drafting phase
    meets the error and fails its link alone."""
    class Refusing:
        group = GREEDY
        slot = SimpleNamespace(index=3)

        def before_propose(self, committed):
            raise InvalidArgument("prompt_ids", "no replay reference for this prompt")

    drafter = SimpleNamespace(lock=threading.Lock(), runner=None)
    assert OwnDraftLink(drafter, Refusing(), [1, 2, 3], k=4).join_ahead() is None
    good = Refusing()
    good.before_propose = lambda committed: None
    join = OwnDraftLink(drafter, good, [1, 2, 3], k=4).join_ahead()
    assert (join.slot, join.ids, join.steps) == (3, [1, 2, 3], 4)


def test_a_join_its_first_phase_cannot_take_catches_up_itself(tiny_pair_fp32, engine, monkeypatch):
    """Where the host does not expect what a join launched ahead forwarded (here: it is never told), the session's
    draft catches up itself over what that step wrote: the output is target-only's."""
    pair, (target, draft) = tiny_pair_fp32, engine
    expect = BatchedRunner.expect_ahead

    def drafts_only(self, slot, start, drafts, accepted, token):
        if drafts:
            expect(self, slot, start, drafts, accepted, token)
    monkeypatch.setattr(BatchedRunner, "expect_ahead", drafts_only)
    cases = [(pair.encode(p), 14 + 2 * i, 2 + i % 3) for i, p in enumerate(PROMPTS[4:10])]
    joins, kept = draft.stats.joins, draft.stats.joins_kept

    expected = [pair.decoder.generate(GenerationRequest(prompt_ids=ids, max_new_tokens=n, ignore_eos=True)).token_ids
                for ids, n, _ in cases]
    assert [out for out, _ in staggered(pair, engine, cases, 0.04)] == expected
    assert draft.stats.joins > joins and draft.stats.joins_kept == kept
    assert target.free_slots == target.max_sessions and draft.free_slots == draft.max_sessions


def test_a_draft_step_launched_ahead_that_a_chain_does_not_begin_with_is_dropped(tiny_pair_fp32, engine, monkeypatch):
    """Where a drafting phase's chains do not all begin as the host expected of the step launched ahead (here: after
    every other launch, no expectation is told), the chains run their first step themselves over what that step
    wrote: the output is target-only's, and the other phases still take theirs."""
    pair, (target, draft) = tiny_pair_fp32, engine
    launch, expect, launches = BatchedRunner.launch_ahead, BatchedRunner.expect_ahead, []

    def counted(self, *args, **kwargs):
        launches.append(args)
        launch(self, *args, **kwargs)

    def every_other(self, *args):
        if len(launches) % 2:
            expect(self, *args)
    monkeypatch.setattr(BatchedRunner, "launch_ahead", counted)
    monkeypatch.setattr(BatchedRunner, "expect_ahead", every_other)
    cases = [(pair.encode(p), 14 + 2 * i, 2 + i % 3) for i, p in enumerate(PROMPTS[8:12])]
    launched, kept = equal_to_target_only(pair, engine, cases, lambda: (draft.stats.ahead, draft.stats.ahead_kept))
    assert 0 < kept < launched, (kept, launched)
    assert target.free_slots == target.max_sessions and draft.free_slots == draft.max_sessions


@pytest.mark.parametrize("sampling", [SamplingParams(temperature=0.8, top_p=0.95),
                                      SamplingParams(temperature=1.3, top_p=0.99)], ids=["narrow", "wide"])
def test_seeded_sampling_equals_the_same_request_with_a_separate_draft(tiny_pair_fp32, engine, sampling):
    """Same K, same seed: the own draft proposes what a draft on its own runner proposes (the draft's random
    numbers are counter-based), so the sampled output is the same, batched or alone. Each verify is launched from
    the tokens the device drew before the host reads them, and kept where they are the block the plan verifies:
    every one where every nucleus was found among the first candidates ("narrow"); where most were not ("wide"),
    the draft's steps drawn again on the host differ from the device's, and those verifies are dropped."""
    pair, (target, _) = tiny_pair_fp32, engine
    cases = [(pair.encode(p), 16, k) for p, k in zip(PROMPTS[12:17], (1, 2, 3, 4, 6))]
    alone = [separate_decode(pair, ids, n, k, sampling, seed=7)[0] for ids, n, k in cases]
    early, kept = target.stats.early, target.stats.early_kept
    together = concurrently([lambda c=c: own_decode(pair, engine, *c, sampling=sampling, seed=7)[0] for c in cases])
    assert together == alone
    early, kept = target.stats.early - early, target.stats.early_kept - kept
    assert 0 < kept and (kept == early if sampling.top_p == 0.95 else kept < early), (kept, early)


def test_greedy_and_sampled_sessions_drafting_together_each_get_what_they_get_alone(tiny_pair_fp32, engine):
    """Greedy sessions and sampled ones (two settings, one whose nucleus is mostly wider than the device's first
    candidates) in the same drafting phases: one chained pass drafts both kinds (greedy tokens read, sampled ones
    drawn on the device), their verifies are launched early together, the greedy rows' next first draft steps are
    launched from the verify's argmax; each request's output and blocks (K, accepted) are those it gets alone."""
    pair, (target, draft) = tiny_pair_fp32, engine
    samplings = [SamplingParams(), SamplingParams(temperature=0.8, top_p=0.95), SamplingParams(),
                 SamplingParams(temperature=2.0, top_p=0.99), SamplingParams(), SamplingParams(temperature=1.3, top_p=0.99)]
    cases = [(pair.encode(p), 14 + 2 * i, 2 + i % 3) for i, p in enumerate(PROMPTS[8:14])]
    alone = [separate_decode(pair, ids, n, k, s, seed=11 + i) for i, ((ids, n, k), s) in enumerate(zip(cases, samplings))]
    early, kept, ahead = target.stats.early, target.stats.early_kept, draft.stats.ahead_kept
    together = concurrently([lambda c=c, s=s, i=i: own_decode(pair, engine, *c, sampling=s, seed=11 + i)
                             for i, (c, s) in enumerate(zip(cases, samplings))])
    drafts_as_alone(together, alone)
    assert 0 < target.stats.early_kept - kept < target.stats.early - early  # the wide rows' drawn again: dropped
    assert draft.stats.ahead_kept > ahead  # the greedy rows' next first draft steps, amid sampled rows
    assert target.free_slots == target.max_sessions and draft.free_slots == draft.max_sessions


def test_a_verify_launched_early_that_its_plan_does_not_ask_for_is_dropped(tiny_pair_fp32, engine, monkeypatch):
    """The engine launches each drafting row's verify from its block's tokens on the device before reading them,
    as the row's `early_verify` predicts it; where the plan then asks for another forward (here: the prediction
    verifies one draft fewer than the plan, every other time) the launched one is dropped, its writes past the
    row's length overwritten, and the row verifies in the next step: the output is target-only's."""
    pair, (target, _) = tiny_pair_fp32, engine
    real, calls = TargetLoop.early_verify, []

    def short_every_other(self, drafted):
        verify = real(self, drafted)
        calls.append(verify)
        return verify if verify is None or len(calls) % 2 or verify.drafts < 2 else verify._replace(drafts=verify.drafts - 1)
    monkeypatch.setattr(TargetLoop, "early_verify", short_every_other)
    cases = [(pair.encode(p), 12 + 2 * i, 2 + i % 3) for i, p in enumerate(PROMPTS[14:20])]
    launched, kept = equal_to_target_only(pair, engine, cases, lambda: (target.stats.early, target.stats.early_kept))
    assert 0 < kept < launched, (kept, launched)
    assert target.free_slots == target.max_sessions


class FailingRunner(BatchedRunner):
    """A draft runner whose drafting fails from its `fail_at`-th batch of chains on (the device lost)."""

    fail_at = 3

    def decode_chains(self, chains, launched=None):
        self.fail_at -= 1
        if self.fail_at <= 0:
            raise RuntimeError("draft device lost")
        return super().decode_chains(chains, launched)


def test_a_failing_draft_leaves_the_sessions_decoding_alone(tiny_pair_fp32, engine):
    """The draft fails mid-request: every session goes on alone, no token lost, the output unchanged."""
    pair, (target, _) = tiny_pair_fp32, engine
    failing = FailingRunner(pair.draft.model, launch=None, max_len=512, max_sessions=4)
    drafts = own_drafts(DraftModelFactory(failing, target.vocab_size))
    target.drafter, old = drafts, target.drafter
    try:
        cases = [(pair.encode(p), 30, 3) for p in PROMPTS[17:21]]
        expected = [pair.decoder.generate(GenerationRequest(prompt_ids=ids, max_new_tokens=n,
                                                            ignore_eos=True)).token_ids for ids, n, _ in cases]
        got = concurrently([lambda c=c: own_decode(pair, engine, *c, drafts=drafts) for c in cases])
        for want, (out, cycles) in zip(expected, got):
            assert out == want
            assert cycles[-1].draft_failed and cycles[-1].k == 0
        assert sum(c.k for _, cycles in got for c in cycles) > 0  # they drafted before it failed
        assert failing.free_slots == failing.max_sessions
    finally:
        target.drafter = old


@pytest.mark.parametrize("bucketed", [False, True])
@pytest.mark.parametrize("sessions, chosen, groups", [(6, (1, 4, 5), [(0, 1, 2)]), (16, (0, 1, 15), [(0, 1), (2,)])],
                         ids=["near", "far-apart"])
def test_catch_ups_share_forwards_by_slot_and_fill_their_caches(tiny_pair_fp32, bucketed, sessions, chosen, groups):
    """Long catch-ups of several slots (different lengths) go in left-padded forwards, one per chunk of each group
    (`bucketed`, as on a GPU: rounded up to a bucket of rows and tokens): slots near each other share one (slots 2
    and 3 sit in the range with nothing to do), but a forward computes every row of its span, so slots far apart
    (0, 1 and 15 of 16) get forwards of their own. Each slot's cache then holds exactly its sequence: its next
    tokens equal the single-sequence runner's."""
    pair = tiny_pair_fp32
    runner = BatchedRunner(pair.draft.model, launch=None, max_len=512, max_sessions=sessions, prefill_chunk=48)
    runner.bucket_chunks = bucketed
    slots = [runner.open() for _ in range(sessions)]
    sequences = [pair.encode("\n".join(PROMPTS[i:i + 3 + 2 * i])) for i in range(3)]
    assert min(map(len, sequences)) > runner.graph_max_tokens  # prompt chunks, not steps
    rows, eager = [], runner._eager
    runner._eager = lambda ids, *args, **kwargs: rows.append(ids.shape[0]) or eager(ids, *args, **kwargs)
    got = runner.greedy_ids_together([(slots[i], ids, 1) for i, ids in zip(chosen, sequences)])
    assert len(rows) == sum(-(-max(len(sequences[i]) for i in g) // 48) for g in groups)  # chunks of each group
    assert max(rows) <= max(4, 2 * max(map(len, groups)))  # never a 16-row span for three
    reference = pair.draft_runner
    for i, ids, top in zip(chosen, sequences, got):
        ref = reference.open()
        try:
            assert top == reference.greedy_ids(ref, ids, keep=1)
            more = ids + top
            assert runner.greedy_ids(slots[i], more, keep=1) == reference.greedy_ids(ref, more, keep=1)
            assert slots[i].tokens == more
        finally:
            reference.close(ref)


def test_a_link_closed_after_asking_is_not_drafted_for(tiny_pair_fp32, engine):
    """A session cancelled between asking for a block and the drafting phase: its proposer (and draft slot) is
    given back, and the phase drafts only for the others."""
    pair, (target, draft) = tiny_pair_fp32, engine
    drafts = own_drafts(DraftModelFactory(draft, target.vocab_size))
    prompt = pair.encode(PROMPTS[0])
    start = DraftStart("s", prompt, SamplingParams(), 0, 2, overlap=False)
    gone, kept = drafts.open("", start, None), drafts.open("", start, None)
    try:
        drafts.ask(gone)
        drafts.ask(kept)
        gone.close()
        assert drafts.draft()
        assert kept.poll(lambda p: len(p.token_ids), 0.0).proposal.k == 2
        assert gone.poll(lambda p: len(p.token_ids), 0.0) is None  # nothing was drafted for it
    finally:
        kept.close()
    drafts.ask(gone)
    assert not drafts.draft()  # a closed link's ask is ignored
    assert draft.free_slots == draft.max_sessions


def test_a_slow_drafting_phase_says_what_it_spent_its_time_on(tiny_pair_fp32, engine, caplog, monkeypatch):
    """A long phase holds every session's step (on the H200, 125-450 ms now and then): the log splits it into
    the draft's catching up (here on the whole prompt, its first block: the tokens it forwarded) and its drafting."""
    pair, (target, draft) = tiny_pair_fp32, engine
    drafts = own_drafts(DraftModelFactory(draft, target.vocab_size))
    prompt = pair.encode(PROMPTS[1])
    link = drafts.open("", DraftStart("s", prompt, SamplingParams(), 0, 2, overlap=False), None)
    monkeypatch.setattr(own_draft, "SLOW_PHASE_S", 0.0)
    try:
        drafts.ask(link)
        with caplog.at_level(logging.INFO, logger="specdec.own_draft"):
            assert drafts.draft()
        found = re.search(r"1 sessions drafting up to 2 tokens, catching up ([0-9.]+) ms on ([0-9]+) tokens \(1 sessions, "
                          r"at most ([0-9]+) tokens a session\), drafting ([0-9.]+) ms", caplog.text)
        assert found and float(found.group(1)) > 0 and float(found.group(4)) > 0, caplog.text
        assert int(found.group(2)) == int(found.group(3)) == len(prompt) - 1, caplog.text
    finally:
        link.close()


def test_the_drafter_reports_its_phases_and_those_that_caught_up_first(tiny_pair_fp32, engine):
    """The engine's log says how many phases a draft's catching up held (a new prompt's, the first block here; the
    second, drafted again from the same sequence, has it cached) and, since the last report, nothing twice."""
    pair, (target, draft) = tiny_pair_fp32, engine
    drafts = own_drafts(DraftModelFactory(draft, target.vocab_size))
    prompt = pair.encode(PROMPTS[1])
    link = drafts.open("", DraftStart("s", prompt, SamplingParams(), 0, 2, overlap=False), None)
    try:
        drafts.ask(link)
        assert drafts.draft()
        drafts.ask(link)
        assert drafts.draft()
        found = re.fullmatch(r"2 drafting phases, 1.0 sessions each, 1 catching up first \(([0-9]+) ms of ([0-9]+), "
                             r"([0-9]+) tokens\)", drafts.report())
        assert found and int(found.group(1)) <= int(found.group(2)), drafts.report()
        assert int(found.group(3)) == len(prompt) - 1  # the first block caught the draft up on its prompt
        assert drafts.report().startswith("0 drafting phases, 0.0 sessions each, 0 catching up first")
    finally:
        link.close()


def test_the_engine_prices_turning_drafting_on_by_what_its_rows_drafts_lack(tiny_pair_fp32, engine):
    """What a paused phase weighs a switch on against (BatchedRunner.batch_catch_up): every driven row's draft
    catching up on the committed tokens it lacks, priced by the drafter's timed catch-ups, and the tokens the rows
    have left to gain it back on. A paused start's draft has cached nothing: it lacks all but the last committed
    token, one more with each plain cycle."""
    pair, (target, draft) = tiny_pair_fp32, engine
    old, drafts = target.drafter, own_drafts(DraftModelFactory(draft, target.vocab_size))
    prompt = pair.encode(PROMPTS[1])
    request = GenerationRequest(prompt_ids=prompt, max_new_tokens=12, ignore_eos=True)
    sequence = TargetSequence(target, request, pair.eos_ids, seed=0)
    seen = []

    class Watching(FixedK):
        def choose(self, limit=None):
            seen.append((sequence.remaining, len(sequence.committed), target.batch_catch_up()))
            return super().choose(limit)

    timed = drafts.open("", DraftStart("t", prompt, SamplingParams(), 0, 2, overlap=False), None)
    paused = drafts.open("", DraftStart("p", prompt, SamplingParams(), 0, 2, overlap=False, paused=True), None)
    try:
        target.drafter = drafts
        assert target.batch_catch_up() is None  # no catch-up timed yet: a switch on is not charged
        drafts.ask(timed)
        assert drafts.draft() and drafts.stats.catch_up_tokens == len(prompt) - 1
        timed.close()
        per_token = drafts.catch_up_cost(1)
        cycles = list(TargetLoop(sequence, paused, Watching(0), threading.Event()).run())
        assert len(cycles) == 12 and all(c.k == 0 for c in cycles)
        assert seen[0][2] is None  # chosen before the session is one of the engine's rows: nothing to weigh
        for left, committed, catch_up in seen[1:]:  # after each cycle, on the engine's thread
            assert catch_up.tokens_behind == committed - 1 and catch_up.tokens_left == left
            assert catch_up.seconds == pytest.approx(per_token * (committed - 1))
        assert [committed for _, committed, _ in seen[1:]] == list(range(len(prompt) + 1, len(prompt) + 13))
        joined = [catch_up.steps_since_join for _, _, catch_up in seen[1:]]  # one step a cycle since it joined
        assert joined == list(range(12)), joined
    finally:
        target.drafter = old
        timed.close()
        paused.close()
        sequence.close()


def test_a_catch_up_is_priced_as_fixed_work_plus_its_tokens_once_sizes_vary():
    """Call sd4: a phase caught 59 sessions up on 7406 tokens in 52.5 ms, where one session's prompt of 20-130 tokens
    took 2-6 ms; priced per token by those, a catch-up on 7747 tokens came to 537 ms. Fitted as fixed work plus a
    price per token, the catch-ups seen price a large one near what it took; catch-ups of one size, or a fit without a
    slope or a fixed part, are priced per token as before."""
    price = own_draft.CatchUpPrice()
    assert price.cost(100) is None  # none timed
    price.observe(40, 0.004)
    assert price.cost(100) == pytest.approx(0.010) and price.cost(0) == 0.0  # one size: per token
    for tokens, seconds in ((30, 0.0035), (130, 0.006), (60, 0.0042), (7406, 0.0525), (25, 0.0033), (90, 0.005)):
        price.observe(tokens, seconds)
    assert 0.025 < price.cost(4848) < 0.045  # ~3.4 ms + ~6.6 us a token, not 4848 x the small ones' ~60 us
    assert price.cost(20) == pytest.approx(0.0035, abs=0.001)  # a small one still costs its fixed work
    flat = own_draft.CatchUpPrice()
    for tokens, seconds in ((20, 0.006), (100, 0.004), (60, 0.005)):  # larger ones no dearer: no slope to trust
        flat.observe(tokens, seconds)
    assert flat.cost(1000) == pytest.approx(1000 * flat.seconds / flat.tokens)


def test_only_a_new_session_s_catch_up_counts_as_joining(tiny_pair_fp32, engine):
    """A new session's first block catches its draft up on its prompt (joining: prompt work, charged to no running
    session's cycle); its next block, drafted from the cached sequence, catches nothing up; a session whose committed
    tokens ran ahead of its draft catches up as a resume (paid by drafting), and so does a paused start's first block."""
    pair, (target, draft) = tiny_pair_fp32, engine
    drafts = own_drafts(DraftModelFactory(draft, target.vocab_size))
    prompt = pair.encode(PROMPTS[2])
    link = drafts.open("", DraftStart("s", prompt, SamplingParams(), 0, 2, overlap=False), None)
    paused = drafts.open("", DraftStart("p", prompt, SamplingParams(), 0, 2, overlap=False, paused=True), None)
    try:
        drafts.ask(link)
        assert drafts.catch_up_cost(10) is None  # nothing timed yet: a switch on is not charged
        assert link.behind(link.committed) == len(prompt) - 1
        assert drafts.draft()
        joined = drafts.joining_s()
        assert joined == drafts.stats.catch_up_s > 0
        assert drafts.stats.catch_up_tokens == len(prompt) - 1  # the prompt but its last token (the chain's first)
        assert drafts.catch_up_cost(10) == pytest.approx(10 * joined / (len(prompt) - 1))
        assert link.behind(link.committed) == 0
        drafts.ask(link)
        assert drafts.draft() and drafts.stats.catch_up_s == joined  # cached: nothing to catch up
        assert drafts.stats.catch_up_tokens == len(prompt) - 1
        pause = pair.encode(" x = 1\n y = 2\n z = 3")
        link.committed.extend(pause)
        assert link.behind(link.committed) == len(pause) - 1  # what the engine weighs a switch on by
        drafts.ask(link)
        assert drafts.draft() and drafts.stats.catch_up_s > joined and drafts.joining_s() == joined
        # the tokens of the pause but the last (the chain's first step feeds it); the drafts its cache held past the
        # prompt (its last block's, which no verdict confirmed) are rolled back, not counted
        resumed = drafts.stats.catch_up_tokens - (len(prompt) - 1)
        assert resumed == len(pause) - 1, resumed
        resumed_s = drafts.stats.catch_up_s - joined  # both catch-ups priced by their sizes and times, the older decayed
        price = own_draft.CatchUpPrice()
        price.observe(len(prompt) - 1, joined)
        price.observe(resumed, resumed_s)
        assert drafts.catch_up_price == price and drafts.catch_up_cost(10) == price.cost(10)
        caught_up, tokens = drafts.stats.catch_up_s, drafts.stats.catch_up_tokens
        drafts.ask(paused)
        assert drafts.draft() and drafts.stats.catch_up_s > caught_up and drafts.joining_s() == joined
        assert drafts.stats.catch_up_tokens - tokens == len(prompt) - 1
        link.close()
        assert link.behind(link.committed + pause) == 0  # closed: its slot is no longer its own
    finally:
        link.close()
        paused.close()


def test_the_draft_runner_times_its_chains_steps_and_the_engine_reads_a_step_at_its_load(tiny_pair_fp32, engine):
    """A chained draft's steps are timed into its runner's table of step costs (each its forward's time: on a GPU
    between events on the device), which the drafter reads a draft step from at a load and the target engine at its
    own: what one more draft token costs a phase's cycle at least (AdaptiveK)."""
    pair, (target, draft) = tiny_pair_fp32, engine
    drafts = own_drafts(DraftModelFactory(draft, target.vocab_size))
    links = [drafts.open("", DraftStart(f"s{i}", pair.encode(p), SamplingParams(), 0, 3, overlap=False), None)
             for i, p in enumerate(PROMPTS[5:7])]
    try:
        draft.costs.cells.clear()
        for link in links:
            drafts.ask(link)
        assert drafts.draft()
        step = drafts.step_cost(2)
        assert step is not None and 0 < step < 1.0 and draft.costs.cells  # two rows' steps, timed
        assert drafts.step_cost(2) == draft.costs.cost(2, 1)
        assert target.batch_draft_step_cost() == target.drafter.step_cost(target.batch_rows())
    finally:
        for link in links:
            link.close()


def test_a_new_session_s_catch_up_is_charged_to_no_running_session_s_cycle(tiny_pair_fp32, monkeypatch):
    """The engine times a drafting row's cycle with its drafting phase in it, less what new sessions' prompts took:
    their prompt steps and their drafts' catch-ups (`StepDrafter.joining_s`). A phase made 60 ms slower shows in the
    measured drafted cycles, unless the drafter says those 60 ms were a new session's catch-up."""
    pair = tiny_pair_fp32
    measured = {}
    for joining in (False, True):
        target = BatchedRunner(pair.target.model, max_len=512, max_sessions=4, gather_s=0.005, prefill_chunk=32)
        draft = BatchedRunner(pair.draft.model, launch=None, max_len=512, max_sessions=4, prefill_chunk=32)
        drafts = target.drafter = own_drafts(DraftModelFactory(draft, target.vocab_size))
        phase = drafts.draft

        def slow(early=None, _phase=phase, _drafts=drafts, _joining=joining):
            drafted = _phase(early)
            if drafted:
                time.sleep(0.06)
                _drafts.stats.joining_s += 0.06 if _joining else 0.0
            return drafted

        monkeypatch.setattr(drafts, "draft", slow)
        try:
            cases = [(pair.encode(p), 20, 2) for p in PROMPTS[3:5]]
            concurrently([lambda c=c, e=(target, draft): own_decode(pair, e, *c) for c in cases])
            measured[joining] = target.costs.cycle(2, 3)
        finally:
            target.stop()
    assert measured[False] > 0.06 > measured[True], measured


def test_the_engine_logs_its_drafting_phases_with_its_steps(tiny_pair_fp32, engine, caplog, monkeypatch):
    """Next to its steps, the engine's log line says what its drafting phases did and how many rows of draft steps
    launched from a verify's argmax their chains took (one not taken is run again: a cost on every row's path), what
    those steps cost on the device (against the one-token steps the bound prices)."""
    pair = tiny_pair_fp32
    monkeypatch.setattr(batching, "LOG_EVERY_S", 0.0)
    cases = [(pair.encode(p), 16, 2) for p in PROMPTS[7:10]]
    arrivals = engine[0].stats.arrivals
    with caplog.at_level(logging.INFO, logger="specdec.batching"):
        equal_to_target_only(pair, engine, cases, lambda: (0, 0))
    lines = re.findall(r"engine's drafting: (\d+) drafting phases, [0-9.]+ sessions each, (\d+) catching up first "
                       r"\(\d+ ms of \d+, \d+ tokens\); draft steps launched ahead for (\d+) rows, taken by (\d+), "
                       r"([0-9.]+) ms on the device a launch \(([0-9.]+) steps, the first ([0-9.]+) tokens wide, (\d+) "
                       r"launches timed; \d+ with a new session's catch-up, [0-9.]+ ms each; ([0-9.]+) ms from the "
                       r"verify's end to them\); new sessions' catch-ups "
                       r"launched with them \d+, taken \d+", caplog.text)
    assert lines, caplog.text
    phases, caught_up, launched, taken = (sum(int(line[i]) for line in lines) for i in range(4))
    assert phases > 0 and 0 < caught_up <= phases  # each new prompt's draft caught up in its first phase
    assert 0 < taken <= launched
    step_lines = re.findall(r"engine: (\d+) steps in .* steps by tokens per row ([^;]*); t\(rows x tokens\)",
                            caplog.text)
    assert step_lines and all(int(n) == sum(int(c.split(": ")[1]) for c in widths.split(", "))
                              for n, widths in step_lines), step_lines
    timed = [(float(ms), float(steps), float(width), float(gap)) for *_, ms, steps, width, n, gap in lines if int(n) > 0]
    assert timed and all(ms > 0 and steps >= 1 and width >= 2 for ms, steps, width, _ in timed), lines
    assert any(gap > 0 for *_, gap in timed), lines  # on a CPU: the host's time from launching the verify to them
    # where a step's missing rows are: a step's rows among its driven sessions, those among the open slots, and every
    # new session timed to its first step
    # (read as specdec.tools.engine_log reads a device call's log: its patterns follow the line as written)
    windows = [w.values for w in engine_log.windows(caplog.text)]
    assert windows and all(w["rows"] <= w["driven"] <= w["open"] and w["wait_ms"] >= 0 for w in windows), windows
    assert sum(w["arrivals"] for w in windows) >= len(cases), windows  # the first line may hold an earlier test's
    assert any("ahead_ms" in w and "after_read_ms" in w for w in windows), windows
    assert engine[0].stats.arrivals - arrivals == len(cases)


def test_a_session_asks_with_its_verdict_unless_done_or_paused(tiny_pair_fp32, engine):
    """Each verdict asks for the next block (the engine drafts it before planning the session once), except
    the last one, and none while adaptive K pauses the draft: a session started paused asks only once a
    verdict resumes it, and one whose verdict pauses it stops asking."""
    pair, (target, draft) = tiny_pair_fp32, engine
    drafts = own_drafts(DraftModelFactory(draft, target.vocab_size))
    prompt = pair.encode(PROMPTS[0])
    paused = drafts.open("", DraftStart("s", prompt, SamplingParams(), 0, 2, overlap=False, paused=True), None)
    try:
        n = len(prompt)
        paused.send_verdict(Cycle(new_tokens=[5], start=n))  # plain cycles' tokens, held and sent together
        assert not drafts.draft()
        paused.send_verdict(Cycle(new_tokens=[6], start=n + 1), next_k=3)  # resumed: the next block, 3 tokens
        assert drafts.draft()
        picked = paused.poll(lambda p: len(p.token_ids), 0.0)
        assert picked.proposal.token_ids != [] and picked.catch_up_s > 0  # the prompt and the held tokens first
        paused.send_verdict(Cycle(new_tokens=[7], start=n + 2, k=3), next_k=-1)  # paused again
        assert not drafts.draft()
        paused.send_verdict(Cycle(new_tokens=[8], start=n + 3), next_k=2)
        assert drafts.draft()
        second = paused.poll(lambda p: len(p.token_ids) if p.start == n + 4 else -1, 0.0)
        assert second.catch_up_s == 0.0  # two tokens behind: fed with the first draft step, no catch-up
        paused.send_verdict(Cycle(new_tokens=[9], start=n + 4, k=2, finish_reason=FinishReason.LENGTH))
        assert not drafts.draft()  # the session is done: nothing more to draft
    finally:
        paused.close()
    assert draft.free_slots == draft.max_sessions


def test_a_chained_draft_reads_its_picks_once_and_drafts_what_it_drafts_alone(tiny_pair_fp32, engine):
    """Greedy chains of different lengths (K = 1..5) and different tokens missing from the cache, drafted together
    on a runner without an engine loop: every step runs before any pick is read (one host read, no trip through
    the host between steps), the steps are shared, and each chain's picks and cache equal the single-sequence
    runner's."""
    pair, (_, draft) = tiny_pair_fp32, engine
    events = []

    def read(logits):
        events.append("read")
        return top_three(logits)

    def pick(values, position):
        events.append("pick")
        return pick_greedy(values, position)

    group = Grouped(read, pick)
    sequences = [pair.encode(p) for p in PROMPTS[:5]]
    slots = [draft.open() for _ in sequences]
    try:
        for slot, ids, cached in zip(slots, sequences, (0, 1, 2, 0, 1)):
            draft.greedy_ids(slot, ids[:len(ids) - 1 - cached], keep=1)  # 1..3 tokens left for the first step
        steps_before = draft.stats.steps
        chains = [Chain(slot, ids, k, None, group) for slot, ids, k in zip(slots, sequences, range(1, 6))]
        got = draft.decode_chains(chains)
        assert draft.stats.steps - steps_before == 5  # the longest chain's steps, shared by all
        assert events == ["read"] * 5 + ["pick"] * 15
        reference = pair.draft_runner
        for slot, ids, k, picks in zip(slots, sequences, range(1, 6), got):
            ref = reference.open()
            try:
                want = reference.decode_chain(ref, ids, k, lambda logits, at: [pick_greedy(v, p) for v, p in
                                                                               zip(top_three(logits).tolist(), at)])
                assert picks == want
                assert slot.tokens == ref.tokens == ids + [p.token for p in want[:-1]]
                more = slot.tokens + [want[-1].token]
                assert draft.greedy_ids(slot, more, keep=1) == reference.greedy_ids(ref, more, keep=1)
            finally:
                reference.close(ref)
    finally:
        for slot in slots:
            draft.close(slot)


def test_sampled_drafts_chained_on_the_device_propose_what_each_proposes_alone(tiny_pair_fp32, engine, monkeypatch):
    """Sampled drafts of six settings over the engine's draft runner, chained: each step's tokens drawn on the device
    and fed to the next step with no host read between steps (`_draw_chained`), read once at the end; where a row's
    top-p nucleus was not found among the first candidates, that step is drawn again on the host and, where it
    differs, the chain goes on from there a step at a time. Two settings spread over most of the vocabulary: one
    found at some steps, one at none. Each proposes the tokens, with the same q, that it proposes alone on its own
    runner; the narrow chains take one pass; fails if the flags are ignored."""
    pair, (_, draft) = tiny_pair_fp32, engine
    settings = [SamplingParams(temperature=0.8, top_p=0.95), SamplingParams(temperature=1.3),
                SamplingParams(temperature=0.8, top_p=0.95), SamplingParams(temperature=0.7, top_k=4),
                SamplingParams(temperature=1.3, top_p=0.99), SamplingParams(temperature=2.0, top_p=0.99)]
    sequences, ks = [pair.encode(p) for p in PROMPTS[2:8]], (4, 2, 3, 4, 5, 4)
    vocab = pair.target_runner.vocab_size
    redrawn, passes = [], []
    monkeypatch.setattr(batching, "draw_sampled",
                        lambda logits, *a: redrawn.append(len(logits)) or draw_sampled(logits, *a))
    chain_pass = BatchedRunner._chain_pass
    monkeypatch.setattr(BatchedRunner, "_chain_pass",
                        lambda self, requests, *a: passes.append(len(requests)) or chain_pass(self, requests, *a))
    proposers = [DraftModelFactory(draft, vocab).open(s, 30 + i) for i, s in enumerate(settings)]
    alone = [DraftModelFactory(pair.draft_runner, vocab).open(s, 30 + i) for i, s in enumerate(settings)]
    try:
        got = propose_together(proposers, sequences, ks)
        want = [p.propose(ids, k) for p, ids, k in zip(alone, sequences, ks)]
        for g, w, k in zip(got, want, ks):
            assert g.token_ids == w.token_ids and len(g.token_ids) == k
            for i in range(len(w.token_ids)):
                torch.testing.assert_close(g.probs.row(i), w.probs.row(i), rtol=1e-5, atol=1e-7)
        assert passes[0] == len(settings) and 1 < len(passes) <= ks[-1] and max(passes[1:]) <= 2, passes
        assert 0 < sum(redrawn) < sum(ks[-2:]) + len(passes), redrawn  # the wide rows' steps, in few host draws
    finally:
        for p in proposers + alone:
            p.close()


def test_a_replayed_draft_s_steps_launched_ahead_feed_the_tokens_it_replays(tiny_pair_fp32, monkeypatch):
    """As a benchmark's replayed own draft runs: a chain's later steps launched ahead feed the token the draft replays
    at each position (known before its logits, picked on the device by how many drafts the verify accepted), not its
    argmax. The output is target-only's, chains took later steps from ahead, and when each session ends its draft's
    cache holds what its slot says: the keys and values a fresh runner's forward of the same tokens writes. (The
    slot's entries are copied as it closes and compared after the engine stops: a forward on the draft runner from
    the closing session's thread would race the engine's steps launched ahead on it, which in serving only the
    engine's thread runs.)"""
    pair = tiny_pair_fp32
    cases = [(pair.encode(p), 20, k) for p, k in zip(PROMPTS[4:7], (2, 3, 4))]
    outputs = [pair.decoder.generate(GenerationRequest(prompt_ids=ids, max_new_tokens=n, ignore_eos=True)).token_ids
               for ids, n, _ in cases]
    target = BatchedRunner(pair.target.model, max_len=512, max_sessions=4, gather_s=0.005, prefill_chunk=32,
                           early_verify=True)
    draft = BatchedRunner(pair.draft.model, launch=None, max_len=512, max_sessions=4, prefill_chunk=32)
    target.drafter = own_drafts(ReplayFactory(draft, ReplayBook([(ids, out) for (ids, _, _), out in zip(cases, outputs)]),
                                              ReplayRates(alpha=0.6)))
    taken, closed, close, taken_later = collections.Counter(), [], ReplayProposer.close, draft._taken_later

    def counting(ahead, chains):
        steps = taken_later(ahead, chains)
        taken.update({s: len(groups[0][0]) for s, groups in enumerate(steps, start=2)})
        return steps

    def checked(self):
        n, index = len(self.slot.tokens), self.slot.index
        closed.append((list(self.slot.tokens), draft.cache.keys[:, index, :, :n].clone(),
                       draft.cache.values[:, index, :, :n].clone()))  # [layers, kv heads, n, head dim] each
        close(self)
    monkeypatch.setattr(draft, "_taken_later", counting)
    monkeypatch.setattr(ReplayProposer, "close", checked)
    try:
        got = concurrently([lambda c=c: own_decode(pair, (target, draft), *c)[0] for c in cases])
    finally:
        target.stop()
    assert got == outputs
    assert taken[2] > 0 and taken[3] > 0, taken
    assert len(closed) == len(cases)
    fresh = BatchedRunner(pair.draft.model, launch=None, max_len=512, max_sessions=1, prefill_chunk=32)
    for tokens, keys, values in closed:
        slot = fresh.open()
        try:
            fresh.extend(slot, tokens)
            torch.testing.assert_close(keys, fresh.cache.keys[:, slot.index, :, :len(tokens)], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(values, fresh.cache.values[:, slot.index, :, :len(tokens)], rtol=1e-4, atol=1e-4)
        finally:
            fresh.close(slot)


def test_a_chained_replayed_draft_feeds_the_tokens_it_replays(tiny_pair_fp32, engine):
    """A replayed draft's tokens are known before its logits: chained, it feeds those (not the draft's argmax), so
    its cache holds what its slot says, as a fresh forward of the same tokens."""
    pair, (_, draft) = tiny_pair_fp32, engine
    prompt = pair.encode(PROMPTS[3])
    reference = prompt + [(7 * i + 3) % draft.vocab_size for i in range(12)]
    factory = ReplayFactory(draft, ReplayBook([(prompt, reference[len(prompt):])]), ReplayRates(alpha=0.5))
    proposer = factory.open(SamplingParams(), seed=1)
    try:
        proposer.prefill(prompt)
        proposal = proposer.propose(prompt, 6)
        assert proposal.token_ids == [proposer._token(len(prompt) + i) for i in range(6)]
        assert proposer.slot.tokens == prompt + proposal.token_ids[:-1]
        more = proposer.slot.tokens + [proposal.token_ids[-1]]
        ref = pair.draft_runner.open()
        try:
            assert draft.greedy_ids(proposer.slot, more, keep=1) == pair.draft_runner.greedy_ids(ref, more, keep=1)
        finally:
            pair.draft_runner.close(ref)
    finally:
        proposer.close()


def test_a_chained_draft_tells_its_caller_its_tokens_before_reading_them(tiny_pair_fp32, engine):
    """decode_chains' `launched`: once every step is launched, before the host reads any, the caller gets each
    chain's tokens on the device (the draft model's argmax, or the tokens a replayed draft knows): its picks."""
    pair, (target, draft) = tiny_pair_fp32, engine
    prompts = [pair.encode(p) for p in PROMPTS[4:7]]
    book = ReplayBook([(prompts[2], [(5 * i + 2) % draft.vocab_size for i in range(10)])])
    proposers = [DraftModelFactory(draft, target.vocab_size).open(SamplingParams(), seed=0) for _ in range(2)]
    proposers.append(ReplayFactory(draft, book, ReplayRates(alpha=0.5)).open(SamplingParams(), seed=3))
    told = {}

    def launched(drafted):
        told.update({i: (d.tokens[d.row, :d.steps].tolist(), len(d.picks)) for i, d in drafted.items()})
    try:
        proposals = propose_together(proposers, prompts, [3, 5, 4], launched)
        assert sorted(told) == [0, 1, 2]
        for i, proposal in enumerate(proposals):
            tokens, picked_when_told = told[i]
            assert picked_when_told == 0 and tokens == proposal.token_ids
        assert proposals[2].token_ids == [proposers[2]._token(len(prompts[2]) + i) for i in range(4)]  # the replayed
    finally:
        for proposer in proposers:
            proposer.close()

