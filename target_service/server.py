"""`specdec serve target`: wire a target runner (batched by default) into a gRPC server, from typed settings."""

from __future__ import annotations

from dataclasses import dataclass

from specdec.core.batching import BatchedRunner, serving_runner
from specdec.core.compute import Compute
from specdec.core.cpu_kernels import ONEDNN
from specdec.core.errors import InvalidArgument
from specdec.core.models import context_length, eos_ids_of, load_model
from specdec.serving.security import TLSFiles
from specdec.serving.server import Server, ServerSettings
from specdec.serving.telemetry import Metrics, server_interceptors
from specdec.v1 import common_pb2, target_pb2, target_pb2_grpc
from target_service.draft_link import DraftLinks
from target_service.service import TargetService, TargetSettings
from target_service.servicer import TargetServicer


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
    stream_interval: int = 1  # a session's cycles are streamed this many at a time (its first at once)
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
        if self.stream_interval < 1:
            raise InvalidArgument("stream_interval", f"must be >= 1 cycle, got {self.stream_interval}")
        if self.stream_interval > 1 and not self.batching:
            raise InvalidArgument("stream_interval", "holds cycles in the batched engine; --no-batching streams "
                                                     "every cycle as it is committed")
        if self.prefill_chunk < 32:
            raise InvalidArgument("prefill_chunk", f"must be >= 32 tokens, got {self.prefill_chunk}")
        if self.session.max_new_tokens < 1:
            raise InvalidArgument("max_new_tokens_limit", f"must be >= 1, got {self.session.max_new_tokens}")
        if not self.session.draft_timeout_s > 0:
            raise InvalidArgument("draft_timeout", f"must be > 0 seconds, got {self.session.draft_timeout_s}")
        return self


def build(settings: TargetServerSettings) -> Server:
    settings.validate()
    compute = Compute.for_device(settings.device)  # load and run on one thread (core/compute.py says why)
    loaded = compute.run(load_model, settings.target, "target", device=settings.device, dtype=settings.dtype)
    runner, compute = serving_runner(
        compute, loaded.model, batching=settings.batching, gather_s=settings.gather_s,
        prefill_chunk=settings.prefill_chunk, lookahead=None if settings.lookahead else False,
        stream_interval=settings.stream_interval,
        max_len=context_length(loaded.model, settings.max_len), max_sessions=settings.max_sessions,
        cpu_kernels=settings.cpu_kernels, queue_size=settings.queue_size,
        queue_wait_s=settings.queue_timeout_s)
    info = common_pb2.ServerInfo(model=loaded.name, vocab_fingerprint=loaded.fingerprint, role="target",
                                 max_sessions=settings.max_sessions, context_length=runner.max_len)
    links = DraftLinks(vocab_size=runner.vocab_size, device=runner.device, timeout_s=settings.session.draft_timeout_s,
                       tls=settings.draft_tls, token=settings.internal_token)
    service = TargetService(runner, eos_ids_of(loaded.tokenizer, loaded.model), links, settings.session, compute)
    metrics = Metrics("target")
    if isinstance(runner, BatchedRunner):
        runner.on_step = metrics.observe_step
    name = target_pb2.DESCRIPTOR.services_by_name["TargetService"].full_name
    return Server(settings.server, [(target_pb2_grpc.add_TargetServiceServicer_to_server,
                                     TargetServicer(service, info, metrics), name)],
                  interceptors=server_interceptors(), metrics=metrics,
                  on_stop=runner.stop if isinstance(runner, BatchedRunner) else lambda: None)
