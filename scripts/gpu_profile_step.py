"""Where the GPU time of one batched step goes: torch.profiler over eager and graph steps of the batched runner.
Usage: python3 scripts/gpu_profile_step.py [model] [rows]"""

from __future__ import annotations

import sys

import torch
from torch.profiler import ProfilerActivity, profile

from specdec.core.batching import BatchedRunner
from specdec.core.models import load_model


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


if __name__ == "__main__":
    main()
