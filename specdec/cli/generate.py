"""`specdec generate PROMPT...`: speculative decoding in this process, no services: the prompts decode together
in the batched engine a target service runs (tools/inprocess.py), with the draft placed as the services place it."""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor

from specdec.cli.options import add_model_args, add_sampling_args, add_speculation_args, print_result, sampling_of
from specdec.core.config import GenerationRequest, ProposerKind, SpeculationConfig


def add_parser(sub) -> None:
    gen = sub.add_parser("generate", help="generate text in one process (no services)",
                         description="Generate from each PROMPT with speculative decoding in this process. Several "
                                     "prompts decode at once in one batched engine, as concurrent clients of a "
                                     "target service would; one prompt's text streams as it is generated, several "
                                     "are printed in order once all are done.")
    gen.add_argument("prompt", nargs="+", help="the prompt text (several: decoded together)")
    gen.add_argument("--chat", action="store_true", help="apply the target's chat template to the prompt")
    gen.add_argument("--json", action="store_true", help="print one JSON object per prompt: text, token_ids, stats")
    gen.add_argument("--no-compile", action="store_true",
                     help="on a GPU, run the decoder layers as they are instead of torch.compile'd (starts sooner: "
                          "compiling takes a minute or more per model on an empty kernel cache; steps are slower)")
    add_model_args(gen)
    add_sampling_args(gen)
    add_speculation_args(gen)
    gen.set_defaults(func=run)


def pair_config(args: argparse.Namespace, sessions: int = 1):
    from specdec.core.pair import PairConfig

    proposer = ProposerKind(args.proposer)
    speculate = not args.no_draft
    return PairConfig(target=args.target, draft=args.draft if speculate and proposer != ProposerKind.NGRAM else None,
                      device=args.device, draft_device=args.draft_device, dtype=args.dtype, draft_dtype=args.draft_dtype,
                      max_len=args.max_len, max_sessions=sessions,
                      speculation=SpeculationConfig(k=args.k if speculate else 0, max_k=max(1, args.k),
                                                    adaptive=args.adaptive_k),
                      proposer=proposer if speculate else ProposerKind.DRAFT_MODEL, cpu_kernels=args.cpu_kernels)


def run(args: argparse.Namespace) -> int:
    # A bad value is refused before torch and the models load (seconds on a small machine).
    sampling = sampling_of(args).validate()
    from specdec.core.decoder import collect
    from specdec.core.models import encode_text
    from specdec.tools.inprocess import InProcessTarget

    engine = InProcessTarget.load(pair_config(args, len(args.prompt)), compile=not args.no_compile)
    try:
        requests = [GenerationRequest(prompt_ids=encode_text(engine.tokenizer, prompt, args.chat),
                                      max_new_tokens=args.max_new_tokens, sampling=sampling, stop=tuple(args.stop),
                                      ignore_eos=args.ignore_eos).validate(max_new_tokens_limit=1 << 20,
                                                                           context_len=engine.context_length)
                    for prompt in args.prompt]
        if len(requests) == 1:
            on_text = None if args.json else (lambda t: print(t, end="", flush=True))
            print_result(collect(engine.stream(requests[0]), requests[0], engine.tokenizer, on_text).to_dict(),
                         args.json)
            return 0
        with ThreadPoolExecutor(max_workers=len(requests)) as pool:  # the engine batches them: a thread each
            futures = [pool.submit(collect, engine.stream(r), r, engine.tokenizer) for r in requests]
        for i, future in enumerate(futures):
            result = future.result()  # that prompt's error, if it failed
            if not args.json:
                print(("\n" if i else "") + f"--- prompt {i + 1} ---")
                print(result.text, end="", flush=True)
            print_result(result.to_dict(), args.json)
        return 0
    finally:
        engine.close()
