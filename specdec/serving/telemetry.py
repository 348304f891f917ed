"""OpenTelemetry tracing and Prometheus metrics: set up once per process, names in one place.

Tracing is off unless an OTLP endpoint is configured (`--otlp-endpoint` or the standard
`OTEL_EXPORTER_OTLP_ENDPOINT`); then spans go to it over OTLP/gRPC, the sampler follows
`OTEL_TRACES_SAMPLER`, and the service name `OTEL_SERVICE_NAME` (default specdec-<role>). Off means
the API's no-op tracer: no exporter, no thread, nothing recorded.

Trace context crosses every hop as W3C `traceparent` metadata: servers extract it with
opentelemetry-instrumentation-grpc's server interceptor; clients inject it with `outgoing_metadata()`
(the package's client interceptor wraps server-streaming calls in a generator, which would take away
`.cancel()`, and cancellation is how a session ends).
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from specdec.core.config import ROW_BUCKETS
from specdec.core.stats import Cycle, PhaseStats
from specdec.serving.interceptors import status_of

TRACER_NAME = "specdec"
SPAN_EVENTS_ENV = "SPECDEC_TRACE_CYCLES"  # "spans" (default) or "events": per-cycle spans or span events


@dataclass(frozen=True)
class TelemetrySettings:
    service_name: str
    otlp_endpoint: str | None = None  # None: read OTEL_EXPORTER_OTLP_ENDPOINT; empty: tracing off


_setup_lock = threading.Lock()
_tracing_on = False


def setup_tracing(settings: TelemetrySettings) -> bool:
    """Install an OTLP-exporting tracer provider if an endpoint is configured; return whether it did."""
    global _tracing_on
    endpoint = settings.otlp_endpoint if settings.otlp_endpoint is not None else \
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if not endpoint:
        return False
    with _setup_lock:
        if _tracing_on:
            return True
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        name = os.environ.get("OTEL_SERVICE_NAME") or settings.service_name
        provider = TracerProvider(resource=Resource.create({"service.name": name}))  # sampler: OTEL_TRACES_SAMPLER
        insecure = endpoint.startswith("http://") or "://" not in endpoint
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=insecure)))
        trace.set_tracer_provider(provider)
        _tracing_on = True
    return True


def shutdown_tracing() -> None:
    """Flush spans still queued (call on shutdown)."""
    provider = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def cycle_events() -> bool:
    return os.environ.get(SPAN_EVENTS_ENV, "spans") == "events"


def trace_carrier() -> dict[str, str]:
    """The current trace context (W3C traceparent/tracestate), to carry across a hop."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def outgoing_metadata(metadata: tuple = ()) -> tuple:
    """`metadata` plus the current trace context, for a client call."""
    return tuple(metadata) + tuple(trace_carrier().items())


@contextlib.contextmanager
def continued(carrier: Mapping[str, str]) -> Iterator[None]:
    """Run the block in the trace context `carrier` holds (trace_carrier's, from another process): calls made in
    it carry that context on, so their spans are children of the span that sent it."""
    token = otel_context.attach(propagate.extract(carrier))
    try:
        yield
    finally:
        otel_context.detach(token)


def server_interceptors() -> list:
    """Interceptors that extract incoming trace context and open a server span per RPC."""
    if not _tracing_on:
        return []
    from opentelemetry.instrumentation.grpc import server_interceptor
    return [server_interceptor()]


def record_cycle(name: str, attributes: dict) -> None:
    """One verification or proposal cycle: a child span, or an event on the current span (nothing where the
    current span is not recorded: tracing off or not sampled, where a non-recording child still cost every
    token ~20 us of the interpreter the engine thread shares)."""
    if not trace.get_current_span().is_recording():
        return
    if cycle_events():
        trace.get_current_span().add_event(name, attributes)
    else:
        with tracer().start_as_current_span(name, attributes=attributes):
            pass


# ---- metrics --------------------------------------------------------------------------------------


class _LaunchedAhead:
    """A collector of counters summed at scrape time over engines' StepStats.launched_ahead (Metrics.track_launched)."""

    def __init__(self, role: str, stats: Callable[[], Iterable[Mapping[str, tuple[int, int]]]]) -> None:
        self.role, self.stats = role, stats

    def collect(self):
        launched = CounterMetricFamily("specdec_rows_launched_ahead", "Rows launched on the device before the host "
                                       "read what they depend on (a guess, a verify, a draft step, a new session's "
                                       "draft catch-up)", labels=["role", "kind"])
        kept = CounterMetricFamily("specdec_rows_launched_ahead_kept", "Of those, rows kept (the session's next "
                                   "forward was exactly that one)", labels=["role", "kind"])
        totals: dict[str, list[int]] = {}
        for by_kind in self.stats():
            for kind, (n, k) in by_kind.items():
                total = totals.setdefault(kind, [0, 0])
                total[0], total[1] = total[0] + n, total[1] + k
        for kind, (n, k) in totals.items():
            launched.add_metric([self.role, kind], n)
            kept.add_metric([self.role, kind], k)
        yield launched
        yield kept


class _CatchUps:
    """A collector of the own draft's catch-ups, read at scrape time from its PhaseStats (Metrics.track_catch_ups)."""

    def __init__(self, role: str, stats: Callable[[], PhaseStats]) -> None:
        self.role, self.stats = role, stats

    def collect(self):
        s = self.stats()
        phases = CounterMetricFamily("specdec_draft_catch_ups", "The target's own draft: drafting phases in which a "
                                     "session's draft caught up first (a new prompt, or the tokens of a pause)",
                                     labels=["role"])
        seconds = CounterMetricFamily("specdec_draft_catch_up_seconds", "The time those catch-ups took (every row's "
                                      "step waits for them)", labels=["role"])
        tokens = CounterMetricFamily("specdec_draft_catch_up_tokens", "The tokens those catch-ups forwarded, over every "
                                     "session caught up (what a pause left its draft to catch up on)", labels=["role"])
        phases.add_metric([self.role], s.catching_up)
        seconds.add_metric([self.role], s.catch_up_s)
        tokens.add_metric([self.role], s.catch_up_tokens)
        yield phases
        yield seconds
        yield tokens


class _Load:
    """A collector of what a service holds now (Metrics.track): one reading per scrape for all three gauges, since a
    target whose engine runs in a process of its own answers each reading over its pipe."""

    GAUGES = (("specdec_active_sessions", "Sessions open now"),
              ("specdec_free_kv_slots", "KV-cache slots free now"),
              ("specdec_queue_length", "Sessions waiting for a KV-cache slot now"))

    def __init__(self, role: str, load: Callable[[], tuple[int, int, int]]) -> None:
        self.role, self.load = role, load

    def collect(self):
        for (name, documentation), value in zip(self.GAUGES, self.load()):
            gauge = GaugeMetricFamily(name, documentation, labels=["role"])
            gauge.add_metric([self.role], value)
            yield gauge


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24)
REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)


class Metrics:
    """The speculative-decoding metrics of one service, named like vLLM's spec-decode metrics.

    Only raw counters and histograms are exported; ratios belong in queries, e.g.
      acceptance rate        = rate(specdec_num_accepted_tokens_total) / rate(specdec_num_draft_tokens_total)
      mean acceptance length = 1 + rate(specdec_num_accepted_tokens_total) / rate(specdec_num_drafts_total)
    """

    def __init__(self, role: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r, lbl = self.registry, ["role"]
        self.role = role
        self.drafts = Counter("specdec_num_drafts", "Verification cycles with at least one draft token", lbl, registry=r)
        self.draft_tokens = Counter("specdec_num_draft_tokens", "Draft tokens verified", lbl, registry=r)
        self.accepted_tokens = Counter("specdec_num_accepted_tokens", "Draft tokens accepted", lbl, registry=r)
        self.accepted_per_pos = Counter("specdec_num_accepted_tokens_per_pos",
                                        "Cycles in which the draft token at this position was accepted",
                                        ["role", "position"], registry=r)
        self.accepted_by_proposer = Counter("specdec_num_accepted_tokens_by_proposer",
                                            "Accepted draft tokens by the proposer that produced them",
                                            ["role", "proposer"], registry=r)
        self.ttft = Histogram("specdec_time_to_first_token_seconds", "Time to first token", lbl,
                              buckets=LATENCY_BUCKETS + (20.48,), registry=r)
        self.itl = Histogram("specdec_inter_token_latency_seconds", "Time per generated token within a cycle", lbl,
                             buckets=LATENCY_BUCKETS, registry=r)
        self.draft_step = Histogram("specdec_draft_step_seconds", "Drafting time per proposal", lbl,
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.verify_step = Histogram("specdec_verify_step_seconds", "Target forward + verification per cycle", lbl,
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.cycle = Histogram("specdec_cycle_seconds", "Whole verification cycle incl. waiting for the draft", lbl,
                               buckets=LATENCY_BUCKETS, registry=r)
        self.request = Histogram("specdec_request_duration_seconds", "End-to-end request time", lbl,
                                 buckets=REQUEST_BUCKETS, registry=r)
        self.queue_time = Histogram("specdec_queue_seconds", "Time a session waited for a KV-cache slot", lbl,
                                    buckets=REQUEST_BUCKETS, registry=r)
        self.batch_rows = Histogram("specdec_batch_rows", "Sessions' rows in one batched forward (engine step)", lbl,
                                    buckets=ROW_BUCKETS, registry=r)
        self.batch_step = Histogram("specdec_batch_step_seconds", "One engine step: the batched forward and its "
                                    "argmax", lbl, buckets=LATENCY_BUCKETS, registry=r)
        self.draft_phase = Histogram("specdec_draft_phase_seconds", "The target's own draft: one drafting phase "
                                     "between engine steps, for every session that asked for a block", lbl,
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.fallbacks = Counter("specdec_fallback_to_target_only", "Sessions that lost their draft and went on alone",
                                 lbl, registry=r)
        self.requests = Counter("specdec_requests", "Finished requests by gRPC status code", ["role", "code"],
                                registry=r)
        # what every cycle and engine step updates, with this service's label resolved once (not per token)
        (self._verify, self._cycle, self._itl, self._rows, self._step, self._phase, self._drafts, self._draft_tokens,
         self._accepted) = (m.labels(role) for m in (self.verify_step, self.cycle, self.itl, self.batch_rows,
                                                      self.batch_step, self.draft_phase, self.drafts, self.draft_tokens,
                                                      self.accepted_tokens))
        self._per_pos: dict[int, object] = {}  # position -> its counter, resolved on first use
        self._by_proposer: dict[object, object] = {}  # proposer kind -> its counter

    def observe_cycle(self, cycle: Cycle) -> None:
        cycle_s = cycle.verify_s + cycle.wait_s
        self._verify.observe(cycle.verify_s)
        self._cycle.observe(cycle_s)
        if cycle.new_tokens:
            self._itl.observe(cycle_s / len(cycle.new_tokens))
        if cycle.k == 0:
            return
        self._drafts.inc()
        self._draft_tokens.inc(cycle.k)
        self._accepted.inc(cycle.accepted)
        for i in range(cycle.accepted):
            at = self._per_pos.get(i) or self._per_pos.setdefault(i, self.accepted_per_pos.labels(self.role, str(i)))
            at.inc()
            if i < len(cycle.draft_sources):
                source = cycle.draft_sources[i]
                by = self._by_proposer.get(source) or self._by_proposer.setdefault(
                    source, self.accepted_by_proposer.labels(self.role, source.value))
                by.inc()

    def observe_step(self, rows: int, seconds: float) -> None:
        """One engine step (BatchedRunner.on_step)."""
        self._rows.observe(rows)
        self._step.observe(seconds)

    def observe_drafting(self, seconds: float) -> None:
        """One drafting phase of the target's own draft (BatchedRunner.on_drafting)."""
        self._phase.observe(seconds)

    def track_launched(self, stats: Callable[[], Iterable[Mapping[str, tuple[int, int]]]]) -> None:
        """Report the rows a batched engine (and its own draft) launched before the host read what they depend on,
        and how many were kept (StepStats.launched_ahead of each), read at scrape time: a kind whose rows are mostly
        dropped is device time spent for nothing."""
        self.registry.register(_LaunchedAhead(self.role, stats))

    def track_catch_ups(self, stats: Callable[[], PhaseStats]) -> None:
        """Report the own draft's catch-ups (OwnDrafts.stats), read at scrape time: next to the drafting phases'
        histogram, the share of their time that new prompts and resumed drafts take."""
        self.registry.register(_CatchUps(self.role, stats))

    def track(self, load: Callable[[], tuple[int, int, int]]) -> None:
        """Report what the service holds now, read at scrape time: (sessions open, KV slots free, sessions queued)."""
        self.registry.register(_Load(self.role, load))

    def count_outcomes(self, stream):
        """Wrap a servicer's response generator: count how each request ended, by gRPC code."""
        code = "OK"
        try:
            yield from stream
        except GeneratorExit:
            code = "CANCELLED"
            raise
        except Exception as exc:
            code = status_of(exc).name
            raise
        finally:
            self.requests.labels(self.role, code).inc()

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server.server_port
