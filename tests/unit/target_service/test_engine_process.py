"""The engine process's pipe without a second process: the front end's EngineProcess and the engine's EngineHost
over a real multiprocessing pipe, the host on a thread, a scripted service behind it."""

from __future__ import annotations

import multiprocessing
import os
import socket
import threading
import time

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from prometheus_client import CollectorRegistry

from specdec.core.config import GenerationRequest, SpeculationConfig, TargetRequest
from specdec.core.errors import Internal, InvalidArgument, Unavailable
from specdec.core.stats import Cycle
from specdec.serving.telemetry import Metrics, trace_carrier
from specdec.v1 import common_pb2
from target_service.engine_process import REPORT_S, EngineHost, EngineProcess, EngineReports
from target_service.service import Load

pytestmark = pytest.mark.timeout(60)


class Unpicklable(Exception):
    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = threading.Lock()


class Scripted:
    """A TargetService whose sessions do what their id says."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.release = threading.Event()
        self.carriers: list[dict] = []

    def load(self) -> Load:
        return Load(active=3, free_slots=5, waiting=2)

    def run(self, request, on_cancel, observer, deadline_s=None):
        self.carriers.append(trace_carrier())
        kind = request.session_id
        if kind == "bad":
            raise InvalidArgument("max_new_tokens", "must be <= 4096, got 9999")
        if kind == "unpicklable":
            raise Unpicklable()
        on_cancel(self.cancelled.set)
        observer.queued(0.25)
        if kind == "until-cancelled":
            while not self.cancelled.wait(0.01):
                cycle = Cycle([7], 0)
                observer.cycle(cycle)
                yield [cycle]
            return
        for i in range(3):
            cycle = Cycle([i], i, k=2, accepted=1)
            observer.cycle(cycle)
            yield [cycle]
            if kind == "held":  # after its first batch, until the test says
                self.release.wait(10)
        observer.draft_failed("draft gone")


class FakeProcess:
    """What EngineProcess asks of its process."""

    exitcode = 0

    def join(self, timeout=None):
        pass

    def is_alive(self) -> bool:
        return False

    def kill(self) -> None:
        pass


class Seen:
    def __init__(self) -> None:
        self.calls = []

    def queued(self, seconds):
        self.calls.append(("queued", seconds))

    def cycle(self, cycle):
        self.calls.append(("cycle", cycle.new_tokens))

    def draft_failed(self, reason):
        self.calls.append(("draft_failed", reason))


@pytest.fixture
def pair():
    ours, theirs = multiprocessing.Pipe(duplex=True)
    service, reports = Scripted(), EngineReports()
    host = EngineHost(theirs, service, reports)
    def serve():  # as the engine process does: its end of the pipe closes once it stops serving
        host.serve()
        theirs.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    metrics = Metrics("target", registry=CollectorRegistry())
    engine = EngineProcess(FakeProcess(), ours, common_pb2.ServerInfo(max_sessions=8), metrics, tracks=(False, False))
    yield engine, service, reports, metrics, theirs
    engine.stop()
    thread.join(5)


def request(kind: str) -> TargetRequest:
    return TargetRequest(kind, GenerationRequest(prompt_ids=[1, 2], max_new_tokens=8), 0, SpeculationConfig(k=0))


def test_cycles_and_what_the_observer_saw_cross_in_order(pair):
    engine, *_ = pair
    seen = Seen()
    batches = list(engine.run(request("ok"), lambda fn: None, seen))
    assert [t for batch in batches for c in batch for t in c.new_tokens] == [0, 1, 2]
    assert all(c.k == 2 and c.accepted == 1 for batch in batches for c in batch)
    assert seen.calls == [("queued", 0.25), ("cycle", [0]), ("cycle", [1]), ("cycle", [2]),
                          ("draft_failed", "draft gone")]


def test_a_reader_that_falls_behind_gets_every_cycle_handed_over_since_in_one_list(pair):
    engine, service, *_ = pair
    stream = engine.run(request("held"), lambda fn: None, Seen())
    assert [c.new_tokens for c in next(stream)] == [[0]]
    service.release.set()
    time.sleep(0.5)  # the other two batches and the end are all waiting for the reader by now
    assert [[c.new_tokens for c in batch] for batch in stream] == [[[1], [2]]]


def test_an_error_crosses_whole_and_one_that_cannot_becomes_internal(pair):
    engine, *_ = pair
    with pytest.raises(InvalidArgument) as err:
        next(engine.run(request("bad"), lambda fn: None, Seen()))
    assert err.value.field == "max_new_tokens" and str(err.value) == "max_new_tokens: must be <= 4096, got 9999"
    with pytest.raises(Internal, match="Unpicklable: holds a lock"):
        next(engine.run(request("unpicklable"), lambda fn: None, Seen()))


def test_a_caller_that_goes_away_cancels_the_session_in_the_engine(pair):
    engine, service, *_ = pair
    stream = engine.run(request("until-cancelled"), lambda fn: None, Seen())
    assert next(stream)[0].new_tokens == [7]
    stream.close()  # the gRPC stream ended: the generator is closed
    assert service.cancelled.wait(5)


def test_the_grpc_cancel_callback_reaches_the_session(pair):
    engine, service, *_ = pair
    hooks = []
    stream = engine.run(request("until-cancelled"), hooks.append, Seen())
    next(stream)
    hooks[0]()  # what context.add_callback calls when the client cancels
    assert service.cancelled.wait(5)
    list(stream)  # the session ends on its own


def test_load_is_read_from_the_engine(pair):
    engine, *_ = pair
    assert engine.load() == Load(active=3, free_slots=5, waiting=2)


def test_engine_steps_reach_the_front_end_metrics(pair):
    engine, _, reports, metrics, _ = pair
    reports.observe_step(16, 0.012)
    reports.observe_step(16, 0.013)
    deadline = time.monotonic() + 10 * REPORT_S
    while metrics.registry.get_sample_value("specdec_batch_rows_count", {"role": "target"}) != 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert metrics.registry.get_sample_value("specdec_batch_rows_sum", {"role": "target"}) == 32


def test_the_session_continues_the_front_end_s_trace(pair):
    engine, service, *_ = pair
    span = NonRecordingSpan(SpanContext(trace_id=0x1234, span_id=0x5678, is_remote=False,
                                        trace_flags=TraceFlags(TraceFlags.SAMPLED)))
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        sent = trace_carrier()
        list(engine.run(request("ok"), lambda fn: None, Seen()))
    finally:
        otel_context.detach(token)
    assert sent["traceparent"].startswith("00-00000000000000000000000000001234-0000000000005678-")
    assert service.carriers[-1] == sent


def test_an_engine_that_is_gone_fails_its_sessions_and_says_so(pair):
    engine, service, _, _, theirs = pair
    gone = threading.Event()
    engine.on_exit(gone.set)
    stream = engine.run(request("until-cancelled"), lambda fn: None, Seen())
    next(stream)
    socket.socket(fileno=os.dup(theirs.fileno())).shutdown(socket.SHUT_RDWR)  # the engine process died
    with pytest.raises(Unavailable, match="engine process exited"):
        list(stream)
    assert gone.wait(5)
    with pytest.raises(Unavailable):
        next(engine.run(request("ok"), lambda fn: None, Seen()))
    assert engine.load() == Load(0, 8, 0)  # the last known (none read yet)
    service.cancelled.set()


def test_a_stop_is_not_reported_as_the_engine_dying(pair, caplog):
    """The stop joins the process; the pipe's reader sees it close then and must not call that an exit (it once
    did, with code None, the process reaped by the stop's join)."""
    engine, *_ = pair
    engine.process.exitcode = None
    gone = threading.Event()
    engine.on_exit(gone.set)
    engine.stop()
    assert gone.wait(5)
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.records
