"""Start real services (`specdec serve ...` subprocesses) on free loopback ports for integration tests."""

from __future__ import annotations

import contextlib

from specdec.launcher import Stack, free_base_port

__all__ = ["free_base_port", "running_stack"]


@contextlib.contextmanager
def running_stack(target_model: str = "tiny", draft_model: str | None = "tiny", env: dict[str, str] | None = None,
                  **extra: list[str]):
    """Extra `serve` flags per role: running_stack(target=[...], draft=[...], orchestrator=[...]); `env`
    is extra environment for the three processes."""
    stack = Stack(port=free_base_port(), target=target_model, draft=draft_model,
                  extra={role: list(flags) for role, flags in extra.items()}, env=dict(env or {}))
    stack.start(timeout_s=120)
    try:
        yield stack
    finally:
        stack.stop()
