"""protobuf <-> core conversions: what goes out comes back, units included."""

from dataclasses import replace

import pytest

from specdec.core.config import (
    ChatMessage,
    FinishReason,
    GenerationRequest,
    ProposerKind,
    SamplingParams,
    SpeculationConfig,
    TargetRequest,
    TextRequest,
)
from specdec.core.drafting import DraftStart, SentProposal, Verdict
from specdec.core.errors import InvalidArgument
from specdec.core.placement import Placement
from specdec.core.proposal import Feedback
from specdec.core.stats import Cycle, SpecStats, Summary
from specdec.serving import convert
from specdec.v1 import draft_pb2, orchestrator_pb2


def test_text_request_round_trip():
    for request in (TextRequest(prompt="def f():", sampling=SamplingParams(0.7, 40, 0.9, seed=3), max_new_tokens=9,
                                stop=("\n\n",), k=2, ignore_eos=True, proposer=ProposerKind.NGRAM),
                    TextRequest(messages=(ChatMessage("user", "hi"),))):
        assert convert.text_request_from_pb(convert.text_request_to_pb(request)) == request
    with pytest.raises(InvalidArgument, match="input"):
        convert.text_request_from_pb(orchestrator_pb2.GenerateRequest())
    with pytest.raises(InvalidArgument, match="proposer"):
        convert.text_request_from_pb(orchestrator_pb2.GenerateRequest(prompt="x", proposer=77))


def test_target_request_and_draft_start_round_trip():
    request = TargetRequest("s", GenerationRequest([1, 2, 3], 7, SamplingParams(1.0, seed=5), ignore_eos=True), 11,
                            SpeculationConfig(k=4, max_k=4, adaptive=True), "host:1", overlap=False)
    assert convert.target_request_from_pb(convert.target_request_to_pb(request)) == request
    start = DraftStart("s", [1, 2], SamplingParams(), 3, 4, True, Placement("h", cpus=frozenset({0, 1})))
    for sent in (start, replace(start, paused=True)):
        message = draft_pb2.ProposeRequest(start=convert.draft_start_to_pb(sent))
        assert convert.draft_message_from_pb(message) == sent


def test_cycles_keep_their_milliseconds_and_seconds_apart():
    cycle = Cycle([5, 6], start=10, k=3, accepted=1, verify_s=0.012, draft_sources=[ProposerKind.NGRAM] * 3,
                  finish_reason=FinishReason.EOS, wait_s=0.004, draft_s=0.002, ahead=True, draft_failed=True)
    pb = convert.cycles_to_pb([cycle])
    assert pb.cycles[0].verify_ms == pytest.approx(12.0) and pb.cycles[0].wait_for_draft_ms == pytest.approx(4.0)
    [back] = convert.cycles_from_pb(pb)
    assert back.verify_s == pytest.approx(0.012) and back.draft_s == pytest.approx(0.002)
    assert (back.new_tokens, back.start, back.k, back.draft_sources, back.finish_reason, back.overlap_hit,
            back.draft_failed) == ([5, 6], 10, 3, [ProposerKind.NGRAM] * 3, FinishReason.EOS, True, True)


def test_cycles_of_one_message_keep_their_own_tokens_and_the_last_its_finish():
    cycles = [Cycle([5], start=10, k=0, accepted=0, verify_s=0.01, draft_sources=[], queued_s=0.5),
              Cycle([6, 7, 8], start=11, k=3, accepted=2, verify_s=0.02, draft_sources=[ProposerKind.NGRAM] * 3),
              Cycle([9], start=14, k=0, accepted=0, verify_s=0.01, draft_sources=[], finish_reason=FinishReason.LENGTH)]
    pb = convert.cycles_to_pb(cycles)
    assert (pb.start, list(pb.token_ids), len(pb.cycles)) == (10, [5, 6, 7, 8, 9], 3)
    back = convert.cycles_from_pb(pb)
    assert [(c.start, c.new_tokens, c.k, c.accepted, c.finish_reason) for c in back] == \
        [(10, [5], 0, 0, None), (11, [6, 7, 8], 3, 2, None), (14, [9], 0, 0, FinishReason.LENGTH)]
    assert back[0].queued_s == pytest.approx(0.5) and back[1].verify_s == pytest.approx(0.02)


def test_verdicts_carry_feedback():
    cycle = Cycle([7], start=4, k=2, accepted=0, verify_s=0.5, draft_sources=[ProposerKind.DRAFT_MODEL] * 2)
    feedback = Feedback(ProposerKind.DRAFT_MODEL, 2, 0, 0.5)
    message = draft_pb2.ProposeRequest(verdict=convert.verdict_to_pb(cycle, feedback, next_k=-1))
    assert convert.draft_message_from_pb(message) == Verdict(4, [7], -1, feedback)
    assert isinstance(convert.draft_message_from_pb(draft_pb2.ProposeRequest()), InvalidArgument)


def test_summary_to_the_client_and_back():
    stats = SpecStats()
    stats.observe(Cycle([1, 2, 3], 0, k=4, accepted=2, verify_s=0.01, draft_sources=[ProposerKind.DRAFT_MODEL] * 4,
                        wait_s=0.003, draft_s=0.001), overlap=True)
    stats.new_tokens, stats.wall_time_s, stats.time_to_first_token_s = 3, 0.5, 0.05
    summary = Summary(FinishReason.LENGTH, prompt_tokens=5, completion_tokens=3, stats=stats, session_id="s")
    back = convert.stats_from_summary_pb(convert.summary_to_pb(summary))
    assert (back.drafts, back.draft_tokens, back.accepted_tokens, back.accepted_per_position) == (1, 4, 2, [1, 1, 0, 0])
    assert back.network_wait_s == pytest.approx(0.002) and back.tokens_per_second == pytest.approx(6.0)
    assert back.accepted_tokens_by_source == {"draft-model": 2} and back.overlap_misses == 1


def test_a_proposal_keeps_its_drafting_and_catch_up_times_apart():
    sent = SentProposal(id=3, start=5, token_ids=[1, 2], chain=[0] * 5 + [1, 2], draft_s=0.012, catch_up_s=0.25,
                        ahead=False, source=ProposerKind.DRAFT_MODEL,
                        source_of={5: ProposerKind.DRAFT_MODEL, 6: ProposerKind.DRAFT_MODEL})
    pb = convert.proposal_to_pb(sent)
    assert (pb.draft_ms, pb.catch_up_ms) == (12.0, 250.0)
    back = convert.proposal_from_pb(pb, None)
    assert (back.start, back.token_ids, back.draft_s, back.catch_up_s) == (5, [1, 2], 0.012, 0.25)
