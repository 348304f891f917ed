"""Server and channel construction shared by the three services: health checking, reflection, the error
interceptor, keepalive settings. No service logic lives here."""

from __future__ import annotations

import gc
import time
from concurrent import futures
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from specdec.core import errors
from specdec.serving.interceptors import ErrorInterceptor
from specdec.serving.security import TLSFiles, TokenAuthInterceptor


class Role(str, Enum):
    """What a specdec server is (`specdec serve ROLE`)."""

    TARGET = "target"
    DRAFT = "draft"
    ORCHESTRATOR = "orchestrator"


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 0
    max_workers: int = 64  # each streaming session holds a worker thread
    max_message_bytes: int = 16 * 1024 * 1024
    tls: TLSFiles = TLSFiles()  # no cert: plaintext
    tokens: tuple[str, ...] = ()  # accepted bearer tokens; empty: no token check


def channel_options(max_message_bytes: int = 16 * 1024 * 1024) -> list[tuple[str, int]]:
    return [("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000),
            # reconnect quickly to a (re)started peer: the default backoff grows to two minutes, and even at
            # 1 s a backend that came up just after a failed attempt stayed out of routing that long
            ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 250)]


# Accept our clients' keepalive pings (every 10 s, see channel_options) during long streams: by default a
# server counts them as abuse and after two strikes sends GOAWAY, which kills generations longer than ~20 s.
SERVER_KEEPALIVE = [("grpc.keepalive_permit_without_calls", 1),
                    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
                    ("grpc.http2.max_ping_strikes", 0)]


def freeze_heap() -> int:
    """Move every object built before serving (models, compiled programs, graphs: about a million) out of the
    garbage collector's reach, and return how many. None of it becomes garbage while the process serves, and a
    full collection over it stalls every session for hundreds of milliseconds (0.3-0.6 s measured, after
    compiling; docs/benchmarks.md); vLLM and SGLang freeze their heap after start for the same reason. What is
    frozen is never collected until `gc.unfreeze()`."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class Server:
    """A grpc.Server with health checking, reflection and the error interceptor."""

    def __init__(self, settings: ServerSettings, register: Iterable[tuple[Callable, object, str]],
                 interceptors: Iterable[grpc.ServerInterceptor] = (), metrics=None,
                 ready: Callable[[], bool] = lambda: True, on_stop: Callable[[], None] = lambda: None) -> None:
        """`ready`: whether the registered services can do their work now (the orchestrator: whether it
        can route); their own health names say so, while "" only says the process serves. `on_stop`: what
        to end once the last call has (a batching engine)."""
        self.settings = settings
        self.ready = ready
        self.on_stop = on_stop
        self._serving = False
        self.metrics = metrics  # the service's telemetry.Metrics, served on --metrics-port
        auth = [TokenAuthInterceptor(list(settings.tokens))] if settings.tokens else []
        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=settings.max_workers),
                                interceptors=[*auth, *interceptors, ErrorInterceptor()],
                                options=channel_options(settings.max_message_bytes) + SERVER_KEEPALIVE)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        names = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
        self.service_names = []
        for add, servicer, full_name in register:
            add(servicer, self.grpc)
            self.service_names.append(full_name)
        reflection.enable_server_reflection([*self.service_names, *names], self.grpc)
        bind = f"{settings.host}:{settings.port}"
        if settings.tls.cert:
            self.port = self.grpc.add_secure_port(bind, settings.tls.server_credentials())
        else:
            self.port = self.grpc.add_insecure_port(bind)
        if self.port == 0:
            raise errors.Unavailable(f"cannot bind {settings.host}:{settings.port}")

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    def start(self) -> None:
        self.grpc.start()
        self.set_serving(True)

    def set_serving(self, serving: bool) -> None:
        self._serving = serving
        self.health.set("", _status(serving))
        self.refresh_readiness()

    def refresh_readiness(self) -> None:
        """Re-evaluate `ready` for the services' health names (called when what it depends on changes)."""
        status = _status(self._serving and self.ready())
        for name in self.service_names:
            self.health.set(name, status)

    def stop(self, grace: float | None = 2.0) -> None:
        """Readiness goes NOT_SERVING first (so load balancers stop routing), new calls are refused, and
        running calls get up to `grace` seconds to finish."""
        self.set_serving(False)
        self.grpc.stop(grace).wait()
        self.on_stop()


def _status(serving: bool) -> int:
    return health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING


def make_channel(address: str, tls: TLSFiles | None = None, server_name: str | None = None) -> grpc.Channel:
    """A channel with our options; TLS (and a client certificate for mTLS) when `tls` is enabled.
    `server_name`: the name to check the server's certificate against when dialling an IP."""
    if tls is not None and tls.enabled:
        options = channel_options() + ([("grpc.ssl_target_name_override", server_name)] if server_name else [])
        return grpc.secure_channel(address, tls.channel_credentials(), options=options)
    return grpc.insecure_channel(address, options=channel_options())


def wait_healthy(address: str, timeout: float, tls: TLSFiles | None = None, service: str = "") -> None:
    """Block until a server answers SERVING for `service` ("" = the process) on the health service, or
    raise Unavailable."""
    deadline = time.monotonic() + timeout
    with make_channel(address, tls) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise errors.Unavailable(f"{address} did not become healthy within {timeout:.0f}s")
            time.sleep(0.1)
