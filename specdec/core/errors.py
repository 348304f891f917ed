"""Domain errors. Core code raises these with a clear message; the gRPC error interceptor maps each
class to one status code, so servicers never build statuses by hand."""

from __future__ import annotations


class SpecdecError(Exception):
    """Base class: every error the core raises on purpose."""


class InvalidArgument(SpecdecError, ValueError):
    """A request field is wrong. `field` names it so the client knows what to fix."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def __reduce__(self):  # crosses a process boundary whole (target_service.engine_process)
        return type(self), (self.field, self.reason)


class NotFound(SpecdecError, KeyError):
    """A named thing (a session) does not exist, or no longer does."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class AlreadyExists(SpecdecError):
    """A thing with this name (a session id) already exists."""


class ResourceExhausted(SpecdecError):
    """A configured limit (sessions, KV slots, context length) is reached; retry later or elsewhere."""


class FailedPrecondition(SpecdecError):
    """The system is not in a state that allows the call (e.g. draft and target tokenizers differ)."""


class Unavailable(SpecdecError):
    """A backend service cannot be reached or died mid-request."""


class Internal(SpecdecError):
    """A backend failed in a way retrying will not fix (a bug, or input it should have refused)."""


class DeadlineExceeded(SpecdecError):
    """The request's deadline passed on a backend."""


class VocabularyMismatch(FailedPrecondition):
    """Draft and target tokenizers differ, so token ids would mean different text."""
