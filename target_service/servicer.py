"""TargetService servicer: protobuf <-> TargetService's requests and cycles."""

from __future__ import annotations

from specdec.core.stats import Cycle
from specdec.serving.convert import cycles_to_pb, ms, target_request_from_pb
from specdec.serving.telemetry import Metrics, record_cycle, tracer
from specdec.v1 import common_pb2, target_pb2, target_pb2_grpc
from target_service.service import Backend


class SessionObserver:
    """Metrics and the session span's events for one session."""

    def __init__(self, metrics: Metrics, span) -> None:
        self.metrics, self.span = metrics, span

    def queued(self, seconds: float) -> None:
        self.metrics.queue_time.labels(self.metrics.role).observe(seconds)
        self.span.set_attribute("specdec.queue_ms", ms(seconds))

    def cycle(self, c: Cycle) -> None:
        self.metrics.observe_cycle(c)
        record_cycle("verify", {"specdec.k": c.k, "specdec.accepted": c.accepted, "specdec.verify_ms": ms(c.verify_s),
                                "specdec.wait_for_draft_ms": ms(c.wait_s), "specdec.draft_ms": ms(c.draft_s),
                                "specdec.overlap_hit": c.overlap_hit, "specdec.committed": len(c.new_tokens)})

    def draft_failed(self, reason: str) -> None:
        self.metrics.fallbacks.labels("target").inc()
        self.span.add_event("draft_failed", {"reason": reason})


class TargetServicer(target_pb2_grpc.TargetServiceServicer):
    def __init__(self, service: Backend, info: common_pb2.ServerInfo, metrics: Metrics | None = None) -> None:
        self.service = service
        self.info = info
        self.metrics = metrics or Metrics("target")
        self.metrics.track(self._gauges)

    def _gauges(self) -> tuple[int, int, int]:
        load = self.service.load()  # one reading per scrape (over a pipe when the engine runs apart)
        return load.active, load.free_slots, load.waiting

    def DescribeTarget(self, request, context):
        info = common_pb2.ServerInfo()
        info.CopyFrom(self.info)
        load = self.service.load()
        info.active_sessions = load.active
        info.free_kv_slots = load.free_slots
        return target_pb2.DescribeTargetResponse(info=info)

    def Generate(self, request: target_pb2.TargetGenerateRequest, context):
        return self.metrics.count_outcomes(self._generate(request, context))

    def _generate(self, pb: target_pb2.TargetGenerateRequest, context):
        request = target_request_from_pb(pb)
        remaining = context.time_remaining()  # the client's deadline reaches the draft too
        deadline = remaining if remaining is not None and remaining < 1e6 else None
        attributes = {"specdec.session_id": pb.session_id, "gen_ai.usage.input_tokens": len(pb.prompt_ids),
                      "specdec.k": pb.k, "specdec.draft_address": pb.draft_address, "specdec.overlap": pb.overlap}
        with tracer().start_as_current_span("session", attributes=attributes) as span:
            generated = 0
            for cycles in self.service.run(request, context.add_callback, SessionObserver(self.metrics, span), deadline):
                generated += sum(len(c.new_tokens) for c in cycles)
                yield cycles_to_pb(cycles)
            span.set_attribute("gen_ai.usage.output_tokens", generated)
