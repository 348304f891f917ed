"""Where the GPU time of one batched graph step goes, as the engine runs it (compiled decoder layers, CUDA graph):
torch.profiler over replays of the rows x tokens step, kernels grouped by name, and the step's wall time against
its kernels' sum (the rest is the device idling between kernels), then one step's kernels in the order they ran
(SEQUENCE=N: the first N; default 60, enough for the model's first layers). WRITTEN_OUT_MAX=N sets the attention's
written-out threshold (core.attention) for this process.
Usage: python3 scripts/gpu_profile_step.py [model] [rows] [tokens]"""

from __future__ import annotations

import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from specdec.core import attention
from specdec.core.batching import BatchedRunner
from specdec.core.models import load_model
from specdec.tools.sweep import batched_step_s

REPS = 10


def main() -> None:
    spec = sys.argv[1] if len(sys.argv) > 1 else "random:qwen2.5-0.5b"
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    if os.environ.get("WRITTEN_OUT_MAX"):
        attention.WRITTEN_OUT_MAX = int(os.environ["WRITTEN_OUT_MAX"])
    loaded = load_model(spec, "draft", device="cuda:0", dtype="bfloat16")
    runner = BatchedRunner(loaded.model, launch=None, max_len=1024, max_sessions=rows, graph_max_tokens=tokens,
                           prefill_chunk=max(tokens, 16), captured=([rows], [tokens]))
    ids = torch.randint(0, runner.vocab_size, (rows, tokens))
    positions = torch.arange(300, 300 + tokens).repeat(rows, 1)
    step_ms = 1e3 * batched_step_s(runner, rows, tokens, 300, reps=20)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(REPS):
            runner.forward_rows(ids, positions)
        torch.cuda.synchronize()
    by_name = {e.key: (e.self_device_time_total / REPS, e.count / REPS)  # us, calls per step
               for e in prof.key_averages() if e.device_type.name == "CUDA"}
    busy = sum(t for t, _ in by_name.values()) / 1e3
    count = round(sum(c for _, c in by_name.values()))
    print(f"== {spec} {rows}x{tokens}, written out up to {attention.WRITTEN_OUT_MAX} folded rows: graph step "
          f"{step_ms:.2f} ms, kernels {busy:.2f} ms busy ({count} kernels), idle {step_ms - busy:.2f} ms", flush=True)
    for name, (t, c) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[:18]:
        print(f"  {t / 1e3:6.3f} ms  x{c:5.0f}  {t / max(c, 1):6.1f} us  {name[:100]}", flush=True)
    kernels = sorted((e for e in prof.events() if e.device_type.name == "CUDA"), key=lambda e: e.time_range.start)
    per_step = len(kernels) // REPS
    print(f"-- one step's kernels in order ({per_step} a step; gap: idle before it, us)", flush=True)
    step = kernels[:per_step]
    for i, e in enumerate(step[:int(os.environ.get("SEQUENCE", "60"))]):
        gap = e.time_range.start - step[i - 1].time_range.end if i else 0.0
        print(f"  {i:4d} {e.time_range.elapsed_us():7.1f} us  gap {gap:6.1f}  {e.name[:110]}", flush=True)


if __name__ == "__main__":
    main()
