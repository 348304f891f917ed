"""The `specdec` command line: one module per command, each turning flags into typed settings and calling
the library. Wiring only."""

from __future__ import annotations

import argparse
import sys

from specdec import __version__


def build_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The parser, and its `serve` subparser (which `--config` files feed defaults to)."""
    from specdec.cli import bench, client, generate, loadtest, serve, up

    parser = argparse.ArgumentParser(
        prog="specdec", description="Lossless speculative decoding: a small draft model proposes, "
        "a large target model verifies; the output is exactly the target's.")
    parser.add_argument("--version", action="version", version=f"specdec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    generate.add_parser(sub)
    serving = serve.add_parser(sub)
    up.add_parser(sub)
    client.add_parser(sub)
    bench.add_parser(sub)
    loadtest.add_parser(sub)
    return parser, serving


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse flags; for `serve --config FILE`, the file's settings become defaults that flags override."""
    from specdec.cli.serve import apply_config

    parser, serving = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        args = apply_config(parser, serving, argv, args)
    return args


def main(argv: list[str] | None = None) -> int:
    import grpc

    from specdec.core.errors import SpecdecError

    try:
        args = parse_args(argv)
        return args.func(args)
    except SpecdecError as exc:
        print(f"specdec: error: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(f"specdec: error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
