"""Every protobuf <-> core conversion, once: servicers, links and clients call these and nothing else.

Units change here and only here: the wire carries milliseconds (`*_ms`), the core seconds (`*_s`).
"""

from __future__ import annotations

from typing import Sequence

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
from specdec.core.drafting import DraftStart, Row, RowRequest, SentProposal, Verdict
from specdec.core.errors import InvalidArgument
from specdec.core.placement import Placement
from specdec.core.proposal import Feedback, Proposal
from specdec.core.stats import Cycle, SpecStats, Summary
from specdec.core.verify import DraftProbs
from specdec.v1 import common_pb2, draft_pb2, orchestrator_pb2, target_pb2

MS = 1e3  # milliseconds per second


def ms(seconds: float) -> float:
    return seconds * MS


def seconds(milliseconds: float) -> float:
    return milliseconds / MS


# ---- enums ------------------------------------------------------------------------------------------

PROPOSER_TO_PB = {ProposerKind.DRAFT_MODEL: common_pb2.PROPOSER_KIND_DRAFT_MODEL,
                  ProposerKind.NGRAM: common_pb2.PROPOSER_KIND_NGRAM,
                  ProposerKind.HYBRID: common_pb2.PROPOSER_KIND_HYBRID}
PROPOSER_FROM_PB = {v: k for k, v in PROPOSER_TO_PB.items()}
FINISH_TO_PB = {FinishReason.LENGTH: common_pb2.FINISH_REASON_LENGTH, FinishReason.EOS: common_pb2.FINISH_REASON_EOS,
                FinishReason.STOP: common_pb2.FINISH_REASON_STOP}  # CANCELLED never reaches a client
FINISH_FROM_PB = {v: k for k, v in FINISH_TO_PB.items()}


def proposer_to_pb(kind: ProposerKind | None) -> int:
    return PROPOSER_TO_PB[kind] if kind is not None else common_pb2.PROPOSER_KIND_UNSPECIFIED


def proposer_from_pb(value: int, field: str = "proposer") -> ProposerKind | None:
    """None for UNSPECIFIED; an unknown value is the caller's error."""
    if value == common_pb2.PROPOSER_KIND_UNSPECIFIED:
        return None
    if value not in PROPOSER_FROM_PB:
        raise InvalidArgument(field, f"unknown proposer kind {value}")
    return PROPOSER_FROM_PB[value]


def sources_from_pb(values) -> list[ProposerKind]:
    """Per-token proposers as received; an unknown or missing kind counts as the draft model."""
    return [PROPOSER_FROM_PB.get(v, ProposerKind.DRAFT_MODEL) for v in values]


def finish_to_pb(reason: FinishReason | None) -> int:
    return FINISH_TO_PB.get(reason, common_pb2.FINISH_REASON_UNSPECIFIED)


# ---- common messages --------------------------------------------------------------------------------

def sampling_from_pb(pb: common_pb2.SamplingParams) -> SamplingParams:
    return SamplingParams(temperature=pb.temperature, top_k=pb.top_k,
                          top_p=pb.top_p if pb.HasField("top_p") else 1.0,
                          seed=pb.seed if pb.HasField("seed") else None)


def sampling_to_pb(params: SamplingParams) -> common_pb2.SamplingParams:
    pb = common_pb2.SamplingParams(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p)
    if params.seed is not None:
        pb.seed = params.seed
    return pb


def placement_to_pb(placement: Placement) -> common_pb2.ComputePlacement:
    return common_pb2.ComputePlacement(host_id=placement.host_id, gpu_uuid=placement.gpu_uuid,
                                       cpus=sorted(placement.cpus))


def placement_from_pb(pb: common_pb2.ComputePlacement) -> Placement | None:
    """None when the peer did not say where it computes."""
    if not pb.host_id:
        return None
    return Placement(pb.host_id, gpu_uuid=pb.gpu_uuid, cpus=frozenset(pb.cpus))


def stats_to_pb(s: SpecStats) -> common_pb2.SpeculationStats:
    return common_pb2.SpeculationStats(
        drafts=s.drafts, draft_tokens=s.draft_tokens, accepted_tokens=s.accepted_tokens,
        accepted_per_position=s.accepted_per_position, mean_acceptance_length=s.mean_acceptance_length,
        cycles=s.cycles, overlap_hits=s.overlap_hits, overlap_misses=s.overlap_misses,
        draft_tokens_by_proposer=s.draft_tokens_by_source, accepted_tokens_by_proposer=s.accepted_tokens_by_source)


def latency_to_pb(s: SpecStats) -> common_pb2.LatencyBreakdown:
    return common_pb2.LatencyBreakdown(
        time_to_first_token_ms=ms(s.time_to_first_token_s), draft_ms=ms(s.draft_time_s),
        verify_ms=ms(s.verify_time_s), network_wait_ms=ms(s.network_wait_s), total_ms=ms(s.wall_time_s),
        queue_ms=ms(s.queue_time_s))


# ---- orchestrator -----------------------------------------------------------------------------------

def text_request_from_pb(pb: orchestrator_pb2.GenerateRequest) -> TextRequest:
    which = pb.WhichOneof("input")
    if which is None:
        raise InvalidArgument("input", "set `prompt` or `chat`")
    messages = tuple(ChatMessage(m.role, m.content) for m in pb.chat.messages) if which == "chat" else None
    return TextRequest(prompt=pb.prompt if which == "prompt" else None, messages=messages,
                       sampling=sampling_from_pb(pb.sampling),
                       max_new_tokens=pb.max_new_tokens if pb.HasField("max_new_tokens") else None,
                       stop=tuple(pb.stop), k=pb.k if pb.HasField("k") else None, ignore_eos=pb.ignore_eos,
                       proposer=proposer_from_pb(pb.proposer))


def text_request_to_pb(request: TextRequest) -> orchestrator_pb2.GenerateRequest:
    pb = orchestrator_pb2.GenerateRequest(sampling=sampling_to_pb(request.sampling), stop=list(request.stop),
                                          ignore_eos=request.ignore_eos, proposer=proposer_to_pb(request.proposer))
    if request.messages is not None:
        pb.chat.messages.extend(orchestrator_pb2.ChatMessage(role=m.role, content=m.content) for m in request.messages)
    else:
        pb.prompt = request.prompt or ""
    if request.max_new_tokens is not None:
        pb.max_new_tokens = request.max_new_tokens
    if request.k is not None:
        pb.k = request.k
    return pb


def summary_to_pb(s: Summary) -> orchestrator_pb2.GenerateSummary:
    return orchestrator_pb2.GenerateSummary(
        finish_reason=finish_to_pb(s.finish_reason), prompt_tokens=s.prompt_tokens,
        completion_tokens=s.completion_tokens, speculation=stats_to_pb(s.stats), latency=latency_to_pb(s.stats),
        tokens_per_second=s.stats.tokens_per_second, draft_failed=s.draft_failed, session_id=s.session_id)


def stats_from_summary_pb(pb: orchestrator_pb2.GenerateSummary) -> SpecStats:
    """A client's view of a request's statistics (what summary_to_pb sent)."""
    spec, lat = pb.speculation, pb.latency
    return SpecStats(drafts=spec.drafts, draft_tokens=spec.draft_tokens, accepted_tokens=spec.accepted_tokens,
                     accepted_per_position=list(spec.accepted_per_position), cycles=spec.cycles,
                     draft_tokens_by_source=dict(spec.draft_tokens_by_proposer),
                     accepted_tokens_by_source=dict(spec.accepted_tokens_by_proposer),
                     new_tokens=pb.completion_tokens, prompt_tokens=pb.prompt_tokens,
                     draft_time_s=seconds(lat.draft_ms), verify_time_s=seconds(lat.verify_ms),
                     network_wait_s=seconds(lat.network_wait_ms), wall_time_s=seconds(lat.total_ms),
                     queue_time_s=seconds(lat.queue_ms),
                     time_to_first_token_s=seconds(lat.time_to_first_token_ms), overlap_hits=spec.overlap_hits,
                     overlap_misses=spec.overlap_misses)


# ---- target -----------------------------------------------------------------------------------------

def target_request_from_pb(pb: target_pb2.TargetGenerateRequest) -> TargetRequest:
    generation = GenerationRequest(prompt_ids=list(pb.prompt_ids), max_new_tokens=pb.max_new_tokens,
                                   sampling=sampling_from_pb(pb.sampling), ignore_eos=pb.ignore_eos)
    return TargetRequest(session_id=pb.session_id, generation=generation, seed=pb.seed,
                         speculation=SpeculationConfig(k=pb.k, max_k=max(1, pb.k), adaptive=pb.adaptive_k),
                         draft_address=pb.draft_address, overlap=pb.overlap, own_draft=pb.own_draft)


def target_request_to_pb(r: TargetRequest) -> target_pb2.TargetGenerateRequest:
    g = r.generation
    return target_pb2.TargetGenerateRequest(
        session_id=r.session_id, prompt_ids=g.prompt_ids, sampling=sampling_to_pb(g.sampling), seed=r.seed,
        max_new_tokens=g.max_new_tokens, ignore_eos=g.ignore_eos, k=r.speculation.k, draft_address=r.draft_address,
        overlap=r.overlap, adaptive_k=r.speculation.adaptive, own_draft=r.own_draft)


def draft_start_to_pb(start: DraftStart) -> draft_pb2.ProposeStart:
    pb = draft_pb2.ProposeStart(session_id=start.session_id, prompt_ids=start.prompt_ids,
                                sampling=sampling_to_pb(start.sampling), seed=start.seed, k=start.k,
                                overlap=start.overlap, paused=start.paused)
    if start.target_placement is not None:
        pb.target_placement.CopyFrom(placement_to_pb(start.target_placement))
    return pb


def cycles_to_pb(cycles: Sequence[Cycle]) -> target_pb2.TargetGenerateResponse:
    """One message for the cycles committed since the last one (in order, at least one)."""
    last = cycles[-1]
    return target_pb2.TargetGenerateResponse(
        start=cycles[0].start, token_ids=[t for c in cycles for t in c.new_tokens],
        cycles=[target_pb2.CycleInfo(k=c.k, accepted=c.accepted, verify_ms=ms(c.verify_s), wait_for_draft_ms=ms(c.wait_s),
                                     draft_ms=ms(c.draft_s), overlap_hit=c.overlap_hit,
                                     draft_sources=[PROPOSER_TO_PB[s] for s in c.draft_sources],
                                     queued_ms=ms(c.queued_s), committed=len(c.new_tokens)) for c in cycles],
        finish_reason=finish_to_pb(last.finish_reason), draft_failed=last.draft_failed)


def cycles_from_pb(pb: target_pb2.TargetGenerateResponse) -> list[Cycle]:
    """The message's cycles, each with its own tokens; the finish reason goes to the last."""
    cycles, start, tokens = [], pb.start, list(pb.token_ids)
    for i, c in enumerate(pb.cycles):
        last = i == len(pb.cycles) - 1
        new, tokens = tokens[:c.committed], tokens[c.committed:]
        cycles.append(Cycle(new_tokens=new, start=start, k=c.k, accepted=c.accepted, verify_s=seconds(c.verify_ms),
                            draft_sources=sources_from_pb(c.draft_sources),
                            finish_reason=FINISH_FROM_PB.get(pb.finish_reason) if last else None,
                            wait_s=seconds(c.wait_for_draft_ms), draft_s=seconds(c.draft_ms), ahead=c.overlap_hit,
                            draft_failed=pb.draft_failed if last else False, queued_s=seconds(c.queued_ms)))
        start += len(new)
    return cycles


# ---- draft ------------------------------------------------------------------------------------------

def verdict_to_pb(cycle: Cycle, feedback: Feedback, next_k: int = 0) -> draft_pb2.ProposeVerdict:
    """One cycle's verdict for the draft: what was committed, and how its block fared and cost."""
    return draft_pb2.ProposeVerdict(start=cycle.start, token_ids=cycle.new_tokens, next_k=next_k,
                                    verified_k=feedback.k, accepted=feedback.accepted, verify_ms=ms(feedback.verify_s),
                                    verified_source=proposer_to_pb(feedback.source))


def feedback_from_pb(pb: draft_pb2.ProposeVerdict) -> Feedback:
    return Feedback(source=PROPOSER_FROM_PB.get(pb.verified_source), k=pb.verified_k, accepted=pb.accepted,
                    verify_s=seconds(pb.verify_ms))


def proposal_to_pb(p: SentProposal) -> draft_pb2.DraftProposal:
    return draft_pb2.DraftProposal(
        id=p.id, start=p.start, token_ids=p.token_ids, token_probs=p.token_probs(), draft_ms=ms(p.draft_s),
        catch_up_ms=ms(p.catch_up_s),
        ahead=p.ahead, source=proposer_to_pb(p.source), token_sources=[PROPOSER_TO_PB[s] for s in p.token_sources()])


def proposal_from_pb(pb: draft_pb2.DraftProposal, probs: DraftProbs | None) -> Proposal:
    return Proposal(start=pb.start, token_ids=list(pb.token_ids), probs=probs,
                    source=PROPOSER_FROM_PB.get(pb.source, ProposerKind.DRAFT_MODEL),
                    token_sources=sources_from_pb(pb.token_sources) or None, draft_s=seconds(pb.draft_ms),
                    catch_up_s=seconds(pb.catch_up_ms), ahead=pb.ahead)


def proposals_to_pb(batch: list[SentProposal]) -> draft_pb2.ProposeResponse:
    """One message per batch the session drafted: a single block, or the blocks pre-drafted together."""
    if len(batch) == 1:
        return draft_pb2.ProposeResponse(proposal=proposal_to_pb(batch[0]))
    return draft_pb2.ProposeResponse(proposals=draft_pb2.DraftProposals(proposals=[proposal_to_pb(p) for p in batch]))


def row_to_pb(row: Row) -> draft_pb2.ProposeResponse:
    return draft_pb2.ProposeResponse(row=draft_pb2.DraftRow(proposal_id=row.proposal_id, index=row.index, ids=row.ids,
                                                            probs=row.probs))


def draft_message_from_pb(msg: draft_pb2.ProposeRequest) -> DraftStart | Verdict | RowRequest | InvalidArgument:
    """A target's message on the Propose stream; one that carries nothing becomes the error to raise."""
    kind = msg.WhichOneof("message")
    if kind == "start":
        s = msg.start
        return DraftStart(session_id=s.session_id, prompt_ids=list(s.prompt_ids), sampling=sampling_from_pb(s.sampling),
                          seed=s.seed, k=s.k, overlap=s.overlap, target_placement=placement_from_pb(s.target_placement),
                          paused=s.paused)
    if kind == "verdict":
        v = msg.verdict
        return Verdict(v.start, list(v.token_ids), v.next_k, feedback_from_pb(v))
    if kind == "row_request":
        return RowRequest(msg.row_request.proposal_id, msg.row_request.index)
    return InvalidArgument("message", "empty ProposeRequest")
