"""What a target's own draft does in the first requests it serves: one short request (as a benchmark's warm-up
round sends), then a few longer ones, one at a time, in process (the target service's logic over a batched engine,
the target drafting for its sessions itself), adaptive K, the draft replaying the target's own continuations at
`--replay-alpha`. Prints each request's cycles, drafted cycles, drafts and accepted drafts.

A first request whose first block is rejected stops drafting (one block of none accepted says a = 0) and leaves
that in the acceptance later sessions start from; how long they then decode plainly is what this shows
(docs/benchmarks.md, call v4).

Usage: python3 scripts/first_sessions.py [--replay-alpha 0.8] [--requests 4] [--tokens 96]
"""

from __future__ import annotations

import argparse
import logging

from specdec.core.compute import Compute
from specdec.core.models import load_model
from specdec.proposers.replay import ReplayFactory, ReplayRates
from specdec.tools import loadtest
from specdec.tools.inprocess import InProcessTarget, own_draft_runner
from specdec.tools.sweep import WARM_UP_TOKENS, record_continuations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="tiny")
    parser.add_argument("--draft", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--replay-alpha", type=float, default=0.8)
    parser.add_argument("--requests", type=int, default=4, help="requests after the first, short one")
    parser.add_argument("--tokens", type=int, default=96, help="new tokens per request after the first")
    parser.add_argument("--log", action="store_true", help="the engine's log on stderr (adaptive K after each session)")
    args = parser.parse_args()
    if args.log:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    max_len = 2 * args.tokens + 64
    compute = Compute.for_device(args.device)
    target = compute.run(load_model, args.target, "target", device=args.device)
    draft = compute.run(load_model, args.draft, "draft", device=args.device)
    plain = InProcessTarget(target, max_len=max_len, max_sessions=1, compute=compute)
    try:  # the target's own continuations, decoded plainly, as `specdec bench` records them
        book = record_continuations(plain.client, target.tokenizer, args.tokens)
    finally:
        plain.close()
    draft_runner = own_draft_runner(compute, draft, max_len, 4)
    engine = InProcessTarget(target, max_len=max_len, max_sessions=4, draft_runner=draft_runner, own_draft=True,
                             drafts=ReplayFactory(draft_runner, book, ReplayRates(alpha=args.replay_alpha)),
                             compute=compute)
    try:
        engine.k, engine.adaptive_k = 4, True
        for i in range(1 + args.requests):
            tokens = WARM_UP_TOKENS if i == 0 else args.tokens
            r = loadtest.run_clients(engine.client, 1, 1, loadtest.DEFAULT_PROMPTS, tokens, 600)
            print(f"request {i} ({tokens} tokens): {r.cycles} cycles, {r.drafts} drafted, {r.draft_tokens} drafts, "
                  f"{r.accepted_tokens} accepted", flush=True)
    finally:
        engine.close()


if __name__ == "__main__":
    main()
