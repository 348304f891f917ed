"""Overlap's pre-drafting: branches for every likely outcome, drafted in one pass, exact and useful."""

import queue
import threading

import pytest
import torch

from draft_service.service import END, DraftService, overlap_pays
from specdec.core.adaptive import FixedK
from specdec.core.config import GenerationRequest, SamplingParams
from specdec.core.drafting import (
    RETRY_BRANCHES_EVERY,
    DraftSession,
    DraftStart,
    HitRate,
    Predraft,
    PredraftCosts,
    PredraftPolicy,
    Verdict,
    predraft_policy,
)
from specdec.core.placement import Placement
from specdec.core.proposal import Feedback
from specdec.core.sequence import TargetSequence
from specdec.core.target_loop import LocalLink, Picked, TargetLoop
from specdec.proposers.draft_model import DraftModelFactory
from specdec.proposers.replay import ReplayBook, ReplayFactory, ReplayRates
from tests.conftest import PROMPTS

NEVER, WHEN_PAYS, ALWAYS = PredraftPolicy.NEVER, PredraftPolicy.WHEN_PAYS, PredraftPolicy.ALWAYS

pytestmark = pytest.mark.timeout(600)


def test_branches_draft_what_each_branch_drafts_alone(tiny_pair_fp32):
    tiny_pair = tiny_pair_fp32
    factory = DraftModelFactory(tiny_pair.draft_runner, tiny_pair.target_runner.vocab_size)
    batched, alone = factory.open(SamplingParams(), 0), factory.open(SamplingParams(), 0)
    try:
        prompt = tiny_pair.encode("def read(self, size=-1):")
        block = batched.propose(prompt, 5)  # 4 claimed + the bonus guess, as overlap drafts them
        assert len(block.runner_ups) == 5 and all(u != t for u, t in zip(block.runner_ups, block.token_ids))
        chain = prompt + block.token_ids
        roots = [(len(prompt) + i, u) for i, u in enumerate(block.runner_ups)] + [(len(chain) - 1, chain[-1])]
        branches = batched.propose_branches(chain, roots, 5)
        assert len(branches) == len(roots)
        for (j, token), got in zip(roots, branches):
            want = alone.propose(chain[:j] + [token], 5)
            assert (got.start, got.token_ids, got.runner_ups) == (want.start, want.token_ids, want.runner_ups)
    finally:
        batched.close()
        alone.close()


def test_replayed_runner_up_is_right_at_the_given_rate(tiny_pair):
    reference = list(range(3, 2003))
    for alpha, runner_up in ((0.0, 0.5), (1.0, 0.5), (0.0, 0.0)):
        book = ReplayBook([(reference[:1], reference[1:])])
        proposer = ReplayFactory(tiny_pair.draft_runner, book, ReplayRates(alpha, runner_up)).open(SamplingParams(), 1)
        try:
            proposer.prefill(reference[:1])
            picks = [proposer._replayed(p) for p in range(2000)]
        finally:
            proposer.close()
        right = sum(u == reference[p] for p, (_, u) in enumerate(picks)) / len(picks)
        assert right == pytest.approx(runner_up if alpha == 0.0 else 0.0, abs=0.04), (alpha, runner_up, right)


def test_predraft_only_where_it_is_exact_and_cheap(tiny_pair):
    factory = DraftModelFactory(tiny_pair.draft_runner, tiny_pair.target_runner.vocab_size)
    proposer = factory.open(SamplingParams(temperature=0.8, seed=1), 1)
    try:  # a runner-up root is no sample from q: never pre-drafted for a sampled session
        assert not DraftSession(proposer, [1, 2], 4, overlap=True, greedy=False, predraft=ALWAYS).predraft
        assert DraftSession(proposer, [1, 2], 4, overlap=True, greedy=True, predraft=ALWAYS).predraft
        assert not DraftSession(proposer, [1, 2], 4, overlap=False, greedy=True, predraft=ALWAYS).predraft
        assert not DraftSession(proposer, [1, 2], 4, overlap=True, greedy=True, predraft=NEVER).predraft
    finally:
        proposer.close()
    cpu = tiny_pair.draft_runner.device
    assert [predraft_policy(c, cpu) for c in Predraft] == [NEVER, ALWAYS, NEVER]
    assert predraft_policy(Predraft.AUTO, torch.device("cuda:1")) == WHEN_PAYS


def test_auto_predrafts_when_branches_make_the_target_wait_less():
    costs = PredraftCosts()
    assert costs.branches_pay(6)  # nothing timed yet: draft branches, which times them
    # 32B-like: a 26.8 ms verify, 3.3 ms steps; of 25 recent blocks branches hit 19, the plain guess 12
    costs.branch_hits, costs.plain_hits = HitRate(19.0, 25.0), HitRate(12.0, 25.0)
    costs.step_s, costs.verify_s, costs.branch_s = 0.0033, 0.0268, 0.0300
    assert costs.branches_pay(6)  # a pass a little past the verify still pays: misses cost 6 steps
    costs.branch_s = 0.060
    assert not costs.branches_pay(6)
    costs.plain_blocks = RETRY_BRANCHES_EVERY  # re-timed now and then
    assert costs.branches_pay(6)

    small = PredraftCosts(step_s=0.0035, verify_s=0.0096, branch_s=0.0225)  # 7B-like, acceptance ~1
    for _ in range(30):
        small.branch_hits.observe(True)
        small.plain_hits.observe(True)
    assert not small.branches_pay(4)  # both always hit: only the pass lengths differ


def test_a_session_learns_the_costs_from_verdicts_and_its_own_drafting(tiny_pair):
    factory = DraftModelFactory(tiny_pair.draft_runner, tiny_pair.target_runner.vocab_size)
    proposer = factory.open(SamplingParams(), 0)
    try:
        prompt = tiny_pair.encode("def main():")
        session = DraftSession(proposer, prompt, 4, overlap=True, predraft=WHEN_PAYS)
        session.start()
        sent = [*session.on_verdict(Verdict(len(prompt), [5], feedback=Feedback(None, 0, 0, verify_s=0.030)))]
        assert session.costs.verify_s == 0.030 and session.costs.step_s > 0  # the fresh block was timed
        assert len(sent) == 2 and len(sent[1]) > 1 and session.costs.branch_s > 0  # then branches, timed
        fresh = sent[0][0]
        [*session.on_verdict(Verdict(len(prompt) + 1, fresh.token_ids + [fresh.chain[-1]]))]  # all accepted + the guess
        assert session.costs.branch_hits == HitRate(1.0, 1.0) and session.costs.plain_hits == HitRate(1.0, 1.0)
    finally:
        proposer.close()


def overlap_run(engine, prompt: str, predraft: PredraftPolicy, k: int = 4, max_new: int = 60
                ) -> tuple[list[int], int, int]:
    """Spec-overlap in process (LocalLink): output ids, cycles that used a block drafted ahead, drafts."""
    request = GenerationRequest(prompt_ids=engine.encode(prompt), max_new_tokens=max_new, ignore_eos=True)
    sequence = TargetSequence(engine.target_runner, request, engine.eos_ids, seed=0)
    drafter = DraftModelFactory(engine.draft_runner, engine.target_runner.vocab_size).open(request.sampling, 0)
    link = LocalLink(drafter, request.prompt_ids, k, greedy=True, predraft=predraft)
    hits = drafts = 0
    try:
        for cycle in TargetLoop(sequence, link, FixedK(k), threading.Event()).run():
            hits += cycle.overlap_hit
            drafts += cycle.k > 0
    finally:
        link.close()
        drafter.close()
        sequence.close()
    return sequence.generated, hits, drafts


def test_predraft_stays_lossless_and_hits_more_often(tiny_pair):
    plain_hits = branch_hits = 0
    for prompt in PROMPTS[:6]:
        expected = tiny_pair.decoder.generate(GenerationRequest(
            prompt_ids=tiny_pair.encode(prompt), max_new_tokens=60, ignore_eos=True)).token_ids
        plain, hits, _ = overlap_run(tiny_pair, prompt, predraft=NEVER)
        branched, more, drafts = overlap_run(tiny_pair, prompt, predraft=ALWAYS)
        assert plain == expected and branched == expected, prompt
        assert more >= hits and drafts > 0, (prompt, hits, more)  # the branches include the plain guess
        plain_hits, branch_hits = plain_hits + hits, branch_hits + more
    assert branch_hits > plain_hits, (plain_hits, branch_hits)


def test_overlap_is_dropped_where_the_draft_shares_the_targets_compute(tiny_pair):
    """The co-location rule: no drafting ahead on the target's GPU or on the target's CPU cores."""
    gpu_a, gpu_b = Placement("host", gpu_uuid="gpu-a"), Placement("host", gpu_uuid="gpu-b")
    cpus_01, cpus_1, cpus_23 = (Placement("host", cpus=frozenset(c)) for c in ({0, 1}, {1}, {2, 3}))
    other_host = Placement("other", cpus=frozenset({0, 1}))
    assert not overlap_pays(True, gpu_a, gpu_a) and overlap_pays(True, gpu_a, gpu_b)
    assert not overlap_pays(True, cpus_01, cpus_1) and overlap_pays(True, cpus_01, cpus_23)
    assert overlap_pays(True, cpus_01, other_host) and overlap_pays(True, gpu_a, cpus_01)
    assert overlap_pays(True, None, cpus_01) and overlap_pays(True, cpus_01, None)  # lookup, or an old target
    assert not overlap_pays(False, gpu_a, gpu_b)
    here = tiny_pair.draft_runner.placement  # this process: the CPUs it may run on
    assert here.cpus and not here.gpu_uuid and here.shares_compute_with(tiny_pair.target_runner.placement)

    prompt = tiny_pair.encode("def main():")
    factory = DraftModelFactory(tiny_pair.draft_runner, tiny_pair.target_runner.vocab_size)
    service = DraftService(factory, idle_timeout_s=5, placement=here)
    for name, target, ahead in (("same-cpus", here, False), ("elsewhere", other_host, True)):
        inbox: queue.Queue = queue.Queue()
        for msg in (DraftStart(name, prompt, SamplingParams(), 0, 3, True, target), Verdict(len(prompt), [5]), END):
            inbox.put(msg)
        sent = [p for batch in service.serve(inbox, lambda fn: None) for p in batch]
        assert len(sent) == (2 if ahead else 1) and [p.ahead for p in sent] == [False, True][:len(sent)], name


def test_adaptive_k_is_charged_the_wait_not_the_hidden_drafting(tiny_pair):
    """With overlap a block drafted during the last verify costs the target nothing: K's cost model gets
    the time the target waited, not the draft's own time."""
    class Link:
        failed, failure = False, None

        def next_proposal(self, usable):
            return Picked(None, wait_s=0.001, draft_s=0.5, catch_up_s=0.0, ahead=True)

        def send_verdict(self, cycle, next_k=0):
            pass

    class Recorder(FixedK):
        def observe(self, k, accepted, verify_s, draft_s, round_trip_s=None, catch_up_s=0.0):
            self.seen.append(draft_s + (round_trip_s or 0.0))

    request = GenerationRequest(prompt_ids=tiny_pair.encode("x = ["), max_new_tokens=4, ignore_eos=True)
    sequence = TargetSequence(tiny_pair.target_runner, request, tiny_pair.eos_ids)
    chooser = Recorder(2)
    chooser.seen = []
    try:
        list(TargetLoop(sequence, Link(), chooser, threading.Event()).run())
    finally:
        sequence.close()
    assert 0.001 in chooser.seen and 0.5 not in chooser.seen  # (0.0 where no block was wanted: the last token)


def test_a_paused_draft_keeps_its_cache_caught_up_only_where_its_forwards_are_free(tiny_pair):
    factory = DraftModelFactory(tiny_pair.draft_runner, tiny_pair.target_runner.vocab_size)
    prompt = tiny_pair.encode("def main():")
    for keep_up in (True, False):
        proposer = factory.open(SamplingParams(), 0)
        try:
            session = DraftSession(proposer, prompt, 3, overlap=True, predraft=ALWAYS if keep_up else NEVER)
            session.start()
            assert [*session.on_verdict(Verdict(len(prompt), [5], next_k=-1))] == []  # paused: nothing drafted
            assert [*session.on_verdict(Verdict(len(prompt) + 1, [6, 7]))] == []
            cached = proposer.slot.tokens
            assert (cached == prompt + [5, 6, 7]) if keep_up else (cached == prompt), keep_up
            resumed = [*session.on_verdict(Verdict(len(prompt) + 3, [8], next_k=3))]  # the probe: drafting resumes
            assert len(resumed) >= 1 and resumed[0][0].start == len(prompt) + 4
        finally:
            proposer.close()


def test_a_draft_started_paused_prefills_nothing_and_drafts_the_same_block_once_resumed(tiny_pair):
    """Under load the target starts most drafts paused: a session that never drafts must cost the draft
    no forward, and one that does draft must offer what a draft that prefilled at once would have."""
    factory = DraftModelFactory(tiny_pair.draft_runner, tiny_pair.target_runner.vocab_size)
    prompt = tiny_pair.encode("def main():")
    paused, eager = factory.open(SamplingParams(), 0), factory.open(SamplingParams(), 0)
    try:
        late = DraftSession(paused, prompt, 3, overlap=False, paused=True)
        early = DraftSession(eager, prompt, 3, overlap=False)
        late.start()
        early.start()
        assert paused.slot.tokens == [] and eager.slot.tokens == prompt
        assert [*late.on_verdict(Verdict(len(prompt), [5]))] == []  # still paused: nothing drafted or cached
        assert paused.slot.tokens == []
        [[resumed]] = [*late.on_verdict(Verdict(len(prompt) + 1, [6], next_k=3))]
        assert [*early.on_verdict(Verdict(len(prompt), [5], next_k=-1))] == []  # paused after its prefill
        [[want]] = [*early.on_verdict(Verdict(len(prompt) + 1, [6], next_k=3))]
        assert paused.slot.tokens[:len(prompt) + 2] == prompt + [5, 6]  # caught up when resumed
        assert (resumed.start, resumed.token_ids) == (want.start, want.token_ids) and len(want.token_ids) == 3
    finally:
        paused.close()
        eager.close()
