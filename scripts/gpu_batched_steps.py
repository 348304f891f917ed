#!/usr/bin/env python3
"""The batched engine's step cost t(rows, tokens per row) on a GPU: one CUDA-graph replay of R rows x n tokens,
each row at position `--ctx` (so it attends to that many cached tokens), random weights in real Qwen2.5 shapes.
This is the table the load figures' analytic bounds come from. One JSON line per (model, rows, tokens).

    python scripts/gpu_batched_steps.py qwen2.5-7b qwen2.5-0.5b --rows 1,4,16,64 --tokens 1,5
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from specdec.core.batching import BatchedRunner
from specdec.core.random_models import random_model


def step_ms(runner: BatchedRunner, rows: int, n: int, ctx: int, reps: int) -> float:
    """Median ms of one batched step (inputs copied in, graph replayed, logits ready)."""
    ids = torch.randint(0, runner.vocab_size, (rows, n))
    positions = torch.arange(ctx, ctx + n).repeat(rows, 1)
    times = []
    for _ in range(reps + 3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        runner._batched(ids, positions)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times[3:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("models", nargs="+")
    p.add_argument("--rows", default="1,4,16,64")
    p.add_argument("--tokens", default="1,5")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--max-len", type=int, default=1024)
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    for name in args.models:
        model = random_model(f"random:{name}", dtype=torch.bfloat16, device="cuda:0").model
        runner = BatchedRunner(model, max_len=args.max_len, max_sessions=max(rows), cuda_graphs=True)
        try:
            for attention in ("grouped", "sdpa"):  # the engine's attention, then HF's (keys repeated per head)
                if attention == "sdpa":
                    model.set_attn_implementation("sdpa")
                    runner._graphs.clear()
                    runner._capture_all()
                for n in (int(t) for t in args.tokens.split(",")):
                    for r in rows:
                        print(json.dumps({"model": name, "attention": attention, "rows": r, "tokens": n,
                                          "ctx": args.ctx, "ms": round(step_ms(runner, r, n, args.ctx, args.reps), 2)}),
                              flush=True)
        finally:
            runner.stop()
        del runner, model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
