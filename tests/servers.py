"""Start real services (`specdec serve ...` subprocesses) on free loopback ports for integration tests."""

from __future__ import annotations

import contextlib
import random
import socket

from specdec.launcher import Stack


def free_base_port(count: int = 3) -> int:
    """A port p such that p .. p+count-1 are all free on 127.0.0.1."""
    for _ in range(200):
        base = random.randint(20000, 60000)
        try:
            with contextlib.ExitStack() as stack:
                for i in range(count):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
    raise RuntimeError("no free ports")


@contextlib.contextmanager
def running_stack(target_model: str = "tiny", draft_model: str | None = "tiny", **extra: list[str]):
    """Extra `serve` flags per role: running_stack(target=[...], draft=[...], orchestrator=[...])."""
    stack = Stack(port=free_base_port(), target=target_model, draft=draft_model,
                  extra={role: list(flags) for role, flags in extra.items()})
    stack.start(timeout_s=120)
    try:
        yield stack
    finally:
        stack.stop()
