"""`specdec loadtest`: N concurrent clients send M requests each to an orchestrator on loopback and
report throughput, latency percentiles and errors. Bounded in count and time; loopback only. The same
clients drive an in-process engine (`run_clients`, tools/inprocess.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import logging
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterator

import grpc

from specdec.core.config import SamplingParams
from specdec.core.errors import SpecdecError
from specdec.serving.client import Client, build_request
from specdec.serving.interceptors import status_of

log = logging.getLogger("specdec.loadtest")
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
    seeds: list[int | None] = field(default_factory=list)  # the seed each output's request carried (None: its
    #                                                        client's sampling seed)
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


@dataclass
class Reply:
    """One finished request, as a load client counts it."""

    token_ids: list[int]
    ttft_s: float
    cycles: int = 0  # the target's cycles
    drafts: int = 0  # of them, cycles that verified drafts
    draft_tokens: int = 0
    accepted_tokens: int = 0


Call = Callable[[str, int, "int | None"], Reply]  # (prompt, max_new_tokens, seed: None for the client's sampling
#                                                    seed) -> the reply; raises on a failed request


def error_name(exc: Exception) -> str:
    """A failed request's status code name, whether it failed over gRPC or in this process (where an error
    the core did not raise on purpose is a bug: its traceback is logged)."""
    if isinstance(exc, grpc.RpcError):
        return exc.code().name
    if not isinstance(exc, SpecdecError):
        log.error("a request failed in this process", exc_info=exc)
    return status_of(exc).name


@contextlib.contextmanager
def grpc_client(address: str, timeout_s: float = 120.0, sampling: SamplingParams = SamplingParams()) -> Iterator[Call]:
    """One client of an orchestrator: requests by prompt text, EOS ignored, sampling as `sampling` says."""
    with Client(address, timeout_s=timeout_s) as client:
        def call(prompt: str, max_new_tokens: int, seed: int | None = None) -> Reply:
            r = client.generate(build_request(prompt, sampling=with_seed(sampling, seed),
                                              max_new_tokens=max_new_tokens, ignore_eos=True))
            s = r.stats
            return Reply(list(r.token_ids), s.time_to_first_token_s, s.cycles, s.drafts, s.draft_tokens,
                         s.accepted_tokens)
        yield call


def with_seed(sampling: SamplingParams, seed: int | None) -> SamplingParams:
    """`sampling` with a request's own seed (None: as it is)."""
    return sampling if seed is None else dataclasses.replace(sampling, seed=seed)


def run(address: str, concurrency: int, requests: int, prompts: list[str], max_new_tokens: int,
        deadline_s: float, timeout_s: float = 120.0, sampling: SamplingParams = SamplingParams()) -> LoadResult:
    check_loopback(address)
    return run_clients(lambda: grpc_client(address, timeout_s, sampling), concurrency, requests, prompts,
                       max_new_tokens, deadline_s)


def run_clients(connect: Callable[[], ContextManager[Call]], concurrency: int, requests: int, prompts: list[str],
                max_new_tokens: int, deadline_s: float, seed: int | None = None) -> LoadResult:
    """`concurrency` clients (threads), each `connect`ed once, send `requests` requests each, in turn over
    `prompts`; none starts after `deadline_s`. `seed`: request n of the load (client i's j-th, n = i * requests + j)
    carries seed + n, so that requests of one prompt differ in what is drawn per position (a replayed draft's right
    positions); None: each carries its client's sampling seed."""
    result = LoadResult()
    lock = threading.Lock()
    stop_at = time.monotonic() + deadline_s

    def worker(index: int) -> None:
        with connect() as call:
            for j in range(requests):
                if time.monotonic() > stop_at:
                    with lock:
                        result.errors["SKIPPED_TIME_LIMIT"] += 1
                    continue
                prompt = prompts[(index + j) % len(prompts)]
                own = None if seed is None else seed + index * requests + j
                t0 = time.perf_counter()
                try:
                    r = call(prompt, max_new_tokens, own)
                except Exception as exc:  # noqa: BLE001 - a failed request is counted by its status, not raised
                    with lock:
                        result.requests += 1
                        result.errors[error_name(exc)] += 1
                    continue
                with lock:
                    result.requests += 1
                    result.latencies_s.append(time.perf_counter() - t0)
                    result.ttft_s.append(r.ttft_s)
                    result.tokens += len(r.token_ids)
                    result.outputs.append([prompts.index(prompt), *r.token_ids])
                    result.seeds.append(own)
                    result.cycles += r.cycles
                    result.drafts += r.drafts
                    result.draft_tokens += r.draft_tokens
                    result.accepted_tokens += r.accepted_tokens

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
