"""The batched engine's host time per target step, apart from the forwards: in-process own draft (the target
engine drafts for its sessions between steps, core.own_draft), C clients at exactly K drafts per cycle.

Host time per step = (wall - the target's forward time - the draft's forward time) / target steps: what the
engine's Python (planning, verifying, completing, handing on rows, drafting's bookkeeping) costs a step, the
part that does not shrink with a faster device. `--profile FILE` also writes a cProfile of the engine thread.

`--target-only` runs the same engine with no drafter (the draft runner is still built beside it): the baseline of
`--k 0`, an own draft that never drafts.

Usage: python3 scripts/engine_host_time.py [--clients 32] [--k 2] [--target-only] [--tokens 64] [--profile out.prof]
"""

from __future__ import annotations

import argparse
import cProfile
import time

from specdec.core.batching import BatchedRunner
from specdec.core.compute import Compute
from specdec.core.config import ProposerKind
from specdec.core.models import load_model
from specdec.proposers import make_factory
from specdec.serving.server import freeze_heap
from specdec.tools import loadtest
from specdec.tools.inprocess import InProcessTarget, own_draft_runner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="tiny")
    parser.add_argument("--draft", default="tiny")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--k", type=int, default=2, help="draft tokens per cycle (the most, with --adaptive-k)")
    parser.add_argument("--adaptive-k", action="store_true", help="choose K per cycle, as the services do by default")
    parser.add_argument("--target-only", action="store_true", help="no drafter: the target engine's sessions never draft")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    parser.add_argument("--max-len", type=int, default=128, help="context per slot (short: the forwards stay small)")
    parser.add_argument("--rounds", type=int, default=2, help="requests per client")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stream-interval", type=int, default=1, help="cycles handed to a session's reader at a time")
    parser.add_argument("--profile", help="write a cProfile of the engine thread's last repeat here")
    args = parser.parse_args()

    compute = Compute.for_device("cpu")
    target = compute.run(load_model, args.target, "target", device="cpu", dtype="auto")
    draft = compute.run(load_model, args.draft, "draft", device="cpu", dtype="auto")
    draft_runner = own_draft_runner(compute, draft, args.max_len, args.clients)
    drafts = make_factory(ProposerKind.DRAFT_MODEL, draft_runner)
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        loop = BatchedRunner._loop

        def profiled(self: BatchedRunner) -> None:
            profiler.enable()
            try:
                loop(self)
            finally:
                profiler.disable()
        BatchedRunner._loop = profiled
    engine = InProcessTarget(target, max_len=args.max_len, max_sessions=args.clients, k=args.k, adaptive_k=args.adaptive_k,
                             drafts=None if args.target_only else drafts, draft_runner=draft_runner, own_draft=True,
                             compute=compute)
    engine.runner.stream_interval = args.stream_interval
    freeze_heap()
    prompts = loadtest.DEFAULT_PROMPTS
    loadtest.run_clients(engine.client, args.clients, 1, prompts, 16, 600)  # warm-up
    for _ in range(args.repeats):
        t, d = engine.runner.stats, draft_runner.stats
        steps, t_fwd, d_fwd, rows = t.steps, t.forward_s, d.forward_s, t.rows
        t0 = time.perf_counter()
        result = loadtest.run_clients(engine.client, args.clients, args.rounds, prompts, args.tokens, 600)
        wall = time.perf_counter() - t0
        n = t.steps - steps
        host = wall - (t.forward_s - t_fwd) - (d.forward_s - d_fwd)
        k = "target-only" if args.target_only else f"<={args.k}" if args.adaptive_k else args.k
        print(f"{args.clients} clients, K={k}: {result.tokens / wall:.0f} tok/s, {n} target steps, "
              f"{(t.rows - rows) / n:.1f} rows per step, wall {1e3 * wall / n:.2f} ms per step: target forward "
              f"{1e3 * (t.forward_s - t_fwd) / n:.2f}, draft forwards {1e3 * (d.forward_s - d_fwd) / n:.2f}, "
              f"host {1e3 * host / n:.2f} ({1e6 * host / (t.rows - rows):.0f} us per row)", flush=True)
    engine.close()
    if profiler is not None:
        profiler.dump_stats(args.profile)


if __name__ == "__main__":
    main()
