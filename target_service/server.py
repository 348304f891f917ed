"""`specdec serve target`: wire a target runner (batched by default) into a gRPC server, from typed settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Protocol

from specdec.core.batching import BatchedRunner, check_stream_interval, serving_runner
from specdec.core.compute import Compute
from specdec.core.config import EngineProcessMode, ProposerKind
from specdec.core.cpu_kernels import ONEDNN
from specdec.core.errors import InvalidArgument
from specdec.core.models import LoadedModel, check_same_vocabulary, context_length, eos_ids_of, load_model
from specdec.core.stats import PhaseStats
from specdec.proposers import make_factory, own_drafts
from specdec.proposers.draft_model import warm_up
from specdec.proposers.replay import ReplayRates, replay_factory
from specdec.serving.security import TLSFiles
from specdec.serving.server import Server, ServerSettings
from specdec.serving.telemetry import Metrics, server_interceptors
from specdec.v1 import common_pb2, target_pb2, target_pb2_grpc
from target_service.draft_link import DraftLinks
from target_service.engine_process import EngineProcess
from target_service.service import TargetService, TargetSettings
from target_service.servicer import TargetServicer

log = logging.getLogger("specdec.target")


@dataclass(frozen=True)
class TargetServerSettings:
    server: ServerSettings
    target: str = "tiny"
    device: str = "cpu"
    dtype: str = "auto"
    max_len: int = 2048
    max_sessions: int = 16
    queue_size: int = 256  # sessions that may wait for a KV slot (FIFO)
    queue_timeout_s: float = 120.0  # how long one may wait
    cpu_kernels: str = ONEDNN
    batching: bool = True  # all sessions' forwards of a step in one batched forward (core/batching.py)
    gather_s: float = 0.02  # the most a step waits for the sessions the last one answered (docs/benchmarks.md)
    prefill_chunk: int = 512  # prompt tokens of one session per step
    lookahead: bool = True  # on a GPU, launch a step of plain greedy decodes before reading the last (core.batching)
    stream_interval: int | None = None  # a session's cycles are streamed this many at a time (its first at once;
    # None: auto, by the load, BatchedRunner)
    compile: bool = True  # on a GPU, torch.compile the decoder layers of the target (and own draft) at start
    engine_process: EngineProcessMode = EngineProcessMode.AUTO  # the engine and the sessions' loops in a child
    # process, gRPC in this one (auto: for a CUDA target)
    own_draft: str | None = None  # a draft model run in this process, drafting between the engine's steps
    replay_references: str | None = None  # benchmarks: the own draft replays the target's continuations from this file
    replay: ReplayRates = ReplayRates()
    session: TargetSettings = TargetSettings()
    draft_tls: TLSFiles | None = None  # TLS (mTLS with a client cert) towards drafts
    internal_token: str | None = None  # bearer token presented to drafts

    def validate(self) -> "TargetServerSettings":
        if self.max_sessions < 1:
            raise InvalidArgument("max_sessions", f"must be >= 1, got {self.max_sessions}")
        if self.queue_size < 0:
            raise InvalidArgument("queue_size", f"must be >= 0, got {self.queue_size}")
        if not self.queue_timeout_s > 0:
            raise InvalidArgument("queue_timeout", f"must be > 0 seconds, got {self.queue_timeout_s}")
        if self.gather_s < 0:
            raise InvalidArgument("batch_gather_ms", f"must be >= 0, got {self.gather_s * 1000}")
        if (check_stream_interval(self.stream_interval) or 1) > 1 and not self.batching:
            raise InvalidArgument("stream_interval", "holds cycles in the batched engine; --no-batching streams "
                                                     "every cycle as it is committed")
        if self.own_draft is not None and not self.batching:
            raise InvalidArgument("own_draft", "drafts between the batched engine's steps; --no-batching has none")
        if self.replay_references is not None:
            if self.own_draft is None:
                raise InvalidArgument("replay_references", "replays a draft's cost: give the target --own-draft "
                                                           "(or give the flag to a draft service)")
            self.replay.validate()
        if self.prefill_chunk < 32:
            raise InvalidArgument("prefill_chunk", f"must be >= 32 tokens, got {self.prefill_chunk}")
        if self.session.max_new_tokens < 1:
            raise InvalidArgument("max_new_tokens_limit", f"must be >= 1, got {self.session.max_new_tokens}")
        if not self.session.draft_timeout_s > 0:
            raise InvalidArgument("draft_timeout", f"must be > 0 seconds, got {self.session.draft_timeout_s}")
        return self


@dataclass
class OwnDraft:
    name: str
    runner: BatchedRunner  # without an engine loop: it drafts on the target engine's thread


def load_own_draft(settings: TargetServerSettings, target: LoadedModel) -> OwnDraft:
    """The target's own draft: loaded on the target's device, over a batched runner with no engine loop of its
    own, warmed up before serving (as a draft service's is)."""
    loaded = load_model(settings.own_draft, "draft", device=settings.device, dtype=settings.dtype)
    check_same_vocabulary(target, loaded)
    return OwnDraft(loaded.name, own_draft_runner(loaded, settings.max_len, settings.max_sessions,
                                                  cpu_kernels=settings.cpu_kernels,
                                                  compile=settings.compile))


def own_draft_runner(loaded: LoadedModel, max_len: int, max_sessions: int, **kwargs) -> BatchedRunner:
    """A draft's batched runner with no engine loop (it drafts on the target engine's thread), warmed up.
    `kwargs`: BatchedRunner's."""
    runner = BatchedRunner(loaded.model, launch=None, max_len=context_length(loaded.model, max_len),
                           max_sessions=max_sessions, **kwargs)
    warm_up(runner)
    return runner


class EngineObserver(Protocol):
    """What watches a target's engine (telemetry.Metrics; in an engine process, what it reports to its front end)."""

    def observe_step(self, rows: int, seconds: float) -> None: ...

    def observe_drafting(self, seconds: float) -> None: ...

    def track_launched(self, stats: Callable[[], Iterable[Mapping[str, tuple[int, int]]]]) -> None: ...

    def track_catch_ups(self, stats: Callable[[], PhaseStats]) -> None: ...


@dataclass
class Engine:
    """A target's engine and the sessions' logic over it, ready to serve."""

    service: TargetService
    info: common_pb2.ServerInfo
    stop: Callable[[], None]  # ends the engine's loop, once the last session has
    on_failure: Callable[[Callable[[], None]], None]  # calls a hook once the engine's loop stopped on an error


def build_engine(settings: TargetServerSettings, observer: EngineObserver) -> Engine:
    """Load the target (and its own draft), start its engine, wire `observer` to it."""
    compute = Compute.for_device(settings.device)  # load and run on one thread (core/compute.py says why)
    loaded = compute.run(load_model, settings.target, "target", device=settings.device, dtype=settings.dtype)
    own_draft = None  # loaded before the engine starts: on a CPU it takes over the compute thread
    if settings.own_draft is not None:
        own_draft = compute.run(load_own_draft, settings, loaded)
    runner, compute = serving_runner(
        compute, loaded.model, batching=settings.batching, gather_s=settings.gather_s,
        prefill_chunk=settings.prefill_chunk, lookahead=None if settings.lookahead else False,
        stream_interval=settings.stream_interval, compile=settings.compile,
        max_len=context_length(loaded.model, settings.max_len), max_sessions=settings.max_sessions,
        cpu_kernels=settings.cpu_kernels, queue_size=settings.queue_size,
        queue_wait_s=settings.queue_timeout_s)
    info = common_pb2.ServerInfo(model=loaded.name, vocab_fingerprint=loaded.fingerprint, role="target",
                                 max_sessions=settings.max_sessions, context_length=runner.max_len,
                                 own_draft=own_draft.name if own_draft else "")
    own = None
    if own_draft is not None:
        own = own_drafts(replay_factory(own_draft.runner, settings.replay_references, settings.replay)
                         if settings.replay_references else
                         make_factory(ProposerKind.DRAFT_MODEL, own_draft.runner, runner.vocab_size))
        runner.drafter = own
    links = DraftLinks(vocab_size=runner.vocab_size, device=runner.device, timeout_s=settings.session.draft_timeout_s,
                       tls=settings.draft_tls, token=settings.internal_token)
    service = TargetService(runner, eos_ids_of(loaded.tokenizer, loaded.model), links, settings.session, compute,
                            own_drafts=own)
    if isinstance(runner, BatchedRunner):
        runner.on_step = observer.observe_step
        runner.on_drafting = observer.observe_drafting
        engines = [runner] + ([own_draft.runner] if own_draft is not None else [])
        observer.track_launched(lambda: [engine.stats.launched_ahead() for engine in engines])
        if own is not None:
            observer.track_catch_ups(lambda: own.stats)
    if isinstance(runner, BatchedRunner):
        return Engine(service, info, runner.stop, runner.on_failure)
    return Engine(service, info, lambda: None, lambda hook: None)  # one loop per session: an error ends only its own


def build(settings: TargetServerSettings) -> Server:
    settings.validate()
    metrics = Metrics("target")
    apart = settings.engine_process.apart(settings.device)
    if apart:
        if not EngineProcessMode.AUTO.apart(settings.device):  # asked for where auto would keep the target whole
            log.warning("--engine-process on a CPU: the front end's gRPC threads then take cores from the engine's "
                        "OpenMP team instead of waiting for its interpreter (measured slower on two CPUs, "
                        "docs/benchmarks.md); it is meant for GPU targets")
        log.info("the engine runs in a child process, gRPC in this one (--engine-process %s)",
                 settings.engine_process.value)
        engine = EngineProcess.start(settings, metrics)
        backend, info, stop = engine, engine.info, engine.stop
    else:
        built = build_engine(settings, metrics)
        backend, info, stop = built.service, built.info, built.stop
    name = target_pb2.DESCRIPTOR.services_by_name["TargetService"].full_name
    server = Server(settings.server, [(target_pb2_grpc.add_TargetServiceServicer_to_server,
                                       TargetServicer(backend, info, metrics), name)],
                    interceptors=server_interceptors(), metrics=metrics, on_stop=stop)
    if apart:  # the engine gone, the front end says so (a pod's probes restart it)
        engine.on_exit(lambda: server.set_serving(False))
    else:  # so does an engine whose loop stopped on an error
        built.on_failure(lambda: server.set_serving(False))
    return server
