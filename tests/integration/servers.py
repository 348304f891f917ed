"""Start real services (`specdec serve ...` subprocesses) on free loopback ports for integration tests."""

from __future__ import annotations

import contextlib
import os
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from specdec.tools.launcher import Stack, free_base_port

__all__ = ["apart", "free_base_port", "running_stack", "scrape"]


def scrape(port: int) -> dict:
    """A service's Prometheus metrics on --metrics-port: {(name, labels without role): value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "role")))] = s.value
    return samples


def apart(role: str) -> list[str]:
    """`serve` flags that put the target and the draft on disjoint CPUs of this machine, so the draft is
    not co-located with its target and drafts ahead (overlap) as it would on a machine of its own."""
    cpus = sorted(os.sched_getaffinity(0))
    assert len(cpus) >= 2, "overlap through the services needs two CPUs"
    half = len(cpus) // 2
    mine = cpus[:half] if role == "target" else cpus[half:]
    return ["--cpus", ",".join(map(str, mine))]


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
