"""The batched engine's host time per target step, apart from the forwards: in-process own draft (the target
engine drafts for its sessions between steps, core.own_draft), C clients at K drafts per cycle.

Host time per step = (wall - the target's forward time - the draft's forward time) / target steps: what the
engine's Python (planning, verifying, completing, handing on rows, drafting's bookkeeping) costs a step, the
part that does not shrink with a faster device. On a GPU a forward's time runs from its launch to its host read,
so "host" is what the device waits for: the host's work that no launched step hides. `--profile FILE` also
writes a cProfile of the engine thread (all runs).

One engine (and one draft runner) serves every run, so a GPU compiles and captures once: `--clients 16,64`
and `--k 0,2` run each number of clients at each K in turn, `--repeats` times over. K = 0 is target-only
(sessions without a draft, as a target service runs a request that asks for none); `aN` is adaptive K up to N,
as the services choose it by default. `--replay-alpha A` drafts the target's own continuations at rate A (recorded
target-only first, as `specdec bench` does): 0 is a useless draft, which adaptive K stops drafting.

Usage: python3 scripts/engine_host_time.py [--clients 32] [--k 2] [--tokens 64] [--stream-interval 1] [--profile out.prof]
           [--time-calls] [--bare-target-only] [--temperature 0.7 --top-p 0.95]
       python3 scripts/engine_host_time.py --device cuda:0 --dtype bfloat16 --target random:qwen2.5-7b \
           --draft random:qwen2.5-0.5b --max-len 512 --clients 16,64 --k 0,2,a4 --tokens 128
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import functools
import json
import logging
import os
import statistics
import sys
import time
from dataclasses import replace
from typing import Callable

import torch

from specdec.core.adaptive import AdaptiveK, FixedK
from specdec.core.batching import BatchedRunner
from specdec.core.compute import Compute
from specdec.core.config import ProposerKind, SamplingParams
from specdec.core.models import load_model
from specdec.core.target_loop import TargetLoop
from specdec.proposers import make_factory
from specdec.proposers.replay import ReplayFactory, ReplayRates
from specdec.serving.server import freeze_heap
from specdec.tools import device_gaps, loadtest
from specdec.tools.inprocess import InProcessTarget, own_draft_runner
from specdec.tools.sweep import record_continuations

TIMED = [(TargetLoop, "complete"), (TargetLoop, "plan"), (TargetLoop, "_tell"), (AdaptiveK, "choose"),
         (AdaptiveK, "observe"), (FixedK, "choose"), (FixedK, "observe"), (BatchedRunner, "_hand_on"),
         (BatchedRunner, "_plan_rows")]


class PathTimer:
    """The host's path through a drafted cycle (`--time-path`): from the read of a step that verified drafted blocks
    to the launch of the next verify from the drafting phase's tokens (`_launch_early`), marked where the rows'
    handing on begins and ends (`_hand_on`: before it, the draft runner is told how their next chains begin), where
    the engine gathers the next step's work (`_gather`: after streaming and prompt chunks), where the drafting phase
    starts (`_draft`), where its chains are handed to the draft runner (`decode_chains`), where their values are read
    (`_read_chains`) and where they are launched (the early verify's call). On a GPU the device idles for what of it
    the draft steps launched ahead do not cover. Beside each mark's wall time, the engine thread's own CPU time to it:
    where it is much less, the thread waited (for the interpreter's lock other threads held, or a core)."""

    MARKS = ("handing on", "handed on", "gathering", "phase starts", "chains handed in", "chains read",
             "chains launched", "verify launched")

    def __init__(self) -> None:
        self.since: float | None = None
        self.cpu_since = 0.0  # the engine thread's CPU time at that read
        self.seen: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)  # mark -> (wall, CPU) since it

    def install(self) -> None:
        def at(name: str, mark: str, after: bool = False, only: Callable | None = None) -> None:
            method = getattr(BatchedRunner, name)

            def timed(runner, *args, **kwargs):
                if not after and self.since is not None and (only is None or only(*args, **kwargs)):
                    self._mark(mark)
                result = method(runner, *args, **kwargs)
                if after and self.since is not None:
                    self._mark(mark)
                return result
            setattr(BatchedRunner, name, timed)
        read = BatchedRunner._read

        def read_timed(runner, step):
            result = read(runner, step)
            if any(r.drafted is not None for r in step.requests):
                self.since, self.cpu_since = time.perf_counter(), time.thread_time()
            return result
        BatchedRunner._read = read_timed
        at("_hand_on", "handing on")
        at("_hand_on", "handed on", after=True)
        at("_gather", "gathering")
        at("_draft", "phase starts")
        at("decode_chains", "chains handed in")
        at("_read_chains", "chains read")
        at("_launch_early", "chains launched")
        at("_launch", "verify launched", only=lambda requests, *a, fill=None, **k: fill is not None)

    def _mark(self, mark: str) -> None:
        if mark in self.seen and len(self.seen[mark]) > len(self.seen["verify launched"]):
            return  # once a cycle: the first time it is reached
        self.seen[mark].append((time.perf_counter() - self.since, time.thread_time() - self.cpu_since))
        if mark == "verify launched":
            self.since = None

    def report(self) -> str:
        """Each mark's median and 90th percentile, ms since the read, and the engine thread's median CPU ms to it;
        empty before any drafted cycle."""
        cycles = len(self.seen["verify launched"])
        if not cycles:
            return ""
        parts = []
        for m in self.MARKS:
            if not (seen := self.seen.get(m)):
                continue
            wall, cpu = zip(*seen)
            p90 = statistics.quantiles(wall, n=10)[-1] if len(wall) > 1 else wall[0]
            parts.append(f"{m} {1e3 * statistics.median(wall):.2f} / {1e3 * p90:.2f} [{1e3 * statistics.median(cpu):.2f}]")
        self.seen.clear()
        return (f"  host path from a verify's read, ms (median / p90, the engine thread's CPU median in brackets; {cycles} "
                f"cycles): " + ", ".join(parts))


def device_trace() -> torch.profiler.profile:
    """torch.profiler over every thread (the engine's steps run on its own), CPU and CUDA activities, with the CUDA
    synchronisations the host waited in (where this torch has those options)."""
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    try:
        config = torch._C._profiler._ExperimentalConfig(profile_all_threads=True, enable_cuda_sync_events=True)
    except (AttributeError, TypeError):
        print("this torch's profiler has no profile_all_threads or enable_cuda_sync_events: the engine thread's ops and "
              "the syncs are left out of the trace, and its gaps are told by '?'", file=sys.stderr)
        return torch.profiler.profile(activities=activities)
    return torch.profiler.profile(activities=activities, experimental_config=config)


def time_calls(totals: collections.Counter) -> None:
    """Wrap TIMED's methods to add their wall time to `totals` (by 'Class.method')."""
    for cls, name in TIMED:
        method, label = getattr(cls, name), f"{cls.__name__}.{name}"

        def timed(*args, _method=method, _label=label, **kwargs):
            t0 = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                totals[_label] += time.perf_counter() - t0
        setattr(cls, name, timed)


class _Replayed:
    """A replayed draft's factory, given its book once the engine has recorded the target's continuations."""

    factory: ReplayFactory | None = None

    def __init__(self, runner: BatchedRunner) -> None:
        self.runner = runner  # the own draft's (core.own_draft reads its step costs)

    def open(self, sampling, seed):
        return self.factory.open(sampling, seed)


def ks(text: str) -> list[tuple[int, bool]]:
    """'0,2,a4' -> [(0, False), (2, False), (4, True)]: (K, adaptive)."""
    return [(int(k.lstrip("a")), k.startswith("a")) for k in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="tiny")
    parser.add_argument("--draft", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--clients", default="32", help="clients at once, a comma list (the engine has slots for the most)")
    parser.add_argument("--k", type=ks, default=ks("2"),
                        help="draft tokens per cycle, a comma list: 0 target-only, aN adaptive up to N")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    parser.add_argument("--max-len", type=int, default=128, help="context per slot (short: the forwards stay small)")
    parser.add_argument("--rounds", type=int, default=2, help="requests per client")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stream-interval", type=int, help="cycles handed to a session's reader at a time (default: "
                        "the engine's auto, as the services run it)")
    parser.add_argument("--log", action="store_true", help="the engine's log on stderr (its step costs, every 5 s)")
    parser.add_argument("--replay-alpha", type=float, help="replayed acceptance instead of the draft's own proposals")
    parser.add_argument("--profile", help="write a cProfile of the engine thread here")
    parser.add_argument("--no-compile", action="store_true",
                        help="don't compile the models' layers (CUDA graphs are still captured): the host's work per "
                        "step is the same, and a cold GPU starts in about a minute instead of several")
    parser.add_argument("--trace", metavar="DIR",
                        help="on a GPU: each configuration's first measured run under torch.profiler (every thread, "
                        "CPU and CUDA activities and synchronisations, no Python stacks), its chrome trace written to "
                        "DIR, and where the device waited for the host (specdec.tools.device_gaps) printed after its "
                        "line. Recording every aten op slows the host: its line's figures and the gaps' lengths are "
                        "upper bounds; what ends the gaps, and the syncs, are what it finds")
    parser.add_argument("--time-calls", action="store_true",
                        help="also the microseconds a row spends in the engine's per-row calls (TIMED), each call timed "
                        "with perf_counter (cProfile inflates such small calls several times over; a timed call "
                        "inside another adds ~0.3 us to the outer one)")
    parser.add_argument("--time-path", action="store_true",
                        help="also the host's path through a drafted cycle: ms from the read of a step that verified "
                        "drafts to the launch of the next verify from the drafting phase's tokens (with --early-verify "
                        "on), where rows are handed on, the phase starts and its chains are launched (PathTimer)")
    parser.add_argument("--bare-target-only", action="store_true",
                        help="K = 0 runs with the engine's drafter detached, as a target started without --own-draft "
                        "runs (default: the same engine, drafter attached, as a target with --own-draft runs a "
                        "request that asks for no draft)")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0: greedy requests; else every request samples at this temperature (seed 0)")
    parser.add_argument("--top-p", type=float, default=1.0, help="with --temperature: nucleus sampling")
    parser.add_argument("--early-verify", choices=["default", "on", "off", "both", "each"], default="default",
                        help="launch a drafted cycle's verify from the drafted tokens on the device, and the next "
                        "chains' draft steps from its argmax (the engine's default: on a GPU); both: each drafting "
                        "configuration with them on, then off; each: on, the verify alone, off")
    args = parser.parse_args()
    if args.replay_alpha is not None and args.temperature > 0:
        parser.error("--replay-alpha replays greedy references: it cannot be combined with --temperature "
                     "(sampled requests: leave --replay-alpha out, the draft's own proposals are drafted)")
    levels = [int(c) for c in args.clients.split(",")]
    if args.log:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    compute = Compute.for_device(args.device)
    target = compute.run(load_model, args.target, "target", device=args.device, dtype=args.dtype)
    draft = compute.run(load_model, args.draft, "draft", device=args.device, dtype=args.dtype)
    draft_runner = own_draft_runner(compute, draft, args.max_len, max(levels), compile=not args.no_compile)
    replayed = _Replayed(draft_runner) if args.replay_alpha is not None else None
    drafts = replayed or make_factory(ProposerKind.DRAFT_MODEL, draft_runner)
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        loop = BatchedRunner._loop

        def profiled(self: BatchedRunner) -> None:
            profiler.enable()
            try:
                loop(self)
            finally:
                profiler.disable()
        BatchedRunner._loop = profiled
    engine = InProcessTarget(target, max_len=args.max_len, max_sessions=max(levels), drafts=drafts,
                             draft_runner=draft_runner, own_draft=True, compute=compute, compile=not args.no_compile)
    if args.stream_interval is not None:
        engine.runner.stream_interval = args.stream_interval
    if replayed is not None:
        engine.k = 0
        book = record_continuations(engine.client, target.tokenizer, args.tokens)
        replayed.factory = ReplayFactory(draft_runner, book, ReplayRates(alpha=args.replay_alpha))
    runner = engine.runner  # (early verify, draft ahead)
    earlies = {"default": [(runner.early_verify, True)], "on": [(True, True)], "off": [(False, False)],
               "both": [(True, True), (False, False)],
               "each": [(True, True), (True, False), (False, False)]}[args.early_verify]
    totals: collections.Counter = collections.Counter()
    if args.time_calls:
        time_calls(totals)
    path_timer = PathTimer() if args.time_path else None
    if path_timer is not None:
        path_timer.install()
    drafter = runner.drafter
    freeze_heap()
    prompts = loadtest.DEFAULT_PROMPTS
    sampling = SamplingParams(temperature=args.temperature, top_p=args.top_p, seed=0)
    client = functools.partial(engine.client, sampling)
    seeds = 0 if replayed is not None else None  # a replay: each request its own seed, as `specdec bench` sends them
    try:
        for repeat in range(args.repeats):
            for clients in levels:
                for k, adaptive, early in [(n, a, e) for n, a in args.k for e in (earlies if n else [None])]:
                    engine.k, engine.adaptive_k = k, adaptive
                    runner.drafter = None if k == 0 and args.bare_target_only else drafter
                    if early is not None:
                        runner.early_verify, runner.draft_ahead = early
                    loadtest.run_clients(client, clients, 1, prompts, 16, 600, seeds)  # warm-up (and the K's costs)
                    t, d = runner.stats, draft_runner.stats
                    steps, t_fwd, d_fwd, rows, launched, kept = t.steps, t.forward_s, d.forward_s, t.rows, t.early, t.early_kept
                    ahead, ahead_kept, joins, joins_kept = d.ahead, d.ahead_kept, d.joins, d.joins_kept
                    phases = replace(drafter.stats)
                    widths = dict(t.widths)
                    chunks = (t.prefill_chunks, t.prefill_rows, t.chunks_apart)
                    totals.clear()
                    if path_timer is not None:
                        path_timer.report()  # the warm-up's cycles are not this run's
                    traced = args.trace and repeat == 0
                    tracing = device_trace() if traced else None
                    t0 = time.perf_counter()
                    with tracing or contextlib.nullcontext():
                        result = loadtest.run_clients(client, clients, args.rounds, prompts, args.tokens, 600, seeds)
                    wall = time.perf_counter() - t0
                    n = t.steps - steps
                    if result.errors or n == 0:
                        raise SystemExit(f"{clients} clients, K={k}: {n} target steps, failed requests "
                                         f"{dict(result.errors)}")
                    host = wall - (t.forward_s - t_fwd) - (d.forward_s - d_fwd)
                    label = "target-only" if k == 0 else f"<={k}" if adaptive else str(k)
                    label += "" if early is None else (", early verify and draft ahead" if all(early) else
                                                       ", early verify" if early[0] else ", neither")
                    print(f"{clients} clients, K={label}: {result.tokens / wall:.0f} tok/s, {n} target steps, "
                          f"{(t.rows - rows) / n:.1f} rows per step, wall {1e3 * wall / n:.2f} ms per step: target forward "
                          f"{1e3 * (t.forward_s - t_fwd) / n:.2f}, draft forwards {1e3 * (d.forward_s - d_fwd) / n:.2f}, "
                          f"host {1e3 * host / n:.2f} ({1e6 * host / (t.rows - rows):.0f} us per row), "
                          f"early verifies {t.early - launched} ({t.early_kept - kept} kept), draft rows launched ahead "
                          f"{d.ahead - ahead} ({d.ahead_kept - ahead_kept} kept), new sessions' catch-ups launched with "
                          f"them {d.joins - joins} ({d.joins_kept - joins_kept} kept), phases catching up first "
                          f"{drafter.stats.catching_up - phases.catching_up} "
                          f"({1e3 * (drafter.stats.catch_up_s - phases.catch_up_s):.0f} ms, "
                          f"{drafter.stats.catch_up_tokens - phases.catch_up_tokens} tokens)", flush=True)
                    counts = {w: c - widths.get(w, 0) for w, c in sorted(t.widths.items()) if c > widths.get(w, 0)}
                    print("  steps by tokens per row: " + ", ".join(f"{w}: {c}" for w, c in counts.items())
                          + f"; prefill chunks {t.prefill_chunks - chunks[0]} ({t.prefill_rows - chunks[1]} rows, "
                          f"{t.chunks_apart - chunks[2]} read apart)", flush=True)
                    if totals:
                        print("  us per row in " + ", ".join(f"{label} {1e6 * seconds / (t.rows - rows):.2f}"
                                                             for label, seconds in sorted(totals.items())), flush=True)
                    if path_timer is not None and (line := path_timer.report()):
                        print(line, flush=True)
                    if tracing is not None:
                        os.makedirs(args.trace, exist_ok=True)
                        path = os.path.join(args.trace, f"trace_{clients}_{label.replace(' ', '_').replace(',', '')}.json")
                        tracing.export_chrome_trace(path)
                        with open(path) as f:
                            print(device_gaps.report(device_gaps.analyse(json.load(f)), steps=n), flush=True)
    finally:  # a failed run must not leave the engines' threads holding the process open
        engine.close()
    if profiler is not None:
        profiler.dump_stats(args.profile)


if __name__ == "__main__":
    main()
