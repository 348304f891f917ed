"""`specdec up`: draft, target and orchestrator on loopback, until Ctrl-C."""

from __future__ import annotations

import argparse
import logging

from specdec.cli.options import add_cpu_kernels_arg, add_proposer_arg
from specdec.core.config import ProposerKind
from specdec.core.errors import InvalidArgument
from specdec.tools.launcher import Stack


def add_parser(sub) -> None:
    up = sub.add_parser("up", help="start draft, target and orchestrator on loopback",
                        description="Start all three services on loopback, wait until healthy, print the "
                                    "orchestrator address; Ctrl-C stops all three.")
    up.add_argument("--port", type=int, default=50051, help="orchestrator port; target +1, draft +2")
    up.add_argument("--target", default="tiny", help="target model (default: tiny)")
    up.add_argument("--draft", default="tiny", help="draft model (default: tiny)")
    up.add_argument("--no-draft", action="store_true", help="target only")
    up.add_argument("--own-draft", action="store_true",
                    help="no draft service: the target runs --draft itself, on its device, drafting for all its "
                         "sessions between its batched steps (the choice for one GPU shared by both models)")
    up.add_argument("--device", default="cpu", help="device of the target (default: cpu)")
    up.add_argument("--draft-device", default=None, help="device of the draft (default: --device)")
    up.add_argument("--dtype", default="auto", help="dtype of the target (default: auto)")
    up.add_argument("--draft-dtype", default=None, help="dtype of the draft (default: --dtype; auto = int8 on CPU)")
    add_cpu_kernels_arg(up)
    up.add_argument("--no-compile", action="store_true",
                    help="on a GPU: skip torch.compile of the models' layers at start (see `specdec serve --help`)")
    up.add_argument("--k", type=int, default=4, help="draft tokens per cycle, at most (adaptive K; default 4)")
    add_proposer_arg(up, "who drafts (default: draft-model)")
    up.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO)
    compiling = ["--no-compile"] if args.no_compile else []
    common = ["--device", args.device, "--dtype", args.dtype, "--cpu-kernels", args.cpu_kernels, *compiling]
    if args.own_draft:
        elsewhere = args.draft_device not in (None, args.device)
        if args.no_draft or elsewhere or args.proposer != ProposerKind.DRAFT_MODEL.value:
            raise InvalidArgument("own_draft", "runs the draft model in the target, on the target's device: it goes "
                                               "with neither --no-draft, another --draft-device nor --proposer "
                                               f"{args.proposer}")
        common += ["--own-draft", args.draft]
    stack = Stack(port=args.port, target=args.target, draft=None if args.no_draft or args.own_draft else args.draft,
                  extra={"target": common, "draft": ["--draft-device", args.draft_device or args.device,
                                                     "--dtype", args.draft_dtype or args.dtype,
                                                     "--cpu-kernels", args.cpu_kernels,
                                                     "--proposer", args.proposer, *compiling],
                         "orchestrator": ["--k", str(args.k)]})
    stack.start()
    return stack.run_until_signal()
