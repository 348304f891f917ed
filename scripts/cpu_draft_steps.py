#!/usr/bin/env python3
"""What a batched draft step costs on a CPU with each int8 form of the draft, side by side in one process: the
previous one (torch.ao's quantize_dynamic, one activation scale per call), core.int8 (a scale per row), and the
float32 draft they stand in for. Random weights in real Qwen2.5 shapes; each step is one BatchedRunner forward of
rows x tokens over `--ctx` cached tokens, as the draft's engine runs it.
Usage: python scripts/cpu_draft_steps.py [--shape qwen2.5-0.5b] [--rows 1 4 8] [--tokens 1 5] [--ctx 256]"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch

from specdec.core.batching import BatchedRunner
from specdec.core.int8 import quantize_linears
from specdec.core.random_models import random_model


def per_tensor(model: torch.nn.Module) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


def step_ms(runner: BatchedRunner, rows: int, tokens: int, ctx: int, reps: int) -> float:
    ids = torch.randint(0, 1000, (rows, tokens))
    positions = torch.arange(ctx, ctx + tokens).repeat(rows, 1)  # [rows, tokens]
    times = []
    for _ in range(reps + 2):
        t0 = time.perf_counter()
        runner.forward_rows(ids, positions)
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times[2:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="qwen2.5-0.5b")
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--ctx", type=int, default=256, help="cached tokens per row")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    base = random_model(f"random:{args.shape}", device="cpu", dtype=torch.float32).model
    per_row = copy.deepcopy(base)
    quantize_linears(per_row)
    forms = {"int8 per call (torch.ao)": per_tensor(copy.deepcopy(base)), "int8 per row (core.int8)": per_row,
             "float32": base}
    print(f"{args.shape}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.ctx} cached tokens; "
          "median ms of one step")
    print("| rows x tokens | " + " | ".join(forms) + " |")
    print("| --- |" + " --- |" * len(forms))
    runners = {name: BatchedRunner(model, launch=None, max_len=args.ctx + 64, max_sessions=max(args.rows))
               for name, model in forms.items()}
    for rows in args.rows:
        for tokens in args.tokens:
            cells = [f"{step_ms(r, rows, tokens, args.ctx, args.reps):.1f}" for r in runners.values()]
            print(f"| {rows} x {tokens} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
