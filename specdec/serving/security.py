"""TLS credentials and bearer-token checks for every gRPC hop.

Public API: `authorization: Bearer <token>` against the tokens of `--api-token-file` (or
$SPECDEC_API_TOKENS). Internal hops (orchestrator -> target -> draft): the internal token of
`--internal-token-file`, and/or mutual TLS (`--tls-ca-file` + `--tls-client-auth`). Tokens are compared
in constant time. Health checking and reflection stay open so probes work.
"""

from __future__ import annotations

import hmac
import os
import pathlib
from dataclasses import dataclass

import grpc

from specdec.core.errors import InvalidArgument

OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def read_tokens(path: str | None, env: str | None = None) -> list[str]:
    """Tokens, one per line (blank lines and # comments ignored), from a file or an environment variable."""
    text = ""
    if path:
        try:
            text = pathlib.Path(path).read_text()
        except OSError as exc:
            raise InvalidArgument("token file", f"cannot read {path}: {exc}") from exc
    elif env and os.environ.get(env):
        text = os.environ[env].replace(",", "\n")
    return [t.strip() for t in text.splitlines() if t.strip() and not t.strip().startswith("#")]


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """UNAUTHENTICATED without a bearer token, PERMISSION_DENIED with a wrong one."""

    def __init__(self, tokens: list[str]) -> None:
        if not tokens:
            raise InvalidArgument("token file", "no tokens configured")
        self._tokens = [t.encode() for t in tokens]

    def _allowed(self, presented: str) -> bool:
        candidate = presented.encode()
        ok = False
        for token in self._tokens:  # no early exit: the time taken does not depend on which token matched
            ok |= hmac.compare_digest(candidate, token)
        return ok

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(OPEN_METHODS):
            return continuation(handler_call_details)
        headers = authorization_headers(handler_call_details.invocation_metadata)
        header = headers[0] if headers else ""
        if len(headers) > 1:  # which one counts would differ between checks: refuse the ambiguity
            code, message = grpc.StatusCode.UNAUTHENTICATED, "more than one `authorization` header"
        elif not header.startswith("Bearer "):
            code, message = grpc.StatusCode.UNAUTHENTICATED, "missing bearer token (metadata `authorization: Bearer ...`)"
        elif not self._allowed(header[len("Bearer "):]):
            code, message = grpc.StatusCode.PERMISSION_DENIED, "the bearer token is not accepted"
        else:
            return continuation(handler_call_details)
        return _deny(continuation(handler_call_details), code, message)


def _deny(handler, code: grpc.StatusCode, message: str):
    """A handler of the same shape as `handler` that only aborts."""
    if handler is None:
        return None

    def abort(request, context):
        context.abort(code, message)

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(abort, handler.request_deserializer, handler.response_serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(abort, handler.request_deserializer, handler.response_serializer)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(abort, handler.request_deserializer, handler.response_serializer)
    return grpc.stream_stream_rpc_method_handler(abort, handler.request_deserializer, handler.response_serializer)


def authorization_headers(metadata) -> list[str]:
    """Every `authorization` value a call carries (gRPC metadata may repeat a key)."""
    return [value for key, value in (metadata or ()) if key == "authorization"]


def bearer(token: str | None) -> tuple:
    """Outgoing metadata carrying a bearer token (empty without one)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


@dataclass(frozen=True)
class TLSFiles:
    cert: str | None = None  # PEM certificate chain of this process
    key: str | None = None  # PEM private key of this process
    ca: str | None = None  # PEM CA bundle that peers' certificates must chain to
    client_auth: bool = False  # server: require client certificates (mutual TLS)

    @property
    def enabled(self) -> bool:
        return bool(self.cert or self.ca)

    def server_credentials(self) -> grpc.ServerCredentials:
        if not (self.cert and self.key):
            raise InvalidArgument("tls", "a TLS server needs --tls-cert-file and --tls-key-file")
        ca = _read(self.ca) if self.ca else None
        if self.client_auth and ca is None:
            raise InvalidArgument("tls", "--tls-client-auth needs --tls-ca-file")
        return grpc.ssl_server_credentials([(_read(self.key), _read(self.cert))], root_certificates=ca,
                                           require_client_auth=self.client_auth)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca) if self.ca else None,
            private_key=_read(self.key) if self.key else None,
            certificate_chain=_read(self.cert) if self.cert else None)


def _read(path: str) -> bytes:
    try:
        return pathlib.Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgument("tls", f"cannot read {path}: {exc}") from exc
