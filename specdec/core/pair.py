"""A loaded target (and optional draft) with their runners and the in-process decoder, built from settings.

The CLI, the services and the benchmark all build models through here, so a model pair is always
checked (vocabulary) and sized (context) the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from specdec.core.config import ProposerKind, SpeculationConfig
from specdec.core.cpu_kernels import ONEDNN
from specdec.core.decoder import SpeculativeDecoder
from specdec.core.errors import InvalidArgument
from specdec.core.models import LoadedModel, check_same_vocabulary, context_length, encode_text, eos_ids_of, load_model
from specdec.core.proposal import ProposerFactory
from specdec.core.runner import ModelRunner


@dataclass(frozen=True)
class PairConfig:
    target: str = "tiny"
    draft: str | None = "tiny"  # None = target only (or prompt lookup, which loads no model)
    device: str = "cpu"
    draft_device: str | None = None  # None = device
    dtype: str = "auto"
    draft_dtype: str | None = None  # None = dtype
    max_len: int = 2048
    max_sessions: int = 8
    speculation: SpeculationConfig = SpeculationConfig()
    proposer: ProposerKind = ProposerKind.DRAFT_MODEL
    cpu_kernels: str = ONEDNN  # CPU models: oneDNN packed linears, or stock nn.Linear (cpu_kernels.py)


def check_draft_head(target_vocab: int, draft_vocab: int) -> None:
    """A draft's logits may cover fewer tokens than the target's (padded rows past a shared tokenizer), never
    more: it would propose tokens the target cannot score."""
    if draft_vocab > target_vocab:
        raise InvalidArgument("draft", f"draft vocabulary ({draft_vocab}) is larger than the target's ({target_vocab})")


FactoryMaker = Callable[[ProposerKind, "ModelRunner | None", int], ProposerFactory]


class ModelPair:
    """The models of one process and the decoder over them. The caller passes the function that builds
    proposers (`specdec.proposers.make_factory`): the decoding layer never imports what it drives."""

    def __init__(self, config: PairConfig, target: LoadedModel, draft: LoadedModel | None,
                 make_factory: FactoryMaker | None = None) -> None:
        self.config = config
        self.target = target
        self.draft = draft
        self.tokenizer = target.tokenizer
        self.eos_ids = eos_ids_of(target.tokenizer, target.model)
        max_len = context_length(target.model, config.max_len)
        self.target_runner = ModelRunner(target.model, max_len=max_len, max_sessions=config.max_sessions,
                                         cpu_kernels=config.cpu_kernels)
        self.draft_runner = None
        proposers: ProposerFactory | None = None
        if draft is not None:
            self.draft_runner = ModelRunner(draft.model, max_len=context_length(draft.model, max_len),
                                            max_sessions=config.max_sessions, cpu_kernels=config.cpu_kernels)
            check_draft_head(self.target_runner.vocab_size, self.draft_runner.vocab_size)
        if make_factory is not None and (draft is not None or config.proposer == ProposerKind.NGRAM):
            proposers = make_factory(config.proposer, self.draft_runner, self.target_runner.vocab_size)
        self.decoder = SpeculativeDecoder(self.target_runner, self.tokenizer, self.eos_ids, proposers,
                                          config.speculation)

    @classmethod
    def load(cls, config: PairConfig, make_factory: FactoryMaker | None = None) -> "ModelPair":
        target = load_model(config.target, "target", device=config.device, dtype=config.dtype)
        draft = None
        if config.draft is not None:
            draft = load_model(config.draft, "draft", device=config.draft_device or config.device,
                               dtype=config.draft_dtype or config.dtype)
            check_same_vocabulary(target, draft)
        return cls(config, target, draft, make_factory)

    def encode(self, prompt: str, chat: bool = False) -> list[int]:
        return encode_text(self.tokenizer, prompt, chat)
