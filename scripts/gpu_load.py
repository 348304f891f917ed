"""Concurrency sweep through the three services on one GPU: aggregate tokens/s, latency and TTFT per number of
concurrent clients, for each stack configuration. One JSON line per (config, concurrency) on stdout.

    python3 scripts/gpu_load.py --target random:qwen2.5-7b --draft random:qwen2.5-0.5b --concurrency 1,4,16,64

`replay-A` configs (e.g. replay-0.8, replay-0): speculation whose draft replays the target's own output at
acceptance A (recorded from the target-only deployment, which then runs first). A `-nolook` suffix on any
config serves it with `--no-lookahead` (each engine step read before the next is launched); `-fixedk` has the
orchestrator draft exactly --k tokens every cycle (no adaptive K).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time
from functools import partial

from specdec.core.models import load_tokenizer
from specdec.tools.launcher import Stack, free_base_port
from specdec.tools.loadtest import grpc_client
from specdec.tools.sweep import load_levels, record_continuations

CONFIGS = {  # name -> (with draft, extra target/draft flags, extra orchestrator flags)
    "target-only": (False, [], []),
    "target-only-unbatched": (False, ["--no-batching"], []),
    "target-only-si": (False, ["--switch-interval-ms", "0.5"], []),  # the engine thread gets the GIL back sooner
    "target-only-stream4": (False, ["--stream-interval", "4"], []),  # session threads woken once per 4 cycles
    "spec": (True, [], []),
    "spec-unbatched": (True, ["--no-batching"], []),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--target", default="random:qwen2.5-7b")
    p.add_argument("--draft", default="random:qwen2.5-0.5b")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--max-len", type=int, default=1024)
    p.add_argument("--max-sessions", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--concurrency", default="1,4,16,64")
    p.add_argument("--configs", default="target-only,spec",
                   help=f"comma-separated: {', '.join(CONFIGS)}, replay-A (a replayed draft at acceptance A), or "
                        "hf-generate (HF generate() at batch = concurrency)")
    p.add_argument("--rounds", type=int, default=2, help="requests per client (at least 4 in all per point)")
    p.add_argument("--k", type=int, default=4)
    args = p.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    names = args.configs.split(",")
    replayed = any(n.startswith("replay-") for n in names)
    if replayed and "target-only" not in names:
        names.insert(0, "target-only-record")  # records the continuations only
    names.sort(key=lambda n: not n.startswith("target-only"))  # the continuations are recorded first
    with tempfile.TemporaryDirectory() as scratch:
        book = str(pathlib.Path(scratch) / "replay.jsonl")
        for name in names:
            if name == "hf-generate":
                hf_generate(args, levels)
                continue
            base = name.removesuffix("-record").removesuffix("-nolook").removesuffix("-fixedk")
            with_draft, extra, orch = CONFIGS.get(base, (True, [], []))
            extra = extra + (["--no-lookahead"] if name.endswith("-nolook") else [])
            orch = orch + (["--fixed-k"] if name.endswith("-fixedk") else [])
            draft_extra = ["--replay-references", book, "--replay-alpha", base.split("-", 1)[1]] \
                if base.startswith("replay-") else []
            common = ["--device", args.device, "--dtype", args.dtype, "--max-len", str(args.max_len),
                      "--max-sessions", str(args.max_sessions), *extra]
            stack = Stack(port=free_base_port(), target=args.target, draft=args.draft if with_draft else None,
                          extra={"target": common, "draft": common + ["--draft-device", args.device, *draft_extra],
                                 "orchestrator": ["--k", str(args.k), "--max-workers", str(2 * max(levels)), *orch]})
            t0 = time.perf_counter()
            stack.start(timeout_s=400)
            print(f"# {name}: up in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            try:
                if replayed and name.startswith("target-only") and not pathlib.Path(book).exists():
                    record_continuations(partial(grpc_client, stack.address), load_tokenizer(args.target),
                                         args.max_new_tokens).save(book)
                for c, r, _ in ([] if name.endswith("-record") else
                             load_levels(partial(grpc_client, stack.address), levels, args.rounds,
                                         args.max_new_tokens)):
                    print(json.dumps({"config": name, "concurrency": c, **r.summary()}), flush=True)
            finally:
                stack.stop()
    return 0


def hf_generate(args: argparse.Namespace, levels: list[int]) -> None:
    """The outside reference, as `specdec bench --concurrency` runs it: HF `generate()` at batch = concurrency."""
    from specdec.core.models import load_model
    from specdec.tools.sweep import SweepSettings, sweep_hf_generate

    model = load_model(args.target, "target", device=args.device, dtype=args.dtype).model
    settings = SweepSettings(levels=tuple(levels), max_new_tokens=args.max_new_tokens)
    for point in sweep_hf_generate(settings, model):
        print(json.dumps({"config": "hf-generate", **point}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
