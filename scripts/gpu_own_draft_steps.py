"""What one drafting phase of the target's own draft costs on a GPU, and where the time goes.

For R rows (each with a 256-token cached sequence): the draft's raw batched step (R x 1 and R x 5 tokens,
CUDA graph, inputs copied in, logits ready), then `propose_together` for R greedy draft-model proposers
drafting K tokens, timed as a whole and per engine step (the runner's own StepStats), and the greedy group read
(argmax and top two of R rows of logits); then, for R rows, a phase whose drafts are N tokens behind (paused
sessions' probe, or their first block after a switch to drafting): its catch-up and its drafting, timed apart as
the proposals report them; "first" is the first of five runs (a shape's first use).
With --profile: only a one-row catch-up of 16 and of 64 tokens behind, under torch.profiler (its top operators by
host time and by device time) and dynamo's counters (a compile or a fallback to eager while serving shows there):
a one-row catch-up of 64 tokens took ~20 ms where one of 16 took ~3 (call h1).
Usage: python3 scripts/gpu_own_draft_steps.py [draft] [K] [--profile]
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from specdec.core.batching import BatchedRunner
from specdec.core.config import SamplingParams
from specdec.core.models import load_model
from specdec.proposers.base import propose_together
from specdec.proposers.draft_model import DraftModelFactory, top_three
from specdec.tools.sweep import batched_step_s

DEVICE = "cuda:0" if torch.cuda.is_available() else "cpu"  # a CPU run only checks the script


def sync() -> None:
    if DEVICE != "cpu":
        torch.cuda.synchronize()


def timed(fn, reps: int = 20) -> float:
    times = []
    for _ in range(reps + 3):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times[3:])


def profile_catch_ups(runner: BatchedRunner, factory: DraftModelFactory, k: int) -> None:
    """A one-row catch-up of 16 and of 64 tokens behind, each run thrice, the third under the profiler."""
    from torch._dynamo.utils import counters
    from torch.profiler import ProfilerActivity, profile

    proposer = factory.open(SamplingParams(), 0)
    base = torch.randint(0, runner.vocab_size, (256,)).tolist()
    propose_together([proposer], [base], [k])
    before = {name: dict(c) for name, c in counters.items()}
    for behind in (16, 64):
        for run in range(3):
            sequence = base + torch.randint(0, runner.vocab_size, (behind,)).tolist()
            sync()
            if run < 2:
                p = propose_together([proposer], [sequence], [k])[0]
                print(f"{behind} behind, run {run}: catch-up {1e3 * p.catch_up_s:.2f} ms", flush=True)
                continue
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE != "cpu" else [])
            with profile(activities=activities) as prof:
                p = propose_together([proposer], [sequence], [k])[0]
                sync()
            print(f"{behind} behind, profiled: catch-up {1e3 * p.catch_up_s:.2f} ms", flush=True)
            table = prof.key_averages()
            print(table.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60), flush=True)
            if DEVICE != "cpu":
                print(table.table(sort_by="self_device_time_total", row_limit=8, max_name_column_width=60), flush=True)
    changed = {name: {key: value - before.get(name, {}).get(key, 0) for key, value in c.items()
                      if value != before.get(name, {}).get(key, 0)} for name, c in counters.items()}
    print("dynamo counters that changed while catching up:", {n: c for n, c in changed.items() if c}, flush=True)
    proposer.close()


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    spec = args[0] if args else "random:qwen2.5-0.5b"
    k = int(args[1]) if len(args) > 1 else 2
    loaded = load_model(spec, "draft", device=DEVICE, dtype="bfloat16" if DEVICE != "cpu" else "auto")
    runner = BatchedRunner(loaded.model, launch=None, max_len=1024, max_sessions=64)
    factory = DraftModelFactory(runner, runner.vocab_size)
    if "--profile" in sys.argv:
        profile_catch_ups(runner, factory, k)
        return
    for rows in (1, 16, 64) if DEVICE != "cpu" else (1, 4):
        proposers = [factory.open(SamplingParams(), i) for i in range(rows)]
        sequences = [torch.randint(0, runner.vocab_size, (256,)).tolist() for _ in range(rows)]
        propose_together(proposers, sequences, [k] * rows)  # prefill (catch-up) and a first block
        committed = [s + p.token_ids[:1] + [7] for s, p in zip(sequences, propose_together(proposers, sequences,
                                                                                               [k] * rows))]

        def phase(proposers=proposers, committed=committed, rows=rows):
            for c in committed:
                del c[257:]
            propose_together(proposers, committed, [k] * rows)

        before = runner.stats.steps
        phase_ms = timed(phase)
        steps = (runner.stats.steps - before) / 23  # timed's runs
        logits = torch.randn(rows, runner.vocab_size, device=DEVICE)
        print(f"rows {rows}: step {1e3 * batched_step_s(runner, rows, 1, 256):.2f} ms (x1), "
              f"{1e3 * batched_step_s(runner, rows, 5, 256):.2f} ms (x5); drafting K={k}: {phase_ms:.2f} ms per phase "
              f"of {steps:.0f} steps; group read "
              f"{timed(lambda logits=logits: top_three(logits).tolist()):.2f} ms", flush=True)
        for p in proposers:
            p.close()
    for rows in (1, 16, 64) if DEVICE != "cpu" else (1, 4):
        proposers = [factory.open(SamplingParams(), i) for i in range(rows)]
        bases = [torch.randint(0, runner.vocab_size, (256,)).tolist() for _ in range(rows)]
        propose_together(proposers, bases, [k] * rows)
        for behind in (16, 64, 200, 512):
            times = []
            for _ in range(5):  # new tokens after the same 256 each time: the caches roll back to 256, N behind
                sequences = [b + torch.randint(0, runner.vocab_size, (behind,)).tolist() for b in bases]
                t0 = time.perf_counter()
                p = propose_together(proposers, sequences, [k] * rows)[0]
                times.append((1e3 * (time.perf_counter() - t0), 1e3 * p.catch_up_s, 1e3 * p.draft_s))
            phase, catch_up, draft = (statistics.median(t[i] for t in times) for i in range(3))
            print(f"{rows} rows, {behind} tokens behind: phase {phase:.2f} ms (catch-up {catch_up:.2f}, drafting K={k} "
                  f"{draft:.2f}); first {times[0][0]:.2f} ms", flush=True)
        for p in proposers:
            p.close()


if __name__ == "__main__":
    main()
