"""`specdec serve draft`: wire a proposer factory (over a batched runner by default) into a gRPC server, from typed
settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from draft_service.service import DraftService
from draft_service.servicer import DraftServicer
from specdec.core.batching import BatchedRunner, serving_runner
from specdec.core.compute import Compute
from specdec.core.config import ProposerKind
from specdec.core.cpu_kernels import ONEDNN
from specdec.core.drafting import Predraft, predraft_policy
from specdec.core.errors import InvalidArgument
from specdec.core.models import context_length, load_model, load_tokenizer, vocab_fingerprint
from specdec.core.proposal import ProposerFactory
from specdec.core.runner import SLOT_WAIT_S, ModelRunner
from specdec.proposers import make_factory
from specdec.proposers.draft_model import warm_up
from specdec.proposers.replay import ReplayRates, replay_factory
from specdec.serving.convert import proposer_to_pb
from specdec.serving.server import Server, ServerSettings
from specdec.serving.telemetry import Metrics, server_interceptors
from specdec.v1 import common_pb2, draft_pb2, draft_pb2_grpc

log = logging.getLogger("specdec.draft")


@dataclass(frozen=True)
class DraftServerSettings:
    server: ServerSettings
    draft: str = "tiny"  # the draft model spec
    target: str = "tiny"  # the target's spec: its tokenizer is prompt lookup's vocabulary
    device: str = "cpu"
    dtype: str = "auto"
    max_len: int = 2048
    max_sessions: int = 16
    cpu_kernels: str = ONEDNN
    proposer: ProposerKind = ProposerKind.DRAFT_MODEL
    predraft: Predraft = Predraft.AUTO
    idle_timeout_s: float = 60.0  # a session without messages this long is reclaimed
    replay_references: str | None = None  # benchmarks: replay the target's continuations from this file
    replay: ReplayRates = ReplayRates()
    batching: bool = True  # all sessions' draft steps in one batched forward (core/batching.py)
    gather_s: float = 0.02  # the most a step waits for the sessions the last one answered (docs/benchmarks.md)
    compile: bool = True  # on a GPU, torch.compile the draft's decoder layers at start (batched)

    def validate(self) -> "DraftServerSettings":
        if self.max_sessions < 1:
            raise InvalidArgument("max_sessions", f"must be >= 1, got {self.max_sessions}")
        if not self.idle_timeout_s > 0:
            raise InvalidArgument("idle_timeout", f"must be > 0 seconds, got {self.idle_timeout_s}")
        if self.batching and self.predraft == Predraft.ON and self.proposer != ProposerKind.NGRAM:
            raise InvalidArgument("predraft", "pre-drafting's branch rows are not batched yet: --predraft on "
                                              "needs --no-batching")
        if self.replay_references is not None:
            self.replay.validate()
            if self.proposer != ProposerKind.DRAFT_MODEL:
                raise InvalidArgument("replay_references",
                                      f"replays a draft model's cost; --proposer {self.proposer.value} has none")
        return self


def build(settings: DraftServerSettings) -> Server:
    settings.validate()
    runner = None
    lookup = settings.proposer == ProposerKind.NGRAM
    compute = Compute.for_device(None if lookup else settings.device)  # core/compute.py says why
    if lookup:  # prompt lookup: no model, no GPU; the vocabulary is the target's tokenizer's
        tokenizer = load_tokenizer(settings.target)
        model_name, fingerprint = f"ngram ({settings.target} tokenizer)", vocab_fingerprint(tokenizer)
        context = settings.max_len
    else:
        loaded = compute.run(load_model, settings.draft, "draft", device=settings.device, dtype=settings.dtype)
        runner, compute = serving_runner(
            compute, loaded.model, batching=settings.batching, gather_s=settings.gather_s,
            compile=settings.compile,
            max_len=context_length(loaded.model, settings.max_len), max_sessions=settings.max_sessions,
            cpu_kernels=settings.cpu_kernels, queue_size=settings.max_sessions, queue_wait_s=SLOT_WAIT_S)
        model_name, fingerprint, context = loaded.name, loaded.fingerprint, runner.max_len
        compute.run(warm_up, runner)
    info = common_pb2.ServerInfo(model=model_name, vocab_fingerprint=fingerprint, role="draft",
                                 max_sessions=settings.max_sessions, context_length=context,
                                 proposer=proposer_to_pb(settings.proposer))
    batched = isinstance(runner, BatchedRunner)
    if batched and settings.predraft == Predraft.AUTO:
        log.info("pre-drafting is off: batched drafting does not batch its branch rows yet (--no-batching keeps it)")
    predraft = Predraft.OFF if batched else settings.predraft
    service = DraftService(factory(settings, runner), idle_timeout_s=settings.idle_timeout_s,
                           predraft=predraft_policy(predraft, runner.device if runner else None),
                           placement=runner.placement if runner else None, compute=compute,
                           vocab_size=runner.vocab_size if runner else None)
    free_slots = (lambda: runner.free_slots) if runner else (lambda: settings.max_sessions - len(service.sessions))
    metrics = Metrics("draft")
    if batched:
        runner.on_step = metrics.observe_step
    servicer = DraftServicer(service, info, free_slots, metrics)
    name = draft_pb2.DESCRIPTOR.services_by_name["DraftService"].full_name
    server = Server(settings.server, [(draft_pb2_grpc.add_DraftServiceServicer_to_server, servicer, name)],
                    interceptors=server_interceptors(), metrics=metrics, on_stop=runner.stop if batched else lambda: None)
    if batched:  # an engine whose loop stopped on an error: NOT_SERVING, so that its probes restart it
        runner.on_failure(lambda: server.set_serving(False))
    return server


def factory(settings: DraftServerSettings, runner: ModelRunner | None) -> ProposerFactory:
    """The proposers this draft serves; with replay references, a replayed draft (benchmarks only)."""
    if settings.replay_references is None:
        return make_factory(settings.proposer, runner)
    return replay_factory(runner, settings.replay_references, settings.replay)
