"""`specdec generate PROMPT`: speculative decoding in this process, no services."""

from __future__ import annotations

import argparse

from specdec.cli.options import add_model_args, add_sampling_args, add_speculation_args, print_result
from specdec.core.config import GenerationRequest, ProposerKind, SamplingParams, SpeculationConfig


def add_parser(sub) -> None:
    gen = sub.add_parser("generate", help="generate text in one process (no services)",
                         description="Generate from PROMPT with speculative decoding in this process.")
    gen.add_argument("prompt", help="the prompt text")
    gen.add_argument("--chat", action="store_true", help="apply the target's chat template to the prompt")
    gen.add_argument("--json", action="store_true", help="print one JSON object: text, token_ids, stats")
    add_model_args(gen)
    add_sampling_args(gen)
    add_speculation_args(gen)
    gen.set_defaults(func=run)


def pair_config(args: argparse.Namespace):
    from specdec.core.pair import PairConfig

    proposer = ProposerKind(args.proposer)
    speculate = not args.no_draft
    return PairConfig(target=args.target, draft=args.draft if speculate and proposer != ProposerKind.NGRAM else None,
                      device=args.device, draft_device=args.draft_device, dtype=args.dtype, draft_dtype=args.draft_dtype,
                      max_len=args.max_len,
                      speculation=SpeculationConfig(k=args.k if speculate else 0, max_k=max(1, args.k),
                                                    adaptive=args.adaptive_k),
                      proposer=proposer if speculate else ProposerKind.DRAFT_MODEL, cpu_kernels=args.cpu_kernels)


def run(args: argparse.Namespace) -> int:
    # A bad value is refused before torch and the models load (seconds on a small machine).
    sampling = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed).validate()
    from specdec.core.pair import ModelPair
    from specdec.proposers import make_factory

    pair = ModelPair.load(pair_config(args), make_factory)
    request = GenerationRequest(prompt_ids=pair.encode(args.prompt, args.chat), max_new_tokens=args.max_new_tokens,
                                sampling=sampling, stop=tuple(args.stop), ignore_eos=args.ignore_eos,
                                ).validate(max_new_tokens_limit=1 << 20, context_len=pair.target_runner.max_len)
    on_text = None if args.json else (lambda t: print(t, end="", flush=True))
    result = pair.decoder.generate(request, on_text=on_text)
    print_result(result.to_dict(), args.json)
    return 0
