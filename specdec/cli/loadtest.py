"""`specdec loadtest`: concurrent clients against a local orchestrator."""

from __future__ import annotations

import argparse

from specdec.core.config import SamplingParams
from specdec.tools.loadtest import DEFAULT_PROMPTS, report
from specdec.tools.loadtest import run as load


def add_parser(sub) -> None:
    p = sub.add_parser("loadtest", help="concurrent clients against a local orchestrator: throughput, "
                                        "latency percentiles, errors (loopback only)")
    p.add_argument("--address", default="127.0.0.1:50051", help="orchestrator host:port (loopback only)")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent clients")
    p.add_argument("--requests", type=int, default=10, help="requests per client")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--prompt", action="append", default=[], help="prompt (repeatable; default: a few built in)")
    p.add_argument("--time-limit", type=float, default=300.0, help="stop starting requests after this many s")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    g = p.add_argument_group("sampling (default: greedy)")
    g.add_argument("--temperature", type=float, default=0.0, help="every request samples at this temperature")
    g.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens; 0 = off")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1]; 1 = off")
    g.add_argument("--seed", type=int, default=None, help="every request's seed (default: a fresh one each)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sampling = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    result = load(args.address, args.concurrency, args.requests, args.prompt or DEFAULT_PROMPTS, args.max_new_tokens,
                  args.time_limit, sampling=sampling.validate())
    return report(result, args.json)
