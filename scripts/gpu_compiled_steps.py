"""What compiling the decoder layers (BatchedRunner(compile=True), core.compiled) buys on a GPU, and what it costs.

Per model: the batched runner built plain, then compiled (compile + CUDA graph capture time), graph step costs at
R rows x n tokens (every row at position 256) side by side, the argmax agreement of the two on one prefill
(fused kernels round differently), and for a draft (`--draft`) the own draft's K = 2 drafting phase
(propose_together for R greedy proposers) both ways.
Usage: python3 scripts/gpu_compiled_steps.py MODEL[:draft] ...   (e.g. random:qwen2.5-0.5b:draft random:qwen2.5-7b)
"""

from __future__ import annotations

import gc
import statistics
import sys
import time

import torch

from specdec.core.batching import BatchedRunner
from specdec.core.config import SamplingParams
from specdec.core.models import load_model
from specdec.proposers.base import propose_together
from specdec.proposers.draft_model import DraftModelFactory
from specdec.tools.sweep import batched_step_s

DEVICE = "cuda:0" if torch.cuda.is_available() else "cpu"  # a CPU run only checks the script
ROWS = (1, 16, 64) if DEVICE != "cpu" else (1, 2)
TOKENS = (1, 3, 5)


def drafting_phase_ms(runner: BatchedRunner, rows: int, k: int = 2, reps: int = 20) -> float:
    """Median ms of one K-token drafting phase for `rows` greedy proposers with 256 tokens cached each."""
    factory = DraftModelFactory(runner, runner.vocab_size)
    proposers = [factory.open(SamplingParams(), i) for i in range(rows)]
    sequences = [torch.randint(0, runner.vocab_size, (256,)).tolist() for _ in range(rows)]
    propose_together(proposers, sequences, [k] * rows)  # prefill and a first block
    committed = [s + p.token_ids[:1] + [7] for s, p in zip(sequences, propose_together(proposers, sequences, [k] * rows))]
    times = []
    for _ in range(reps + 3):
        for c in committed:
            del c[257:]
        torch.cuda.synchronize() if DEVICE != "cpu" else None
        t0 = time.perf_counter()
        propose_together(proposers, committed, [k] * rows)
        torch.cuda.synchronize() if DEVICE != "cpu" else None
        times.append(time.perf_counter() - t0)
    for p in proposers:
        p.close()
    return 1e3 * statistics.median(times[3:])


def main() -> None:
    for arg in sys.argv[1:] or ["random:qwen2.5-0.5b:draft"]:
        draft = arg.endswith(":draft")
        spec = arg.removesuffix(":draft")
        loaded = load_model(spec, "draft" if draft else "target", device=DEVICE,
                            dtype="bfloat16" if DEVICE != "cpu" else "float32")
        ids = torch.randint(0, loaded.model.config.vocab_size, (2, 64))
        firsts = {}
        for compiled in (False, True):  # plain first: compiling changes the model's layers in place
            t0 = time.perf_counter()
            runner = BatchedRunner(loaded.model, launch=None, max_len=1024, max_sessions=max(ROWS), compile=compiled)
            setup = time.perf_counter() - t0
            with torch.inference_mode():
                firsts[compiled] = runner._eager(ids, torch.arange(64).repeat(2, 1), keep=64).float().cpu()
            steps = " ".join(f"{r}x{n} {1e3 * batched_step_s(runner, r, n, 256):.2f}" for r in ROWS for n in TOKENS)
            print(f"{spec} compiled={compiled}: built in {setup:.0f} s; graph step ms: {steps}", flush=True)
            if draft:
                print("  drafting phase K=2 ms: " + " ".join(f"{r} rows {drafting_phase_ms(runner, r):.2f}"
                                                             for r in ROWS), flush=True)
            del runner
            gc.collect()
            torch.cuda.empty_cache() if DEVICE != "cpu" else None
        agree = (firsts[False].argmax(-1) == firsts[True].argmax(-1)).float().mean().item()
        print(f"  prefill argmax agreement {100 * agree:.2f}%, max |logit diff| "
              f"{(firsts[False] - firsts[True]).abs().max().item():.3g}", flush=True)
        del loaded
        gc.collect()


if __name__ == "__main__":
    main()
