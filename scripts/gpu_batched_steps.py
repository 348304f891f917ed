#!/usr/bin/env python3
"""The batched engine's step cost t(rows, tokens per row): one step of R rows x n tokens, each row at position
`--ctx` (so it attends to that many cached tokens). On a GPU: bf16 random weights in real Qwen2.5 shapes, the
engine's grouped attention and HF's SDPA path side by side; on a CPU: any model `serve` loads (e.g. the GGUF
pair). One JSON line per (model, attention, rows, tokens); the load figures' analytic bounds come from it.

    python scripts/gpu_batched_steps.py random:qwen2.5-7b --rows 1,4,16,64 --tokens 1,5
    python scripts/gpu_batched_steps.py ~/.cache/specdec/qwen2.5-coder/target.gguf --device cpu --rows 1,4 --tokens 1,5
"""

from __future__ import annotations

import argparse
import json

from specdec.core.batching import BatchedRunner
from specdec.core.models import load_model
from specdec.tools.sweep import batched_step_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--rows", default="1,4,16,64")
    p.add_argument("--tokens", default="1,5")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--max-len", type=int, default=1024)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--sdpa", action="store_true", help="also time HF's SDPA attention (keys repeated per head)")
    args = p.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    for name in args.models:
        model = load_model(name, "target", device=args.device, dtype=args.dtype).model
        runner = BatchedRunner(model, max_len=args.max_len, max_sessions=max(rows))
        try:
            for attention in ("grouped", "sdpa") if args.sdpa else ("grouped",):
                if attention == "sdpa":  # the same runner, its graphs captured again with HF's attention
                    model.set_attn_implementation("sdpa")
                    runner._graphs.clear()
                    if runner.cuda_graphs:
                        runner._capture_all()
                for n in (int(t) for t in args.tokens.split(",")):
                    for r in rows:
                        ms = 1e3 * batched_step_s(runner, r, n, args.ctx, args.reps)
                        print(json.dumps({"model": name, "attention": attention, "rows": r, "tokens": n,
                                          "ctx": args.ctx, "ms": round(ms, 2)}), flush=True)
        finally:
            runner.stop()
        del runner, model


if __name__ == "__main__":
    main()
