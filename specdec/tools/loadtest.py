"""`specdec loadtest`: N concurrent clients send M requests each to an orchestrator on loopback and
report throughput, latency percentiles and errors. Bounded in count and time; loopback only."""

from __future__ import annotations

import ipaddress
import json
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc

from specdec.serving.client import Client, build_request

DEFAULT_PROMPTS = ["def fibonacci(n):", "import os\nimport sys\n", "class Config:", "for i in range("]


@dataclass
class LoadResult:
    requests: int = 0
    errors: Counter = field(default_factory=Counter)  # status code name -> count
    latencies_s: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    tokens: int = 0
    wall_s: float = 0.0
    outputs: list[list[int]] = field(default_factory=list)
    cycles: int = 0  # the target's cycles over all successful requests
    drafts: int = 0  # of them, cycles that verified drafts (what adaptive K chose under this load)
    draft_tokens: int = 0
    accepted_tokens: int = 0

    def summary(self) -> dict:
        def pct(values: list[float], q: float) -> float:
            return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) >= 2 else (values or [0.0])[0]

        return {"requests": self.requests, "ok": len(self.latencies_s), "errors": dict(self.errors),
                "throughput_requests_per_s": len(self.latencies_s) / self.wall_s if self.wall_s else 0.0,
                "throughput_tokens_per_s": self.tokens / self.wall_s if self.wall_s else 0.0,
                "latency_ms": {f"p{q}": 1e3 * pct(self.latencies_s, q) for q in (50, 90, 99)},
                "ttft_ms": {f"p{q}": 1e3 * pct(self.ttft_s, q) for q in (50, 90, 99)}, "wall_s": self.wall_s,
                "cycles": self.cycles, "drafted_cycles": self.drafts, "draft_tokens": self.draft_tokens,
                "accepted_tokens": self.accepted_tokens}


def check_loopback(address: str) -> None:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise SystemExit(f"loadtest: {address} is not a loopback address; this tool only loads local servers")


def run(address: str, concurrency: int, requests: int, prompts: list[str], max_new_tokens: int,
        deadline_s: float, timeout_s: float = 120.0) -> LoadResult:
    check_loopback(address)
    result = LoadResult()
    lock = threading.Lock()
    stop_at = time.monotonic() + deadline_s

    def worker(index: int) -> None:
        with Client(address, timeout_s=timeout_s) as client:
            for j in range(requests):
                if time.monotonic() > stop_at:
                    with lock:
                        result.errors["SKIPPED_TIME_LIMIT"] += 1
                    continue
                prompt = prompts[(index + j) % len(prompts)]
                t0 = time.perf_counter()
                try:
                    r = client.generate(build_request(prompt, max_new_tokens=max_new_tokens, ignore_eos=True))
                except grpc.RpcError as exc:
                    with lock:
                        result.requests += 1
                        result.errors[exc.code().name] += 1
                    continue
                with lock:
                    result.requests += 1
                    result.latencies_s.append(time.perf_counter() - t0)
                    result.ttft_s.append(r.stats.time_to_first_token_s)
                    result.tokens += len(r.token_ids)
                    result.outputs.append([prompts.index(prompt), *r.token_ids])
                    stats = r.stats
                    result.cycles += stats.cycles
                    result.drafts += stats.drafts
                    result.draft_tokens += stats.draft_tokens
                    result.accepted_tokens += stats.accepted_tokens

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    result.wall_s = time.perf_counter() - t0
    return result


def report(result: LoadResult, as_json: bool) -> int:
    """Print the summary; the exit status says whether every request succeeded."""
    s = result.summary()
    if as_json:
        print(json.dumps(s))
    else:
        print(f"{s['ok']}/{s['requests']} ok, errors {s['errors'] or 'none'}; "
              f"{s['throughput_requests_per_s']:.1f} req/s, {s['throughput_tokens_per_s']:.0f} tok/s; latency "
              f"p50 {s['latency_ms']['p50']:.0f} ms, p90 {s['latency_ms']['p90']:.0f} ms, p99 "
              f"{s['latency_ms']['p99']:.0f} ms; TTFT p50 {s['ttft_ms']['p50']:.0f} ms")
    return 0 if not result.errors else 1
