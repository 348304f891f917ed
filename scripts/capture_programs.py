"""Which of a GPU engine's start-up shapes compile a program of their own: its warm-up forwards (`_warm_up_forwards`),
then every step graph's shape over each span and every prompt-chunk graph's (`_capture_all`), each run once through
decoder layers compiled with aot_eager (dynamo and functionalization as inductor receives them, no code generated).

Emulated on a CPU: a one-layer Qwen2 with the 0.5B's and 7B's query heads per key/value head (7), steps attending
as on a GPU (written out at small steps, `attention.writes_out`; an eager step over the whole cache, `_span`), no
CUDA graph captured. What it tells: how many of the shapes a GPU captures compile anew at capture, so whether
capture's time on a GPU (~0.7-1 s a graph compiled, ~0.13 s uncompiled) is compiling or something else.

Usage: python3 scripts/capture_programs.py [--max-sessions 64] [--passive]
"""

from __future__ import annotations

import argparse

import torch
from torch._dynamo.utils import counters
from transformers import Qwen2Config, Qwen2ForCausalLM

from specdec.core import attention
from specdec.core.batching import BatchedRunner, _StepInputs
from specdec.core.compiled import compile_layers
from specdec.core.cpu_kernels import STOCK


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-sessions", type=int, default=64, help="the engine's slots (its row buckets up to it)")
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--passive", action="store_true",
                        help="a runner without an engine loop (an own draft's): every caller's chunk shapes")
    args = parser.parse_args()

    attention.writes_out = lambda device, folded: folded <= attention.WRITTEN_OUT_MAX  # as on a GPU
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=112, num_hidden_layers=1, num_attention_heads=14,
                                         num_key_value_heads=2, intermediate_size=64)).eval()
    runner = BatchedRunner(model, launch=None, max_len=args.max_len, max_sessions=args.max_sessions,
                           cpu_kernels=STOCK, prefill_chunk=512)
    runner.passive, runner.compiled, runner.bucket_chunks = args.passive, True, True  # as a GPU's
    runner._span = lambda reach: None  # an eager step attends over the whole cache, as on a GPU
    compile_layers(model, backend="aot_eager")
    counters.clear()
    seen = 0

    def run(what: str, inputs: _StepInputs, keep: int) -> None:
        nonlocal seen
        with torch.inference_mode():
            runner._run(inputs, keep=keep)
        now = counters["stats"]["unique_graphs"]
        if now != seen:
            print(f"{what}: {now - seen} new program(s), {now} in all", flush=True)
        seen = now

    forwards = runner._warm_up_forwards()
    for b, n, first, span in forwards:
        run(f"warm-up {b}x{n} from slot {first} over {span or 'all'} columns",
            _StepInputs(torch.zeros((b, n), dtype=torch.long), torch.arange(n).repeat(b, 1), first, span), 1)
    warm = seen
    end = runner.max_len
    steps, chunks = runner._step_shapes(), runner._chunk_shapes()
    for b, n in steps:
        for span in reversed(runner._spans):
            run(f"step graph {b}x{n} over {span} columns",
                _StepInputs(torch.zeros((b, n), dtype=torch.long), torch.arange(end, end + n).repeat(b, 1),
                            span=None if span == runner._spans[-1] else span), n)
    for b, n in chunks:
        run(f"chunk graph {b}x{n}", _StepInputs(torch.zeros((b, n), dtype=torch.long), torch.full((b, n), end),
                                                slots=torch.zeros(b, dtype=torch.long)), 1)
    print(f"{warm} programs at warm-up ({len(forwards)} forwards); {seen - warm} more at capture, over "
          f"{len(steps) * len(runner._spans)} step graphs and {len(chunks)} chunk graphs")


if __name__ == "__main__":
    main()
