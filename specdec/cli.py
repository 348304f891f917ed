"""The `specdec` command line. Wiring only: parse flags, build core objects, print results."""

from __future__ import annotations

import argparse
import json
import sys

from specdec import __version__


def add_model_args(p: argparse.ArgumentParser, *, draft: bool = True) -> None:
    g = p.add_argument_group("models")
    g.add_argument("--target", default="tiny",
                   help="target model: 'tiny' (built-in), an HF directory, a .gguf file, or a cached hub id "
                        "(default: tiny)")
    if draft:
        g.add_argument("--draft", default="tiny", help="draft model, same forms as --target (default: tiny)")
        g.add_argument("--draft-device", default=None, help="device of the draft (default: --device)")
    g.add_argument("--device", default="cpu", help="device of the target: cpu or cuda:N (default: cpu)")
    g.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16 on CUDA), float32, bfloat16, float16")
    g.add_argument("--max-len", type=int, default=2048, help="KV cache length per session, in tokens (default: 2048)")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate at most (default: 128)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default: 0)")
    g.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens; 0 = off")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1]; 1 = off")
    g.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--ignore-eos", action="store_true", help="keep generating past EOS")


def add_speculation_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("speculation")
    g.add_argument("--k", type=int, default=4, help="draft tokens per cycle (default: 4)")
    g.add_argument("--no-draft", action="store_true", help="plain target-only decoding (the baseline)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specdec", description="Lossless speculative decoding: a small draft model proposes, "
        "a large target model verifies; the output is exactly the target's.")
    parser.add_argument("--version", action="version", version=f"specdec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser("generate", help="generate text in one process (no services)",
                         description="Generate from PROMPT with speculative decoding in this process.")
    gen.add_argument("prompt", help="the prompt text")
    gen.add_argument("--chat", action="store_true", help="apply the target's chat template to the prompt")
    gen.add_argument("--json", action="store_true", help="print one JSON object: text, token_ids, stats")
    add_model_args(gen)
    add_sampling_args(gen)
    add_speculation_args(gen)
    gen.set_defaults(func=cmd_generate)
    return parser


def cmd_generate(args: argparse.Namespace) -> int:
    from specdec.engine import Engine, EngineConfig, request_from_args

    engine = Engine.load(EngineConfig.from_args(args, with_draft=not args.no_draft))
    request = request_from_args(engine, args)
    on_text = None if args.json else (lambda t: print(t, end="", flush=True))
    result = engine.decoder.generate(request, on_text=on_text)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        s = result.stats
        print(f"\n\n[{s.new_tokens} tokens, {s.tokens_per_second:.1f} tok/s, finish={result.finish_reason.value}; "
              f"drafts={s.drafts} draft_tokens={s.draft_tokens} accepted={s.accepted_tokens} "
              f"mean_acceptance_length={s.mean_acceptance_length:.2f}]", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    from specdec.errors import SpecdecError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SpecdecError as exc:
        print(f"specdec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
