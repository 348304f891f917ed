"""`specdec client PROMPT`: send a prompt to an orchestrator and stream the answer."""

from __future__ import annotations

import argparse

from specdec.cli.options import add_proposer_arg, add_sampling_args, add_security_args, print_result, sampling_of
from specdec.cli.serve import security_of
from specdec.core.config import ProposerKind
from specdec.serving.client import Client, build_request


def add_parser(sub) -> None:
    client = sub.add_parser("client", help="send a prompt to an orchestrator and stream the answer")
    client.add_argument("prompt", help="the prompt text")
    client.add_argument("--address", default="127.0.0.1:50051", help="orchestrator host:port")
    client.add_argument("--chat", action="store_true", help="send the prompt as a user chat message")
    client.add_argument("--json", action="store_true", help="print one JSON object: text, token_ids, stats")
    client.add_argument("--k", type=int, default=None, help="override draft tokens per cycle")
    client.add_argument("--timeout", type=float, default=None, help="deadline in seconds")
    add_proposer_arg(client, "route to a draft running this proposer (default: any)", default=None)
    add_sampling_args(client)
    add_security_args(client, server=False)
    client.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sampling = sampling_of(args)
    messages = [{"role": "user", "content": args.prompt}] if args.chat else None
    request = build_request(None if args.chat else args.prompt, messages=messages, sampling=sampling,
                            max_new_tokens=args.max_new_tokens, stop=tuple(args.stop), k=args.k,
                            ignore_eos=args.ignore_eos, proposer=ProposerKind(args.proposer) if args.proposer else None)
    tls, tokens, _ = security_of(args, None)
    with Client(args.address, timeout_s=args.timeout, tls=tls if tls.enabled else None,
                token=tokens[0] if tokens else None) as client:
        on_text = None if args.json else (lambda t: print(t, end="", flush=True))
        result = client.generate(request, on_text)
    print_result(result.to_dict(), args.json)
    return 0
