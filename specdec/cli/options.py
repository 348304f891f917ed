"""Flag groups that several commands share, and the argparse types of their values."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from specdec.core.config import EngineProcessMode, ProposerKind, SamplingParams
from specdec.core.cpu_kernels import CPU_KERNELS, ONEDNN

PROPOSERS = [kind.value for kind in ProposerKind]
LOG_LEVELS = ["debug", "info", "warning", "error"]


def add_log_level_arg(p: argparse.ArgumentParser, default: str, help: str) -> None:
    p.add_argument("--log-level", default=default, choices=LOG_LEVELS, help=help)


def configure_logging(level: str, who: str) -> None:
    """Log lines on stderr from `level` up, each naming `who` (a service's role, or the command): the three services
    and a bench's in-process engines write to one terminal."""
    logging.basicConfig(level=level.upper(), format=f"%(asctime)s {who} %(levelname)s %(name)s: %(message)s")


def add_model_args(p: argparse.ArgumentParser, *, draft: bool = True) -> None:
    g = p.add_argument_group("models")
    g.add_argument("--target", default="tiny",
                   help="target model: 'tiny' (built-in), an HF directory, a .gguf file, or a cached hub id "
                        "(default: tiny)")
    if draft:
        g.add_argument("--draft", default="tiny", help="draft model, same forms as --target (default: tiny)")
        g.add_argument("--draft-device", default=None, help="device of the draft (default: --device)")
        g.add_argument("--draft-dtype", default=None,
                       help="dtype of the draft (default: --dtype; `auto` is int8 on CPU, bf16 on CUDA). The draft "
                            "only proposes, so its precision changes acceptance, never the output: on CPU an int8 "
                            "draft step costs about 0.4 of an fp32 one")
    g.add_argument("--device", default="cpu", help="device of the target: cpu or cuda:N (default: cpu)")
    g.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA; on CPU fp32 for a target, int8 for a draft), "
                   "float32, bfloat16, float16, or int8 (CPU: int8 weights and activations in the linear layers, each "
                   "row quantized on its own; meant for a draft)")
    g.add_argument("--max-len", type=int, default=2048,
                   help="KV cache length per session, in tokens: prompt plus output (default: 2048). It sizes the cache "
                        "(memory, and how many sessions fit); a batched step's attention reads only the span its "
                        "sessions reach (on a GPU in spans of 256, 1024, 4096, ... columns), not all of it")
    add_cpu_kernels_arg(g)


def add_cpu_kernels_arg(g) -> None:
    g.add_argument("--cpu-kernels", default=ONEDNN, choices=CPU_KERNELS,
                   help="CPU models only: 'onednn' packs linear weights for oneDNN once at load (faster decode, much "
                        "flatter verify cost); 'stock' keeps torch.nn.Linear (default: onednn)")


def add_sampling_flags(g, *, temperature_help: str = "0 = greedy (default: 0)", seed: int | None = None,
                       seed_help: str = "seed for reproducible sampling") -> None:
    """--temperature, --top-k, --top-p and --seed (read back by `sampling_of`) in the group or parser `g`."""
    g.add_argument("--temperature", type=float, default=0.0, help=temperature_help)
    g.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens; 0 = off")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1]; 1 = off")
    g.add_argument("--seed", type=int, default=seed, help=seed_help)


def sampling_of(args: argparse.Namespace) -> SamplingParams:
    """The SamplingParams of `add_sampling_flags`' flags."""
    return SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate at most (default: 128)")
    add_sampling_flags(g)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--ignore-eos", action="store_true", help="keep generating past EOS")


def add_proposer_arg(p, help: str, default: str | None = ProposerKind.DRAFT_MODEL.value) -> None:
    p.add_argument("--proposer", default=default, choices=PROPOSERS, help=help)


def add_engine_process_arg(p, help: str) -> None:
    """--engine-process [auto|on|off]: the flag alone means on; default auto (EngineProcessMode.apart)."""
    p.add_argument("--engine-process", nargs="?", const=EngineProcessMode.ON.value, default=EngineProcessMode.AUTO.value,
                   choices=[m.value for m in EngineProcessMode], help=help)


def add_speculation_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("speculation")
    g.add_argument("--k", type=int, default=4, help="draft tokens per cycle (the maximum with --adaptive-k; default 4)")
    g.add_argument("--adaptive-k", action="store_true",
                   help="choose K per cycle from measured acceptance and step costs, down to 0 when it does not pay")
    g.add_argument("--no-draft", action="store_true", help="plain target-only decoding (the baseline)")
    add_proposer_arg(g, "who drafts: the draft model, prompt lookup (n-gram; no draft model), or hybrid: per cycle "
                        "lookup, the draft model or neither, whichever should commit the most tokens per second "
                        "(default: draft-model)")


def add_security_args(p: argparse.ArgumentParser, *, server: bool) -> None:
    g = p.add_argument_group("security (plaintext without these)")
    g.add_argument("--tls-ca-file", default=None, help="PEM CA bundle to verify peers with (enables TLS as a client)")
    g.add_argument("--tls-cert-file", default=None, help="PEM certificate (server: enables TLS; client: for mTLS)")
    g.add_argument("--tls-key-file", default=None, help="PEM private key of --tls-cert-file")
    g.add_argument("--api-token-file", default=None,
                   help="orchestrator: accepted API tokens, one per line (or $SPECDEC_API_TOKENS, comma-separated); "
                        "client: the token to send (first line, or $SPECDEC_API_TOKEN)")
    if server:
        g.add_argument("--tls-client-auth", action="store_true",
                       help="require client certificates signed by --tls-ca-file (mutual TLS)")
        g.add_argument("--internal-token-file", default=None,
                       help="token for internal hops (or $SPECDEC_INTERNAL_TOKEN): target/draft accept only calls "
                            "that carry it; orchestrator/target present it")


def cpu_list(text: str) -> frozenset[int]:
    """'0-3,6' -> {0, 1, 2, 3, 6}."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            first, _, last = part.partition("-")
            cpus.update(range(int(first), int(last or first) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CPU numbers and ranges like 0-3,6, got {text!r}") from None
    if not cpus or min(cpus) < 0:
        raise argparse.ArgumentTypeError(f"expected CPU numbers and ranges like 0-3,6, got {text!r}")
    return frozenset(cpus)


def env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def print_result(result: dict, as_json: bool) -> None:
    """A generation's result (`to_dict()` of an in-process or a client result): one JSON object, or, after the
    streamed text, a one-line summary on stderr."""
    if as_json:
        print(json.dumps(result))
        return
    s = result["stats"]
    print(f"\n\n[{s['new_tokens']} tokens, {s['tokens_per_second']:.1f} tok/s, finish={result['finish_reason']}; "
          f"drafts={s['drafts']} draft_tokens={s['draft_tokens']} accepted={s['accepted_tokens']} "
          f"mean_acceptance_length={s['mean_acceptance_length']:.2f}]", file=sys.stderr)
