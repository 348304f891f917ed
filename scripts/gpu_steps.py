#!/usr/bin/env python3
"""Per-step costs of the runner on a GPU: eager HF forward vs CUDA-graph replay, for decode (1 token)
and verify (k+1 tokens) steps, on random weights in real Qwen2.5 shapes. Also checks graph logits
against eager ones. Usage: python scripts/gpu_steps.py [qwen2.5-0.5b qwen2.5-7b ...] [--ctx 512]"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from specdec.core.random_models import random_model
from specdec.core.runner import ModelRunner


def time_step(runner: ModelRunner, session, prefix: list[int], n: int, reps: int) -> float:
    """Median ms of one forward of n new tokens after `prefix` (rolled back each time)."""
    times = []
    new = list(range(1000, 1000 + n))
    for _ in range(reps + 3):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        runner.extend(session, prefix + new, keep=n)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
        runner.truncate(session, len(prefix))
    return statistics.median(times[3:])


def time_branches(runner: ModelRunner, session, b: int, reps: int, steps: int = 5) -> float:
    """Median ms of one step of drafting b branches at once (overlap's pre-drafting)."""
    times = []
    forks = [session.length - 1] * b
    for _ in range(reps + 3):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for step in range(steps):
            runner.forward_branches(session, step, list(range(1000, 1000 + b)), [j + step for j in forks], forks)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / steps)
    return statistics.median(times[3:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("shapes", nargs="*", default=["qwen2.5-0.5b", "qwen2.5-7b"])
    ap.add_argument("--ctx", type=int, default=512, help="tokens already in the cache")
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}", flush=True)
    rows = []
    for shape in args.shapes:
        loaded = random_model(f"random:{shape}", device="cuda:0", dtype=torch.bfloat16)
        prefix = [(i * 7919) % 150000 for i in range(args.ctx)]
        row = {"shape": shape}
        for label, graphs in (("eager", False), ("graph", True)):
            runner = ModelRunner(loaded.model, max_len=args.ctx + 128, max_sessions=1, cuda_graphs=graphs)
            s = runner.open()
            runner.extend(s, prefix, keep=1)
            for n in (1, 2, 5, 9):
                row[f"{label}_{n}"] = time_step(runner, s, prefix, n, args.reps)
            if graphs:
                for b in (6, 8):
                    row[f"branches_{b}"] = time_branches(runner, s, b, args.reps)
            if graphs:  # graph vs eager logits on the same input
                eager = ModelRunner(loaded.model, max_len=args.ctx + 64, max_sessions=1, cuda_graphs=False)
                e = eager.open()
                eager.extend(e, prefix, keep=1)
                new = list(range(2000, 2005))
                g_logits = runner.extend(s, prefix + new, keep=5)
                e_logits = eager.extend(e, prefix + new, keep=5)
                rel = ((g_logits - e_logits).norm() / e_logits.norm()).item()
                row["graph_vs_eager_rel_err"] = rel
                row["argmax_agree"] = bool((g_logits.argmax(-1) == e_logits.argmax(-1)).all())
                del eager
            del runner
            torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row), flush=True)
        del loaded
        torch.cuda.empty_cache()
    print("\n| shape | eager 1 tok (ms) | graph 1 tok | graph 2 tok | graph 5 tok | graph 9 tok | verify5/decode | "
          "6 branches | 8 branches | graph vs eager rel err |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['shape']} | {r['eager_1']:.2f} | {r['graph_1']:.2f} | {r['graph_2']:.2f} | {r['graph_5']:.2f} | "
              f"{r['graph_9']:.2f} | {r['graph_5'] / r['graph_1']:.2f} | {r['branches_6']:.2f} | {r['branches_8']:.2f} | "
              f"{r['graph_vs_eager_rel_err']:.1e} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
