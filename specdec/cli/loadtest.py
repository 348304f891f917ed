"""`specdec loadtest`: concurrent clients against a local orchestrator."""

from __future__ import annotations

import argparse

from specdec.cli.options import add_sampling_flags, sampling_of
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
    add_sampling_flags(p.add_argument_group("sampling (default: greedy)"),
                       temperature_help="every request samples at this temperature",
                       seed_help="every request's seed (default: a fresh one each)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = load(args.address, args.concurrency, args.requests, args.prompt or DEFAULT_PROMPTS, args.max_new_tokens,
                  args.time_limit, sampling=sampling_of(args).validate())
    return report(result, args.json)
