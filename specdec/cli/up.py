"""`specdec up`: draft, target and orchestrator on loopback, until Ctrl-C."""

from __future__ import annotations

import argparse
import logging

from specdec.cli.options import add_cpu_kernels_arg, add_engine_process_arg, add_proposer_arg
from specdec.core.config import ProposerKind
from specdec.core.errors import InvalidArgument
from specdec.tools.launcher import Stack

log = logging.getLogger("specdec")


def add_parser(sub) -> None:
    up = sub.add_parser("up", help="start target, orchestrator and the draft on loopback",
                        description="Start the services on loopback, wait until healthy, print the orchestrator "
                                    "address; Ctrl-C stops them all. Where the draft shares the target's device "
                                    "(the default) the target runs it itself (--own-draft); on another device or "
                                    "dtype, with the ngram or hybrid proposer, or with --draft-service, it is a "
                                    "draft service of its own.")
    up.add_argument("--port", type=int, default=50051, help="orchestrator port; target +1, draft +2")
    up.add_argument("--target", default="tiny", help="target model (default: tiny)")
    up.add_argument("--draft", default="tiny", help="draft model (default: tiny)")
    up.add_argument("--no-draft", action="store_true", help="target only")
    up.add_argument("--own-draft", action="store_true",
                    help="no draft service: the target runs --draft itself, on its device, drafting for all its "
                         "sessions between its batched steps (the choice for one GPU shared by both models). The "
                         "default wherever the draft would share the target's device and dtype with the draft-model "
                         "proposer")
    up.add_argument("--draft-service", action="store_true",
                    help="a draft service beside the target even where the draft shares its device (two engines "
                         "on one device fall out of phase: docs/benchmarks.md)")
    up.add_argument("--device", default="cpu", help="device of the target (default: cpu)")
    up.add_argument("--draft-device", default=None, help="device of the draft (default: --device)")
    up.add_argument("--dtype", default="auto", help="dtype of the target (default: auto)")
    up.add_argument("--draft-dtype", default=None, help="dtype of the draft (default: --dtype; auto = int8 on CPU)")
    add_cpu_kernels_arg(up)
    up.add_argument("--no-compile", action="store_true",
                    help="on a GPU: skip torch.compile of the models' layers at start (see `specdec serve --help`)")
    add_engine_process_arg(up, "where the target runs its engine: on, a child process with gRPC in its own; off, one "
                               "process; auto (default): on for a CUDA device (see `specdec serve --help`)")
    up.add_argument("--k", type=int, default=4, help="draft tokens per cycle, at most (adaptive K; default 4)")
    add_proposer_arg(up, "who drafts (default: draft-model)")
    up.set_defaults(func=run)


def own_draft(args: argparse.Namespace) -> bool:
    """Whether the target runs the draft itself: asked for, or by default where a draft service would share the
    target's device (on one GPU two engines fall out of phase, and on a CPU they share its cores: there the own draft
    beat target-only where a draft service beside the target lost to it; docs/benchmarks.md)."""
    misfits = [flag for flag, misfit in (
        (f"--draft-device {args.draft_device}", args.draft_device not in (None, args.device)),
        (f"--draft-dtype {args.draft_dtype}", args.draft_dtype not in (None, args.dtype)),
        (f"--proposer {args.proposer}", args.proposer != ProposerKind.DRAFT_MODEL.value)) if misfit]
    if args.own_draft and (args.no_draft or args.draft_service or misfits):
        given = ", ".join((["--no-draft"] if args.no_draft else []) + (["--draft-service"] if args.draft_service else [])
                          + misfits)
        raise InvalidArgument("own_draft", "runs the draft model in the target, on the target's device and dtype, "
                                           f"with the draft-model proposer: it does not go with {given}")
    return args.own_draft or (not misfits and not args.no_draft and not args.draft_service)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO)
    compiling = ["--no-compile"] if args.no_compile else []
    common = ["--device", args.device, "--dtype", args.dtype, "--cpu-kernels", args.cpu_kernels, *compiling]
    own = own_draft(args)
    if own:
        common += ["--own-draft", args.draft]
    target = common + ["--engine-process", args.engine_process]
    if not args.no_draft:
        log.info("draft %s: %s", args.draft, "run by the target itself, between its batched steps (--draft-service: a "
                 "separate service)" if own else "a draft service")
    stack = Stack(port=args.port, target=args.target, draft=None if args.no_draft or own else args.draft,
                  extra={"target": target, "draft": ["--draft-device", args.draft_device or args.device,
                                                     "--dtype", args.draft_dtype or args.dtype,
                                                     "--cpu-kernels", args.cpu_kernels,
                                                     "--proposer", args.proposer, *compiling],
                         "orchestrator": ["--k", str(args.k)]})
    stack.start()
    return stack.run_until_signal()
