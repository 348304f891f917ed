"""The target's engine in a process of its own (`serve target --engine-process`): the gRPC front end (servicer,
metrics, traces) in the server's process, the engine and every session's loop in a child, one pipe between them.

Why: under load the engine thread waits its turn at an interpreter it shares with every session's gRPC thread
(docs/architecture.md, "Batched engine"). In a process of its own it shares it only with the sessions' loops,
as the in-process bench runs it; protobuf, HTTP/2 and the trace events stay with the front end. vLLM splits its
engine core from its API server for the same reason.

What crosses the pipe (pickled, one message each): a session's request, trace context and deadline; its cancel;
its cycles as the engine hands them over, with what the session's observer saw; how it ended (an error crosses
whole, so the front end answers with the status the engine chose); the engine's step observations for the metrics
every REPORT_S; and, on request, its load (sessions, free slots, queue).
"""

from __future__ import annotations

import collections
import itertools
import logging
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from enum import IntEnum
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Callable, Iterator, Mapping

from specdec.core.config import TargetRequest
from specdec.core.errors import Internal, SpecdecError, Unavailable
from specdec.core.stats import Cycle, PhaseStats
from specdec.serving.telemetry import Metrics, continued, trace_carrier
from specdec.v1 import common_pb2
from target_service.service import Load, Observer

if TYPE_CHECKING:
    from target_service.server import TargetServerSettings
    from target_service.service import TargetService

log = logging.getLogger("specdec.target")
REPORT_S = 0.5  # how often the engine sends its step observations to the front end
START_TIMEOUT_S = 1800.0  # loading and compiling a large target on a GPU takes minutes
STOP_WAIT_S = 30.0  # how long the front end waits for the engine to end before killing it


class Command(IntEnum):
    """Front end -> engine."""

    RUN = 1  # key, TargetRequest, deadline seconds or None, trace carrier
    CANCEL = 2  # key
    LOAD = 3  # key: answered by Event.LOAD
    STOP = 4


class Event(IntEnum):
    """Engine -> front end."""

    READY = 1  # ServerInfo bytes, (launched ahead tracked, catch-ups tracked)
    FAILED = 2  # the exception that stopped the engine from starting
    CYCLES = 3  # key, observer calls, cycles
    END = 4  # key, observer calls, exception or None
    LOAD = 5  # key, Load
    REPORT = 6  # Report


@dataclass
class Report:
    """What the engine did since its last report, for the front end's metrics."""

    steps: list[tuple[int, float]] = field(default_factory=list)  # (rows, seconds) per engine step
    drafting: list[float] = field(default_factory=list)  # seconds per own-draft phase
    launched: list[Mapping[str, tuple[int, int]]] | None = None  # StepStats.launched_ahead of each engine
    catch_ups: PhaseStats | None = None  # the own draft's


def _crossing(exc: BaseException) -> Exception:
    """`exc` if it pickles, else an Internal error that says what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return Internal(f"{type(exc).__name__}: {exc}")


class _Recorded:
    """A session's observer in the engine process: its calls, replayed by the front end's observer."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []

    def queued(self, seconds: float) -> None:
        self.calls.append(("queued", (seconds,)))

    def cycle(self, cycle: Cycle) -> None:
        self.calls.append(("cycle", (cycle,)))

    def draft_failed(self, reason: str) -> None:
        self.calls.append(("draft_failed", (reason,)))

    def take(self) -> list[tuple[str, tuple]]:
        calls, self.calls = self.calls, []
        return calls


class EngineReports:
    """The engine's observer (server.EngineObserver) in its own process: keeps what it sees for the next report."""

    def __init__(self, limit: int = 100_000) -> None:
        self._steps: collections.deque[tuple[int, float]] = collections.deque(maxlen=limit)  # bounded: a stalled
        self._drafting: collections.deque[float] = collections.deque(maxlen=limit)  # front end loses the oldest
        self._launched: Callable[[], list] | None = None
        self._catch_ups: Callable[[], PhaseStats] | None = None

    def observe_step(self, rows: int, seconds: float) -> None:
        self._steps.append((rows, seconds))

    def observe_drafting(self, seconds: float) -> None:
        self._drafting.append(seconds)

    def track_launched(self, stats: Callable[[], list]) -> None:
        self._launched = stats

    def track_catch_ups(self, stats: Callable[[], PhaseStats]) -> None:
        self._catch_ups = stats

    @property
    def tracks(self) -> tuple[bool, bool]:
        return self._launched is not None, self._catch_ups is not None

    def report(self) -> Report:
        steps = [self._steps.popleft() for _ in range(len(self._steps))]
        drafting = [self._drafting.popleft() for _ in range(len(self._drafting))]
        return Report(steps, drafting, [dict(s) for s in self._launched()] if self._launched else None,
                      self._catch_ups() if self._catch_ups else None)


class EngineHost:
    """The engine process's side of the pipe: each session's loop on a thread of its own, as a gRPC server would
    run it, its cycles sent to the front end as the engine hands them over."""

    def __init__(self, conn: Connection, service: "TargetService", reports: EngineReports) -> None:
        self.conn, self.service, self.reports = conn, service, reports
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._cancels: dict[int, Callable[[], None]] = {}  # key -> the session's cancel
        self._cancelled: set[int] = set()  # cancelled before the session registered its cancel
        self._stopped = threading.Event()

    def send(self, message: tuple) -> None:
        with self._send_lock:
            self.conn.send(message)

    def serve(self) -> None:
        """Answer the front end until it says stop or goes away."""
        threading.Thread(target=self._report, name="engine-reports", daemon=True).start()
        try:
            while True:
                try:
                    message = self.conn.recv()
                except (EOFError, OSError):
                    log.warning("the front end is gone: the engine stops")
                    break
                command = message[0]
                if command == Command.RUN:
                    threading.Thread(target=self._session, args=message[1:], name=f"session-{message[1]}",
                                     daemon=True).start()
                elif command == Command.CANCEL:
                    self._cancel(message[1])
                elif command == Command.LOAD:
                    self.send((Event.LOAD, message[1], self.service.load()))
                elif command == Command.STOP:
                    break
        finally:
            self._stopped.set()

    def _cancel(self, key: int) -> None:
        with self._lock:
            cancel = self._cancels.get(key)
            if cancel is None:
                self._cancelled.add(key)
        if cancel is not None:
            cancel()

    def _on_cancel(self, key: int, cancel: Callable[[], None]) -> None:
        with self._lock:
            self._cancels[key] = cancel
            early = key in self._cancelled
        if early:
            cancel()

    def _session(self, key: int, request: TargetRequest, deadline_s: float | None, carrier: dict[str, str]) -> None:
        observer, error = _Recorded(), None
        try:
            with continued(carrier):  # the session's draft link carries the front end's session span on
                for cycles in self.service.run(request, lambda cancel: self._on_cancel(key, cancel), observer,
                                               deadline_s):
                    self.send((Event.CYCLES, key, observer.take(), cycles))
        except Exception as exc:  # noqa: BLE001 - it crosses to the front end, which answers with its status
            if not isinstance(exc, SpecdecError):
                log.exception("session %s failed", request.session_id)
            error = _crossing(exc)
        finally:
            with self._lock:
                self._cancels.pop(key, None)
                self._cancelled.discard(key)
        try:
            self.send((Event.END, key, observer.take(), error))
        except (OSError, ValueError):
            pass  # the front end is gone

    def _report(self) -> None:
        while not self._stopped.wait(REPORT_S):
            try:
                self.send((Event.REPORT, self.reports.report()))
            except (OSError, ValueError):
                return


def engine_main(settings: "TargetServerSettings", conn: Connection, log_level: int, threads: int,
                switch_interval_s: float) -> None:
    """The engine process: build the target's engine as `serve target` would, tell the front end it is ready
    (or why not), serve it, and end once it says stop or goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the front end drains and then stops the engine
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format="%(asctime)s target-engine %(levelname)s %(name)s: %(message)s")
    sys.setswitchinterval(switch_interval_s)
    import torch

    from specdec.serving.server import freeze_heap
    from target_service.server import build_engine

    torch.set_num_threads(threads)
    reports = EngineReports()
    try:
        engine = build_engine(settings, reports)
    except Exception as exc:  # noqa: BLE001 - the front end reports it as `serve target` would have
        log.exception("the target's engine did not start")
        conn.send((Event.FAILED, _crossing(exc)))
        os._exit(1)
    # an engine whose loop stopped on an error serves no one: the process goes, and the front end fails its sessions
    # with UNAVAILABLE and reports NOT_SERVING, as when it dies otherwise
    engine.on_failure(lambda: os._exit(1))
    frozen = freeze_heap()
    log.info("engine ready in process %d; %d objects kept out of garbage collection", os.getpid(), frozen)
    host = EngineHost(conn, engine.service, reports)
    host.send((Event.READY, engine.info.SerializeToString(), reports.tracks))
    host.serve()
    engine.stop()
    logging.shutdown()
    os._exit(0)  # as `serve` does: nothing left to save in the interpreter's teardown


class EngineProcess:
    """The front end's handle on the engine process: a TargetService's `run` and `load` over the pipe
    (target_service.service.Backend)."""

    def __init__(self, process: multiprocessing.process.BaseProcess, conn: Connection, info: common_pb2.ServerInfo,
                 metrics: Metrics, tracks: tuple[bool, bool]) -> None:
        self.process, self.conn, self.info, self.metrics = process, conn, info, metrics
        self._send_lock = threading.Lock()
        self._sessions: dict[int, queue.SimpleQueue] = {}
        self._keys = itertools.count()
        self._load = Load(0, info.max_sessions, 0)  # the last one read
        self._exit_hooks: list[Callable[[], None]] = []
        self._gone: str | None = None  # why the engine cannot be reached, once it cannot
        self._stopping = False  # told to stop: its end is expected
        self._launched: list = []
        self._catch_ups = PhaseStats()
        if tracks[0]:
            metrics.track_launched(lambda: self._launched)
        if tracks[1]:
            metrics.track_catch_ups(lambda: self._catch_ups)
        self._reader = threading.Thread(target=self._read, name="engine-reader", daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, settings: "TargetServerSettings", metrics: Metrics,
              timeout_s: float = START_TIMEOUT_S) -> "EngineProcess":
        """Start the engine process and wait until it serves (its model loaded, warmed up and compiled); raise what
        stopped it otherwise. `metrics`: fed from its reports."""
        import torch

        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no copy of this one's threads
        ours, theirs = context.Pipe(duplex=True)
        process = context.Process(target=engine_main, name="specdec-target-engine", daemon=True,
                                  args=(settings, theirs, logging.getLogger().getEffectiveLevel(),
                                        torch.get_num_threads(), sys.getswitchinterval()))
        process.start()
        theirs.close()
        deadline = time.monotonic() + timeout_s

        def exited() -> Unavailable:
            return Unavailable(f"the target's engine process exited with code {process.exitcode} before it was "
                               f"ready (its log above says why)")
        while not ours.poll(1.0):
            if not process.is_alive():
                raise exited()
            if time.monotonic() > deadline:
                process.kill()
                raise Unavailable(f"the target's engine process was not ready within {timeout_s:.0f}s")
        try:
            message = ours.recv()
        except EOFError:
            process.join(5.0)
            raise exited() from None
        if message[0] == Event.FAILED:
            process.join(5.0)
            raise message[1]
        info = common_pb2.ServerInfo()
        info.ParseFromString(message[1])
        return cls(process, ours, info, metrics, message[2])

    def on_exit(self, hook: Callable[[], None]) -> None:
        """Call `hook` once the engine process is gone (at once if it already is)."""
        self._exit_hooks.append(hook)
        if self._gone is not None:
            hook()

    def _send(self, message: tuple) -> None:
        if self._gone is not None:
            raise Unavailable(self._gone)
        try:
            with self._send_lock:
                self.conn.send(message)
        except (OSError, ValueError) as exc:
            raise Unavailable(f"the target's engine process cannot be reached: {exc}") from exc

    def run(self, request: TargetRequest, on_cancel: Callable[[Callable[[], None]], None], observer: Observer,
            deadline_s: float | None = None) -> Iterator[list[Cycle]]:
        """TargetService.run, in the engine process: every batch of cycles the engine handed over since the caller
        last asked comes as one list (a stream that falls behind sends fewer, larger messages)."""
        key = next(self._keys)
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._sessions[key] = inbox
        ended = False
        try:
            self._send((Command.RUN, key, request, deadline_s, trace_carrier()))
            on_cancel(lambda: self._cancel(key))
            while not ended:
                cycles: list[Cycle] = []
                error = None
                message = inbox.get()
                while True:
                    for method, args in message[2]:
                        getattr(observer, method)(*args)
                    if message[0] == Event.END:
                        ended, error = True, message[3]
                        break
                    cycles += message[3]
                    try:
                        message = inbox.get_nowait()
                    except queue.Empty:
                        break
                if cycles:
                    yield cycles
                if error is not None:
                    raise error
        finally:
            if not ended:  # the caller went away: the engine frees the session's slot at once
                self._cancel(key)
            self._sessions.pop(key, None)

    def _cancel(self, key: int) -> None:
        """Cancel a session still open here (after its end, gRPC's callback has nothing to cancel)."""
        if key in self._sessions and self._gone is None:
            try:
                self._send((Command.CANCEL, key))
            except Unavailable:
                pass

    def load(self) -> Load:
        """The engine's load, read from it (the last one read, once it is gone or does not answer in 5 s)."""
        key = next(self._keys)
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._sessions[key] = inbox
        try:
            self._send((Command.LOAD, key))
            message = inbox.get(timeout=5.0)
            if message[0] == Event.LOAD:
                self._load = message[2]
        except (Unavailable, queue.Empty):
            pass
        finally:
            self._sessions.pop(key, None)
        return self._load

    def _read(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                break
            if message[0] == Event.REPORT:
                self._take(message[1])
            elif (inbox := self._sessions.get(message[1])) is not None:
                inbox.put(message)
        self._gone = "the target's engine process exited"
        for key, inbox in list(self._sessions.items()):
            inbox.put((Event.END, key, [], Unavailable(self._gone)))
        if not self._stopping:  # (a stop joins the process itself)
            self.process.join(STOP_WAIT_S)
            log.error("%s (code %s): sessions in flight failed with UNAVAILABLE, and the server reports NOT_SERVING",
                      self._gone, self.process.exitcode)
        for hook in self._exit_hooks:
            hook()

    def _take(self, report: Report) -> None:
        for rows, seconds in report.steps:
            self.metrics.observe_step(rows, seconds)
        for seconds in report.drafting:
            self.metrics.observe_drafting(seconds)
        if report.launched is not None:
            self._launched = report.launched
        if report.catch_ups is not None:
            self._catch_ups = report.catch_ups

    def stop(self) -> None:
        """End the engine (after the server's last call has ended) and wait for its process, killing it if it
        does not end within STOP_WAIT_S."""
        self._stopping = True
        try:
            self._send((Command.STOP,))
        except Unavailable:
            pass
        self.process.join(STOP_WAIT_S)
        if self.process.is_alive():
            log.error("the target's engine process did not end within %.0fs: killed", STOP_WAIT_S)
            self.process.kill()
            self.process.join(5.0)
        self._reader.join(STOP_WAIT_S)
