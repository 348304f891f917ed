"""Where a GPU waits for its host, from a torch.profiler trace (`export_chrome_trace`, CPU and CUDA activities).

The engine's steps are launched ahead of the host's reads, so the device should run back to back; a gap between
one device operation's end and the next one's start is time the device waited for the host to launch more. Each gap
is told by what the host did meanwhile: the CUDA runtime call that launched the operation ending it, the aten
operation that call ran in, and, where the host was blocked in the runtime instead (a stream or event
synchronisation, a copy that waited for the stream), that call. Runtime calls that held the host for long are
listed apart: each is a synchronisation the engine's launches wait behind (docs/architecture.md, "GPU fast path").
Where the device is busy, CUDA graph replays are told apart by their number of kernels (the 7B's and the 0.5B's
steps differ): each kind's device time per replay, and how much of it is kernels rather than the gaps between them
(a small model's step is bound by its kernels' count and latency, not by its weights).

Usage: python3 -m specdec.tools.device_gaps TRACE.json [--min-gap-us 20] [--top 15] [--steps N]
"""

from __future__ import annotations

import argparse
import bisect
import collections
import json
import statistics
from dataclasses import dataclass, field

DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
RUNTIME_CATEGORIES = ("cuda_runtime", "cuda_driver")
SYNC_CATEGORY = "cuda_sync"  # the stream and event synchronisations the host waited in (enable_cuda_sync_events)
GAP_BUCKETS_US = (20, 50, 100, 200, 500, 1000, 5000)
KERNEL_NAME_CHARS = 48  # kernel names (templated, generated) are cut to this in the report


@dataclass
class Gaps:
    """Device idle time in a trace's window, and what the host did then."""

    window_us: float = 0.0  # from the first device operation's start to the last one's end
    busy_us: float = 0.0  # the union of device operations
    gaps: list[tuple[float, float, str, str]] = field(default_factory=list)  # (start, length, launch call, its op)
    blocking: collections.Counter = field(default_factory=collections.Counter)  # runtime call -> host us held
    blocking_calls: collections.Counter = field(default_factory=collections.Counter)  # runtime call -> count
    graphs: dict[int, "Replays"] = field(default_factory=dict)  # kernels per replay -> the replays of that size


@dataclass
class Replays:
    """The CUDA graph replays of one size (kernels per replay) in a trace."""

    spans_us: list[float] = field(default_factory=list)  # each replay's first kernel's start to its last one's end
    kernels_us: list[float] = field(default_factory=list)  # each replay's kernels' summed device time
    by_kernel: collections.Counter = field(default_factory=collections.Counter)  # kernel name -> device us in all


def _events(trace: dict) -> list[dict]:
    return [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e]


def _busy(device: list[dict]) -> list[tuple[float, float, dict]]:
    """The device's busy intervals (start, end, the operation that began each), overlapping ones merged."""
    merged: list[tuple[float, float, dict]] = []
    for e in sorted(device, key=lambda e: e["ts"]):
        start, end = e["ts"], e["ts"] + e["dur"]
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end), merged[-1][2])
        else:
            merged.append((start, end, e))
    return merged


def analyse(trace: dict, min_gap_us: float = 20.0, blocking_us: float = 100.0) -> Gaps:
    """The gaps of at least `min_gap_us` between device operations, each with the runtime call that launched the
    operation after it and the aten operation around that call; runtime calls and synchronisations that held the host
    `blocking_us` or more, by name."""
    events = _events(trace)
    device = [e for e in events if e.get("cat") in DEVICE_CATEGORIES]
    result = Gaps()
    if not device:
        return result
    runtime = [e for e in events if e.get("cat") in RUNTIME_CATEGORIES]
    launches = {e.get("args", {}).get("correlation"): e for e in runtime}
    ops = sorted((e for e in events if e.get("cat") == "cpu_op"), key=lambda e: e["ts"])
    op_starts = [e["ts"] for e in ops]
    busy = _busy(device)
    result.window_us = busy[-1][1] - busy[0][0]
    result.busy_us = sum(end - start for start, end, _ in busy)
    for (_, end, _), (start, _, first) in zip(busy, busy[1:]):
        if start - end < min_gap_us:
            continue
        launch = launches.get(first.get("args", {}).get("correlation"))
        name = launch["name"] if launch is not None else "?"
        op = _innermost(ops, op_starts, launch["ts"], launch.get("tid")) if launch is not None else None
        result.gaps.append((end, start - end, name, op["name"] if op is not None else "?"))
    for e in runtime + [e for e in events if e.get("cat") == SYNC_CATEGORY]:
        if e["dur"] >= blocking_us:
            result.blocking[e["name"]] += e["dur"]
            result.blocking_calls[e["name"]] += 1
    result.graphs = _graph_replays(device, {c for c, e in launches.items() if e["name"] == "cudaGraphLaunch"})
    return result


def _graph_replays(device: list[dict], graph_launches: set) -> dict[int, Replays]:
    """The kernels each graph launch ran (a graph's kernels carry its launch's correlation id), by kernels per
    replay."""
    by_launch: dict[object, list[dict]] = collections.defaultdict(list)
    for e in device:
        correlation = e.get("args", {}).get("correlation")
        if correlation in graph_launches and e.get("cat") == "kernel":
            by_launch[correlation].append(e)
    graphs: dict[int, Replays] = collections.defaultdict(Replays)
    for kernels in by_launch.values():
        replays = graphs[len(kernels)]
        replays.spans_us.append(max(e["ts"] + e["dur"] for e in kernels) - min(e["ts"] for e in kernels))
        replays.kernels_us.append(sum(e["dur"] for e in kernels))
        for e in kernels:
            replays.by_kernel[e["name"]] += e["dur"]
    return dict(graphs)


def _innermost(ops: list[dict], starts: list[float], t: float, tid: object) -> dict | None:
    """The innermost aten operation on thread `tid` running at time `t` (operations nest: the containing one that
    began last)."""
    i = bisect.bisect_right(starts, t)
    for e in reversed(ops[max(0, i - 2000):i]):
        if e.get("tid") == tid and e["ts"] + e["dur"] >= t:
            return e
    return None


def report(gaps: Gaps, steps: int | None = None, top: int = 15) -> str:
    """The analysis as text: device busy share, idle per step (given the engine's step count), gaps by length, the
    launches and operations that ended the most idle time, and the runtime calls that held the host."""
    if not gaps.window_us:
        return "no device operations in the trace"
    idle = sum(length for _, length, _, _ in gaps.gaps)
    lines = [f"device busy {100 * gaps.busy_us / gaps.window_us:.1f}% of {gaps.window_us / 1e3:.1f} ms; "
             f"{len(gaps.gaps)} gaps of {idle / 1e3:.1f} ms"
             + (f", {idle / 1e3 / steps:.2f} ms per engine step ({steps} steps)" if steps else "")]
    counts: collections.Counter = collections.Counter()
    totals: collections.Counter = collections.Counter()
    for _, length, _, _ in gaps.gaps:
        bucket = max([b for b in GAP_BUCKETS_US if length >= b], default=0)
        counts[bucket] += 1
        totals[bucket] += length
    lines.append("gaps by length (us): " + ", ".join(f">= {b}: {counts[b]} ({totals[b] / 1e3:.1f} ms)"
                                                     for b in sorted(counts)))
    by_launch: collections.Counter = collections.Counter()
    for _, length, name, op in gaps.gaps:
        by_launch[f"{op} -> {name}"] += length
    lines.append("idle time by what ended it (the aten operation -> the runtime call that launched the next work):")
    lines += [f"  {us / 1e3:8.2f} ms  {what}" for what, us in by_launch.most_common(top)]
    if gaps.blocking:
        lines.append("runtime calls that held the host (syncs, or copies that waited for the stream):")
        lines += [f"  {us / 1e3:8.2f} ms in {gaps.blocking_calls[name]} calls  {name}"
                  for name, us in gaps.blocking.most_common(top)]
    if gaps.graphs:
        lines.append("CUDA graph replays by kernels per replay (median device time per replay; kernels' share of it; "
                     "the kernels taking most of it):")
    for size, replays in sorted(gaps.graphs.items(), key=lambda g: -sum(g[1].spans_us))[:top]:
        span, busy = statistics.median(replays.spans_us), statistics.median(replays.kernels_us)
        total = sum(replays.by_kernel.values())
        heaviest = ", ".join(f"{name[:KERNEL_NAME_CHARS]} {100 * us / total:.0f}%"
                             for name, us in replays.by_kernel.most_common(3))
        lines.append(f"  {size} kernels: {len(replays.spans_us)} replays, {span / 1e3:.2f} ms each, kernels "
                     f"{100 * busy / (span or 1):.0f}% ({busy / size:.1f} us a kernel); {heaviest}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trace", help="a chrome trace exported by torch.profiler (CPU and CUDA activities)")
    parser.add_argument("--min-gap-us", type=float, default=20.0, help="shorter gaps are launch latency, not counted")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--steps", type=int, default=None, help="the engine's steps in the trace: idle per step")
    args = parser.parse_args()
    with open(args.trace) as f:
        trace = json.load(f)
    print(report(analyse(trace, args.min_gap_us), args.steps, args.top))


if __name__ == "__main__":
    main()
