"""The error interceptor: the core's exceptions become gRPC status codes, once, for every method; and a
backend's status becomes the same domain error again (`error_from_status`)."""

from __future__ import annotations

import logging

import grpc

from specdec.core import errors

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
