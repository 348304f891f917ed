"""What a graph step costs when its rows reach only part of the cache: the batched runner's captured steps (compiled
layers, as the engine runs them) with every row at a short context (the step attends over a 256-column span) and at
a long one (over the whole cache), side by side in one process; only the steps timed are captured (and prompt
chunks of a step's width at most, which the runner always captures). Then a fingerprint
of one step's logits (the argmax ids of a fixed random input's 64 x 3 step), to compare two builds' arithmetic.
`--inductor NAME=VALUE` sets an inductor option before compiling (e.g. combo_kernels=True, which fuses independent
kernels horizontally: a small model's step is bound by its kernels' count), to time a build with it beside one without.
Usage: python3 scripts/gpu_span_steps.py [MODEL...] [--inductor NAME=VALUE]... (default random:qwen2.5-0.5b
random:qwen2.5-7b; max_len 1024, contexts 100 and 600)"""

from __future__ import annotations

import argparse
import ast
import logging

import torch

from specdec.core.batching import BatchedRunner
from specdec.core.config import TOKEN_BUCKETS
from specdec.core.models import load_model
from specdec.tools.sweep import batched_step_s

STEPS = ((1, 1), (16, 1), (16, 3), (64, 1), (64, 3))  # rows x tokens per row
CONTEXTS = (100, 600)


def inductor_option(text: str) -> tuple[str, object]:
    """'combo_kernels=True' -> ('combo_kernels', True): an option of torch._inductor.config and a Python literal."""
    name, _, value = text.partition("=")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=VALUE with a Python literal value") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", default=["random:qwen2.5-0.5b", "random:qwen2.5-7b"])
    parser.add_argument("--inductor", type=inductor_option, action="append", default=[], metavar="NAME=VALUE",
                        help="an option of torch._inductor.config, set before compiling (repeatable)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")  # compile and capture times
    import torch._inductor.config as inductor

    for name, value in args.inductor:
        if not hasattr(inductor, name):
            parser.error(f"torch._inductor.config has no option {name!r}")
        setattr(inductor, name, value)
        print(f"inductor: {name} = {value!r}", flush=True)
    for spec in args.models:
        loaded = load_model(spec, "target", device="cuda:0", dtype="bfloat16")
        # prompt chunks of a step's width at most: no chunk is timed here, and each longer chunk shape would
        # compile a program of its own at start
        runner = BatchedRunner(loaded.model, max_len=1024, max_sessions=64, prefill_chunk=TOKEN_BUCKETS[-1],
                               captured=(sorted({r for r, _ in STEPS}), sorted({n for _, n in STEPS})))
        try:
            print(f"== {spec}, spans {runner._spans}: graph step ms at {' / '.join(map(str, CONTEXTS))} cached tokens",
                  flush=True)
            for rows, tokens in STEPS:
                cells = [1e3 * batched_step_s(runner, rows, tokens, ctx, reps=20) for ctx in CONTEXTS]
                print(f"  {rows:2d}x{tokens}: " + " / ".join(f"{c:.2f}" for c in cells)
                      + f"  ({cells[0] / cells[1]:.2f}x)", flush=True)
            ids = torch.randint(0, runner.vocab_size, (64, 3), generator=torch.Generator().manual_seed(0))
            top = runner.forward_rows(ids, torch.arange(100, 103).repeat(64, 1)).argmax(-1).cpu()  # [64, 3]
            print(f"  logits fingerprint (64x3 at 100): argmax ids sum {int(top.sum())}, first row {top[0].tolist()}",
                  flush=True)
        finally:
            runner.stop(wait_s=10.0)
        del runner, loaded


if __name__ == "__main__":
    main()
