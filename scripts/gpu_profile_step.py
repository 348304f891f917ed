"""Where the GPU time of one batched step goes: torch.profiler over eager and graph steps of the batched runner,
then the same graph step with the model's forward compiled by torch.compile (COMPILE=1): how much of a step is
the launch of HF's many small kernels. Usage: python3 scripts/gpu_profile_step.py [model] [rows]"""

from __future__ import annotations

import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from specdec.core.batching import BatchedRunner
from specdec.core.models import load_model
from specdec.tools.sweep import batched_step_s


def main() -> None:
    spec = sys.argv[1] if len(sys.argv) > 1 else "random:qwen2.5-0.5b"
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    loaded = load_model(spec, "draft", device="cuda:0", dtype="bfloat16")
    runner = BatchedRunner(loaded.model, launch=None, max_len=1024, max_sessions=max(rows, 1))
    ids = torch.randint(0, runner.vocab_size, (rows, 1))
    positions = torch.full((rows, 1), 256)
    for graphs in (True, False):
        runner.cuda_graphs = graphs
        for _ in range(3):
            runner.forward_rows(ids, positions)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                runner.forward_rows(ids, positions)
            torch.cuda.synchronize()
        events = [e for e in prof.key_averages() if e.device_type.name == "CUDA" or e.self_device_time_total > 0]
        total = sum(e.self_device_time_total for e in events) / 5
        print(f"== {spec} rows {rows}, graphs {graphs}: GPU time per step {total / 1000:.2f} ms, "
              f"{sum(e.count for e in events) // 5} kernels per step", flush=True)
        for e in sorted(events, key=lambda e: -e.self_device_time_total)[:12]:
            print(f"  {e.self_device_time_total / 5 / 1000:7.3f} ms  x{e.count // 5:4d}  {e.key[:110]}", flush=True)
    runner.cuda_graphs = True
    print(f"graph step {1e3 * batched_step_s(runner, rows, 1, 256):.2f} ms", flush=True)
    if os.environ.get("COMPILE"):
        t0 = time.perf_counter()
        runner.model.forward = torch.compile(runner.model.forward, dynamic=False)
        del runner._graphs[(rows, 1)]
        runner._capture(rows, 1)
        print(f"compiled graph step {1e3 * batched_step_s(runner, rows, 1, 256):.2f} ms "
              f"(compile and capture {time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
