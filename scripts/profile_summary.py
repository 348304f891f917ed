"""Where a batched engine's process spends its time, from a py-spy profile (`py-spy record --subprocesses
--threads --idle --format raw`, or `--gil` instead of `--idle`: only the thread holding the interpreter's lock is
sampled): samples per process and thread kind, and the engine thread's samples by what it was doing under
`BatchedRunner._steps` (launching, reading, handing rows on, planning, drafting, waiting), and by the function it
was in (its innermost frame: where the host's own time goes); `--functions`: every thread's samples by the
functions on its stack, per process (with `--gil`: what holds the lock the engine waits for). Processes are told
apart by the pid py-spy gives them (on the H200 machine it gave a bench's services the bench's own: call r2). Used
to find why a target with its own draft takes more time per plain step at 64 rows than target-only on the H200
(docs/benchmarks.md, calls g1-g3, r1-r2).

`--under FUNCTION` groups the samples under another frame instead of the engine loop, e.g. BatchedRunner._capture_all:
where start-up's CUDA graph capture spends its time.

Usage: python3 scripts/profile_summary.py PROFILE [--depth 2] [--top 25] [--functions] [--under Class.function]
"""

from __future__ import annotations

import argparse
import collections
import re

ENGINE_LOOP = "BatchedRunner._steps"


def frames_of(stack: str) -> list[str]:
    """'function (file:line)' frames, outermost first, without the process and thread entries."""
    return [f.split(" (")[0] for f in stack.split(";") if not f.startswith(("process ", "thread "))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile")
    parser.add_argument("--depth", type=int, default=2, help="frames under the engine loop to group by")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--functions", action="store_true", help="also every thread's samples by function, per process")
    parser.add_argument("--under", default=ENGINE_LOOP, metavar="Class.function",
                        help=f"the frame whose samples are grouped by what runs under it (default {ENGINE_LOOP})")
    args = parser.parse_args()
    label = "engine thread" if args.under == ENGINE_LOOP else f"under {args.under}"
    threads: collections.Counter = collections.Counter()  # (process, thread kind) -> samples
    engine: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)  # process -> frames -> samples
    leaves: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)  # process -> innermost -> samples
    functions: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)  # process -> function -> samples
    for line in open(args.profile):
        stack, _, count = line.rstrip().rpartition(" ")
        if not count.isdigit():
            continue
        process = re.match(r'process (\d+):"([^"]*)"', stack)
        command = process.group(2) if process else ""
        name = f"{process.group(1) if process else '?'} {' '.join(command.split()[:4])}".strip()
        frames = frames_of(stack)
        in_engine = args.under in frames
        kind = (label if in_engine
                else next((f for f in frames if f in ("_worker", "_serve", "run_clients")), None)
                or (frames[3] if len(frames) > 3 else frames[-1] if frames else "?"))
        threads[(name, kind)] += int(count)
        if in_engine:
            i = len(frames) - 1 - frames[::-1].index(args.under)
            engine[name][";".join(frames[i + 1:i + 1 + args.depth]) or "(the loop itself)"] += int(count)
            leaves[name][frames[-1]] += int(count)
        for frame in set(frames) if args.functions else ():
            functions[name][frame] += int(count)
    print("samples by process and thread kind:")
    for (name, kind), n in threads.most_common(args.top):
        print(f"  {n:7d}  {name[:60]:60s}  {kind}")
    for name, counter in engine.items():
        total = sum(counter.values())
        print(f"\n{label} of {name[:60]} ({total} samples):")
        for frames, n in counter.most_common(args.top):
            print(f"  {100 * n / total:5.1f}%  {frames}")
        print(f"\n{label} of {name[:60]} by innermost frame:")
        for frame, n in leaves[name].most_common(args.top):
            print(f"  {100 * n / total:5.1f}%  {frame}")
    for name, counter in functions.items():
        print(f"\nevery thread of {name[:60]} by function on the stack (samples):")
        for frame, n in counter.most_common(args.top):
            print(f"  {n:7d}  {frame}")


if __name__ == "__main__":
    main()
