"""TargetService servicer: protobuf <-> TargetSequence / TargetSession."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import grpc

from specdec.adaptive import AcceptanceEstimate, AdaptiveK, StepCosts
from specdec.compute import INLINE, Compute
from specdec.config import MAX_K, GenerationRequest
from specdec.decoder import FixedK, TargetSequence
from specdec.errors import InvalidArgument
from specdec.grpc_util import FINISH_TO_PB, PROPOSER_TO_PB, make_channel, placement_to_pb, sampling_from_pb
from specdec.runner import ModelRunner
from specdec.security import TLSFiles, bearer
from specdec.sessions import SessionTable
from specdec.telemetry import Metrics, outgoing_metadata, record_cycle, tracer
from specdec.v1 import common_pb2, draft_pb2, draft_pb2_grpc, target_pb2, target_pb2_grpc
from target_service.draft_link import DraftLink
from target_service.session import CycleReport, TargetSession


@dataclass(frozen=True)
class TargetSettings:
    max_new_tokens: int = 4096  # the largest max_new_tokens a request may ask for
    draft_timeout_s: float = 5.0  # how long to wait for a usable proposal before going on alone
    draft_tls: TLSFiles | None = None  # TLS (mTLS with a client cert) towards drafts
    internal_token: str | None = None  # bearer token presented to drafts


def report_to_pb(r: CycleReport) -> target_pb2.TargetGenerateResponse:
    c = r.cycle
    return target_pb2.TargetGenerateResponse(
        start=c.start, token_ids=c.new_tokens,
        cycle=target_pb2.CycleInfo(k=c.k, accepted=c.accepted, verify_ms=c.verify_s * 1e3,
                                   wait_for_draft_ms=r.wait_s * 1e3, draft_ms=r.draft_s * 1e3,
                                   overlap_hit=r.overlap_hit,
                                   draft_sources=[PROPOSER_TO_PB[s] for s in c.draft_sources]),
        finish_reason=FINISH_TO_PB.get(c.finish_reason, common_pb2.FINISH_REASON_UNSPECIFIED),
        draft_failed=r.draft_failed)


class TargetServicer(target_pb2_grpc.TargetServiceServicer):
    def __init__(self, runner: ModelRunner, eos_ids: set[int], info: common_pb2.ServerInfo,
                 settings: TargetSettings = TargetSettings(), metrics: Metrics | None = None,
                 compute: Compute = INLINE) -> None:
        self.runner = runner
        self.compute = compute  # where verification runs (specdec.compute: CPU models on one thread)
        self.metrics = metrics or Metrics("target")
        self.eos_ids = eos_ids
        self.info = info
        self.settings = settings
        self.sessions = SessionTable()
        self.step_costs = StepCosts()  # adaptive K: what cycles cost here, learned by every session
        self.acceptance_prior = AcceptanceEstimate(decay=0.95)  # and how well this target's drafts do
        self._channels: dict[str, grpc.Channel] = {}
        self._channels_lock = threading.Lock()
        self.metrics.track(lambda: len(self.sessions), lambda: self.runner.free_slots)

    def DescribeTarget(self, request, context):
        info = common_pb2.ServerInfo()
        info.CopyFrom(self.info)
        info.active_sessions = len(self.sessions)
        info.free_kv_slots = self.runner.free_slots
        return target_pb2.DescribeTargetResponse(info=info)

    def Generate(self, request: target_pb2.TargetGenerateRequest, context):
        return self.metrics.count_outcomes(self._generate(request, context))

    def _generate(self, request: target_pb2.TargetGenerateRequest, context):
        if not request.session_id:
            raise InvalidArgument("session_id", "must not be empty")
        if not 0 <= request.k <= MAX_K:
            raise InvalidArgument("k", f"must be in [0, {MAX_K}], got {request.k}")
        generation = GenerationRequest(
            prompt_ids=list(request.prompt_ids), max_new_tokens=request.max_new_tokens,
            sampling=sampling_from_pb(request.sampling), ignore_eos=request.ignore_eos,
        ).validate(max_new_tokens_limit=self.settings.max_new_tokens, context_len=self.runner.max_len,
                   vocab_size=self.runner.vocab_size)
        entry = self.sessions.add(request.session_id)
        context.add_callback(entry.cancel_now)
        sequence = link = None
        attributes = {"specdec.session_id": request.session_id, "gen_ai.usage.input_tokens": len(request.prompt_ids),
                      "specdec.k": request.k, "specdec.draft_address": request.draft_address,
                      "specdec.overlap": request.overlap}
        try:
            sequence = TargetSequence(self.runner, generation, self.eos_ids, seed=request.seed)
            with tracer().start_as_current_span("session", attributes=attributes) as span:
                if request.draft_address and request.k > 0:
                    link = self._open_link(request, sequence, context.time_remaining())
                    entry.on_cancel(link.wake)  # a cancelled session must not wait out the draft timeout
                fell_back = False
                chooser = (AdaptiveK(max_k=request.k, initial_k=request.k, costs=self.step_costs,
                                     prior=self.acceptance_prior) if request.adaptive_k else FixedK(request.k))
                for report in TargetSession(sequence, link, chooser, entry.cancel, self.compute).run():
                    self._observe(report)
                    if report.draft_failed and not fell_back:
                        fell_back = True
                        self.metrics.fallbacks.labels("target").inc()
                        span.add_event("draft_failed", {"reason": link.failure or ""})
                    yield report_to_pb(report)
                span.set_attribute("gen_ai.usage.output_tokens", len(sequence.generated))
        finally:
            if link is not None:
                link.close(cancel=entry.cancel.is_set())  # cancelled: the draft stops drafting at once
            if sequence is not None:
                sequence.close()
            self.sessions.remove(entry)

    def _observe(self, r: CycleReport) -> None:
        c = r.cycle
        self.metrics.observe_cycle(c.k, c.accepted, c.draft_sources, c.verify_s, c.verify_s + r.wait_s,
                                   len(c.new_tokens))
        record_cycle("verify", {"specdec.k": c.k, "specdec.accepted": c.accepted,
                                "specdec.verify_ms": c.verify_s * 1e3, "specdec.wait_for_draft_ms": r.wait_s * 1e3,
                                "specdec.draft_ms": r.draft_s * 1e3, "specdec.overlap_hit": r.overlap_hit,
                                "specdec.committed": len(c.new_tokens)})

    def _open_link(self, request, sequence: TargetSequence, remaining_s: float | None) -> DraftLink:
        start = draft_pb2.ProposeStart(session_id=request.session_id, prompt_ids=request.prompt_ids,
                                       sampling=request.sampling, seed=sequence.seed, k=request.k,
                                       overlap=request.overlap,
                                       target_placement=placement_to_pb(self.runner.placement))
        return DraftLink(draft_pb2_grpc.DraftServiceStub(self._channel(request.draft_address)), start,
                         vocab_size=self.runner.vocab_size, device=self.runner.device,
                         timeout_s=self.settings.draft_timeout_s, greedy=sequence.sampling.greedy,
                         metadata=outgoing_metadata(bearer(self.settings.internal_token)),
                         deadline_s=remaining_s if remaining_s is not None and remaining_s < 1e6 else None)

    def _channel(self, address: str) -> grpc.Channel:
        with self._channels_lock:
            if address not in self._channels:
                self._channels[address] = make_channel(address, self.settings.draft_tls)
            return self._channels[address]
