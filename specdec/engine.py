"""Engine: a loaded target (and optional draft) with runners and a decoder, built from settings.

The CLI, the services and the benchmark all build models through here, so a model pair is always
checked (vocabulary) and sized (context) the same way.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from specdec.config import GenerationRequest, SamplingParams, SpeculationConfig
from specdec.cpu_kernels import ONEDNN
from specdec.decoder import SpeculativeDecoder, eos_ids_of
from specdec.errors import InvalidArgument
from specdec.models import LoadedModel, check_same_vocabulary, context_length, encode_prompt, load_model
from specdec.proposers import DRAFT_MODEL, NGRAM, make_factory
from specdec.runner import ModelRunner


@dataclass(frozen=True)
class EngineConfig:
    target: str = "tiny"
    draft: str | None = "tiny"  # None = target only
    device: str = "cpu"
    draft_device: str | None = None
    dtype: str = "auto"
    draft_dtype: str | None = None  # None = dtype
    max_len: int = 2048
    max_sessions: int = 8
    speculation: SpeculationConfig = SpeculationConfig()
    proposer: str = DRAFT_MODEL  # draft-model, ngram (no draft model loaded) or hybrid
    cpu_kernels: str = ONEDNN  # CPU models: oneDNN packed linears, or stock nn.Linear (cpu_kernels.py)

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, with_draft: bool = True) -> "EngineConfig":
        proposer = getattr(args, "proposer", DRAFT_MODEL)
        needs_model = with_draft and proposer != NGRAM
        return cls(target=args.target, draft=args.draft if needs_model else None, device=args.device,
                   draft_device=args.draft_device, dtype=args.dtype, max_len=args.max_len,
                   draft_dtype=getattr(args, "draft_dtype", None),
                   speculation=SpeculationConfig(k=args.k if with_draft else 0, max_k=max(1, args.k),
                                                 adaptive=getattr(args, "adaptive_k", False)),
                   proposer=proposer if with_draft else DRAFT_MODEL, cpu_kernels=getattr(args, "cpu_kernels", ONEDNN))


class Engine:
    def __init__(self, config: EngineConfig, target: LoadedModel, draft: LoadedModel | None) -> None:
        self.config = config
        self.target = target
        self.draft = draft
        self.tokenizer = target.tokenizer
        self.eos_ids = eos_ids_of(target.tokenizer, target.model)
        max_len = context_length(target.model, config.max_len)
        self.target_runner = ModelRunner(target.model, max_len=max_len, max_sessions=config.max_sessions,
                                         cpu_kernels=config.cpu_kernels)
        self.draft_runner = None
        proposers = None
        if draft is not None:
            self.draft_runner = ModelRunner(draft.model, max_len=context_length(draft.model, max_len),
                                            max_sessions=config.max_sessions, cpu_kernels=config.cpu_kernels)
            if self.draft_runner.vocab_size > self.target_runner.vocab_size:
                raise InvalidArgument("draft", f"draft vocabulary ({self.draft_runner.vocab_size}) is larger than "
                                               f"the target's ({self.target_runner.vocab_size})")
        if draft is not None or config.proposer == NGRAM:
            proposers = make_factory(config.proposer, self.draft_runner, self.target_runner.vocab_size)
        self.decoder = SpeculativeDecoder(self.target_runner, self.tokenizer, self.eos_ids, proposers,
                                          config.speculation)

    @classmethod
    def load(cls, config: EngineConfig) -> "Engine":
        target = load_model(config.target, "target", device=config.device, dtype=config.dtype)
        draft = None
        if config.draft is not None:
            draft = load_model(config.draft, "draft", device=config.draft_device or config.device,
                               dtype=config.draft_dtype or config.dtype)
            check_same_vocabulary(target, draft)
        return cls(config, target, draft)

    def encode(self, prompt: str, chat: bool = False) -> list[int]:
        if chat:
            return encode_prompt(self.tokenizer, messages=[{"role": "user", "content": prompt}])
        return encode_prompt(self.tokenizer, prompt)


def request_from_args(engine: Engine, args: argparse.Namespace) -> GenerationRequest:
    sampling = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    request = GenerationRequest(prompt_ids=engine.encode(args.prompt, args.chat) if args.prompt else [],
                                max_new_tokens=args.max_new_tokens, sampling=sampling, stop=tuple(args.stop),
                                ignore_eos=args.ignore_eos)
    return request.validate(max_new_tokens_limit=1 << 20, context_len=engine.target_runner.max_len)
