"""gRPC plumbing shared by the three services: error mapping, server and channel construction,
and protobuf <-> core conversions used by more than one servicer. No service logic lives here."""

from __future__ import annotations

import logging
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from specdec import errors
from specdec.config import FinishReason, SamplingParams
from specdec.placement import Placement
from specdec.security import TLSFiles, TokenAuthInterceptor
from specdec.v1 import common_pb2

log = logging.getLogger("specdec.grpc")

STATUS_OF: list[tuple[type[Exception], grpc.StatusCode]] = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Internal, grpc.StatusCode.INTERNAL),
]


def error_from_status(code: grpc.StatusCode, details: str) -> errors.SpecdecError:
    """The inverse of the interceptor's mapping: a backend's status becomes the same domain error, so the
    orchestrator passes a target's precise status on to its client. Only UNAVAILABLE stays retryable: a
    deterministic failure (INTERNAL, or a code we have no class for) must not invite a retry loop."""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        field, _, reason = (details or "request: invalid").partition(": ")
        return errors.InvalidArgument(field, reason or details)
    for cls, mapped in STATUS_OF:
        if mapped == code and cls is not errors.InvalidArgument:
            return cls(details)
    return errors.Internal(f"{code.name}: {details}")


def status_of(exc: Exception) -> grpc.StatusCode:
    for cls, code in STATUS_OF:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def _abort(context: grpc.ServicerContext, exc: Exception, method: str) -> None:
    if context.code() is not None:  # the handler already aborted (context.abort raises): keep its status
        raise exc
    code = status_of(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("internal error in %s", method)
        context.abort(code, f"internal error: {type(exc).__name__}: {exc}")
    context.abort(code, str(exc))


class _Malformed:
    """Stands in for a request whose bytes are not a valid message (bad wire format, invalid UTF-8)."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _safe(deserializer):
    """Deserialize without letting a malformed message become INTERNAL inside grpc."""
    if deserializer is None:
        return None

    def parse(data: bytes):
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and others
            return _Malformed(exc)
    return parse


def _check(request):
    if isinstance(request, _Malformed):
        raise errors.InvalidArgument("request", f"malformed protobuf message: {request.error}")
    return request


def _checked_stream(iterator):
    for request in iterator:
        yield _check(request)


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps the core's exceptions to gRPC status codes, once, for every method.

    Servicers raise plain domain errors; clients get INVALID_ARGUMENT, NOT_FOUND, ... with the error's
    text. Anything unexpected is logged with its traceback and becomes INTERNAL.
    """

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        def wrap_unary(fn):
            def inner(request, context):
                try:
                    return fn(_check(request), context)
                except errors.SpecdecError as exc:
                    _abort(context, exc, method)
                except Exception as exc:  # noqa: BLE001 - the boundary: report, don't crash the server
                    _abort(context, exc, method)
            return inner

        def wrap_stream(fn):
            def inner(request, context):
                try:
                    request = _checked_stream(request) if handler.request_streaming else _check(request)
                    yield from fn(request, context)
                except grpc.RpcError:  # reading the client's stream failed: the client went away
                    if context.is_active():
                        raise
                except errors.SpecdecError as exc:
                    _abort(context, exc, method)
                except Exception as exc:  # noqa: BLE001
                    _abort(context, exc, method)
            return inner

        deserialize = _safe(handler.request_deserializer)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(wrap_unary(handler.unary_unary), deserialize,
                                                       handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(wrap_stream(handler.unary_stream), deserialize,
                                                        handler.response_serializer)
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(wrap_stream(handler.stream_stream), deserialize,
                                                         handler.response_serializer)
        return handler


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
            # reconnect quickly to a restarted peer (the default backoff grows to two minutes)
            ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 1_000)]


# Accept our clients' keepalive pings (every 10 s, see channel_options) during long streams: by default a
# server counts them as abuse and after two strikes sends GOAWAY, which kills generations longer than ~20 s.
SERVER_KEEPALIVE = [("grpc.keepalive_permit_without_calls", 1),
                    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
                    ("grpc.http2.max_ping_strikes", 0)]


class Server:
    """A grpc.Server with health checking, reflection and the error interceptor."""

    def __init__(self, settings: ServerSettings, register: Iterable[tuple[Callable, object, str]],
                 interceptors: Iterable[grpc.ServerInterceptor] = (), metrics=None) -> None:
        self.settings = settings
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
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self.service_names]:
            self.health.set(name, status)

    def stop(self, grace: float | None = 2.0) -> None:
        """Readiness goes NOT_SERVING first (so load balancers stop routing), new calls are refused, and
        running calls get up to `grace` seconds to finish."""
        self.set_serving(False)
        self.grpc.stop(grace).wait()

    def wait(self) -> None:
        self.grpc.wait_for_termination()


def make_channel(address: str, tls: TLSFiles | None = None, server_name: str | None = None) -> grpc.Channel:
    """A channel with our options; TLS (and a client certificate for mTLS) when `tls` is enabled.
    `server_name`: the name to check the server's certificate against when dialling an IP."""
    if tls is not None and tls.enabled:
        options = channel_options() + ([("grpc.ssl_target_name_override", server_name)] if server_name else [])
        return grpc.secure_channel(address, tls.channel_credentials(), options=options)
    return grpc.insecure_channel(address, options=channel_options())


def wait_healthy(address: str, timeout: float, tls: TLSFiles | None = None) -> None:
    """Block until a server answers SERVING on the health service, or raise Unavailable."""
    deadline = time.monotonic() + timeout
    with make_channel(address, tls) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise errors.Unavailable(f"{address} did not become healthy within {timeout:.0f}s")
            time.sleep(0.1)


PROPOSER_TO_PB = {"draft-model": common_pb2.PROPOSER_KIND_DRAFT_MODEL, "ngram": common_pb2.PROPOSER_KIND_NGRAM,
                  "hybrid": common_pb2.PROPOSER_KIND_HYBRID}
PROPOSER_FROM_PB = {v: k for k, v in PROPOSER_TO_PB.items()}
FINISH_TO_PB = {FinishReason.LENGTH: common_pb2.FINISH_REASON_LENGTH, FinishReason.EOS: common_pb2.FINISH_REASON_EOS,
                FinishReason.STOP: common_pb2.FINISH_REASON_STOP}  # CANCELLED never reaches a client
FINISH_FROM_PB = {v: k for k, v in FINISH_TO_PB.items()}


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
