"""Overlap's pre-drafting: branches for every likely outcome, drafted in one pass, exact and useful."""

import threading

import pytest

from draft_service.session import DraftSession, predraft_wanted
from specdec.bench import LocalLink
from specdec.client import Client, build_request
from specdec.config import GenerationRequest, SamplingParams
from specdec.decoder import FixedK, TargetSequence
from specdec.proposers import DraftModelFactory, ReplayFactory
from target_service.session import TargetSession
from tests.conftest import PROMPTS
from tests.servers import running_stack

pytestmark = pytest.mark.timeout(600)


def test_branches_draft_what_each_branch_drafts_alone(tiny_engine):
    factory = DraftModelFactory(tiny_engine.draft_runner, tiny_engine.target_runner.vocab_size)
    batched, alone = factory.open(SamplingParams(), 0), factory.open(SamplingParams(), 0)
    try:
        prompt = tiny_engine.encode("def read(self, size=-1):")
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


def test_replayed_runner_up_is_right_at_the_given_rate(tiny_engine):
    reference = list(range(3, 2003))
    for alpha, runner_up in ((0.0, 0.5), (1.0, 0.5), (0.0, 0.0)):
        proposer = ReplayFactory(tiny_engine.draft_runner, reference, alpha, runner_up).open(SamplingParams(), 1)
        try:
            picks = [proposer._replayed(p) for p in range(2000)]
        finally:
            proposer.close()
        right = sum(u == reference[p] for p, (_, u) in enumerate(picks)) / len(picks)
        assert right == pytest.approx(runner_up if alpha == 0.0 else 0.0, abs=0.04), (alpha, runner_up, right)


def test_predraft_only_where_it_is_exact_and_cheap(tiny_engine):
    factory = DraftModelFactory(tiny_engine.draft_runner, tiny_engine.target_runner.vocab_size)
    proposer = factory.open(SamplingParams(temperature=0.8, seed=1), 1)
    try:  # a runner-up root is no sample from q: never pre-drafted for a sampled session
        assert not DraftSession(proposer, [1, 2], 4, overlap=True, greedy=False, predraft=True).predraft
        assert DraftSession(proposer, [1, 2], 4, overlap=True, greedy=True, predraft=True).predraft
        assert not DraftSession(proposer, [1, 2], 4, overlap=False, greedy=True, predraft=True).predraft
    finally:
        proposer.close()
    cpu = tiny_engine.draft_runner.device
    assert not predraft_wanted("auto", cpu) and predraft_wanted("on", cpu) and not predraft_wanted("off", cpu)
    with pytest.raises(ValueError):
        predraft_wanted("sometimes", cpu)


def overlap_run(engine, prompt: str, predraft: bool, k: int = 4, max_new: int = 60) -> tuple[list[int], int, int]:
    """Spec-overlap in process (the bench's LocalLink): output ids, cycles that used a block drafted ahead, drafts."""
    request = GenerationRequest(prompt_ids=engine.encode(prompt), max_new_tokens=max_new, ignore_eos=True)
    sequence = TargetSequence(engine.target_runner, request, engine.eos_ids, seed=0)
    drafter = DraftModelFactory(engine.draft_runner, engine.target_runner.vocab_size).open(request.sampling, 0)
    link = LocalLink(drafter, request.prompt_ids, k, greedy=True, predraft=predraft)
    hits = drafts = 0
    try:
        for report in TargetSession(sequence, link, FixedK(k), threading.Event()).run():
            hits += report.overlap_hit
            drafts += report.cycle.k > 0
    finally:
        link.close()
        drafter.close()
        sequence.close()
    return sequence.generated, hits, drafts


def test_predraft_stays_lossless_and_hits_more_often(tiny_engine):
    plain_hits = branch_hits = 0
    for prompt in PROMPTS[:6]:
        expected = tiny_engine.decoder.generate(GenerationRequest(
            prompt_ids=tiny_engine.encode(prompt), max_new_tokens=60, ignore_eos=True)).token_ids
        plain, hits, _ = overlap_run(tiny_engine, prompt, predraft=False)
        branched, more, drafts = overlap_run(tiny_engine, prompt, predraft=True)
        assert plain == expected and branched == expected, prompt
        assert more >= hits and drafts > 0, (prompt, hits, more)  # the branches include the plain guess
        plain_hits, branch_hits = plain_hits + hits, branch_hits + more
    assert branch_hits > plain_hits, (plain_hits, branch_hits)


def test_predraft_through_the_services(tiny_engine):
    """The branches travel as one DraftProposals message; the target takes the one that came true."""
    with running_stack(orchestrator=["--k", "4", "--fixed-k"], draft=["--predraft", "on"]) as stack:
        with Client(stack.address, timeout_s=120) as client:
            for prompt in PROMPTS[:4]:
                expected = tiny_engine.decoder.generate(GenerationRequest(
                    prompt_ids=tiny_engine.encode(prompt), max_new_tokens=60, ignore_eos=True)).token_ids
                result = client.generate(build_request(prompt, max_new_tokens=60, k=4, ignore_eos=True))
                assert result.token_ids == expected, prompt
                _, hits, drafts = overlap_run(tiny_engine, prompt, predraft=True)
                spec = result.summary.speculation
                assert (spec.overlap_hits, spec.drafts) == (hits, drafts), prompt  # same blocks as in process


def test_overlap_is_dropped_only_on_a_gpu_shared_with_the_target(tiny_engine):
    from draft_service.servicer import DraftServicer, overlap_pays
    from specdec.v1 import common_pb2, draft_pb2

    assert overlap_pays(True, "", "") and overlap_pays(True, "gpu-a", "gpu-b")
    assert not overlap_pays(True, "gpu-a", "gpu-a") and not overlap_pays(False, "gpu-a", "gpu-b")
    assert tiny_engine.draft_runner.gpu == ""  # a CPU is never "shared" by this rule

    class Context:
        def add_callback(self, fn): pass

    prompt = tiny_engine.encode("def main():")
    factory = DraftModelFactory(tiny_engine.draft_runner, tiny_engine.target_runner.vocab_size)
    servicer = DraftServicer(factory, common_pb2.ServerInfo(), lambda: 1, idle_timeout_s=5, gpu="gpu-a")
    for target_gpu, ahead in (("gpu-a", False), ("gpu-b", True)):
        start = draft_pb2.ProposeStart(session_id=target_gpu, prompt_ids=prompt, k=3, overlap=True,
                                       target_gpu=target_gpu)
        verdict = draft_pb2.ProposeVerdict(start=len(prompt), token_ids=[5])
        replies = servicer._propose(iter([draft_pb2.ProposeRequest(start=start),
                                          draft_pb2.ProposeRequest(verdict=verdict)]), Context())
        sent = [r.proposal for r in replies]
        assert len(sent) == (2 if ahead else 1) and [p.ahead for p in sent] == [False, True][:len(sent)], target_gpu


def test_adaptive_k_is_charged_the_wait_not_the_hidden_drafting(tiny_engine):
    """With overlap a block drafted during the last verify costs the target nothing: K's cost model gets
    the time the target waited, not the draft's own time."""
    from target_service.draft_link import Picked

    class Link:
        failed = False

        def next_proposal(self, usable):
            return Picked(None, wait_s=0.001, draft_s=0.5, ahead=True)

        def send_verdict(self, cycle, next_k=0):
            pass

    class Recorder(FixedK):
        def observe(self, k, accepted, verify_s, draft_s):
            self.seen.append(draft_s)

    request = GenerationRequest(prompt_ids=tiny_engine.encode("x = ["), max_new_tokens=4, ignore_eos=True)
    sequence = TargetSequence(tiny_engine.target_runner, request, tiny_engine.eos_ids)
    chooser = Recorder(2)
    chooser.seen = []
    try:
        list(TargetSession(sequence, Link(), chooser, threading.Event()).run())
    finally:
        sequence.close()
    assert 0.001 in chooser.seen and 0.5 not in chooser.seen  # (0.0 where no block was wanted: the last token)
