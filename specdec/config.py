"""Typed settings shared by the CLI, the in-process decoder and the services.

Validation lives here, once: every entry point (CLI flags, gRPC requests) builds these dataclasses
and calls `validate()`, so a bad value gets the same message wherever it comes from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Sequence

from specdec.errors import InvalidArgument

MAX_K = 16  # the largest speculation length any code path accepts


class FinishReason(str, Enum):
    LENGTH = "length"  # max_new_tokens or the context is full
    EOS = "eos"
    STOP = "stop"  # a stop string matched
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen. temperature == 0 means greedy (argmax)."""

    temperature: float = 0.0
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0  # 1.0 = no nucleus filter
    seed: int | None = None  # None = a fresh random seed per request

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self) -> "SamplingParams":
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise InvalidArgument("temperature", f"must be a finite number >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise InvalidArgument("top_k", f"must be >= 0 (0 disables it), got {self.top_k}")
        if not (math.isfinite(self.top_p) and 0.0 < self.top_p <= 1.0):
            raise InvalidArgument("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.seed is not None and not (0 <= self.seed < 2**63):
            raise InvalidArgument("seed", f"must be in [0, 2^63), got {self.seed}")
        return self


@dataclass(frozen=True)
class SpeculationConfig:
    """How many tokens the proposer drafts per cycle."""

    k: int = 4  # fixed K, or the starting K when adaptive; 0 = no speculation (target only)
    adaptive: bool = False  # choose K per cycle from measured acceptance and step costs
    max_k: int = 8  # upper bound for adaptive K

    def validate(self) -> "SpeculationConfig":
        if not 0 <= self.k <= MAX_K:
            raise InvalidArgument("k", f"must be in [0, {MAX_K}], got {self.k}")
        if not 1 <= self.max_k <= MAX_K:
            raise InvalidArgument("max_k", f"must be in [1, {MAX_K}], got {self.max_k}")
        return self


@dataclass(frozen=True)
class GenerationRequest:
    """One request to generate: the prompt as token ids plus how to decode."""

    prompt_ids: list[int]
    max_new_tokens: int = 128
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # keep going past EOS (benchmarks want fixed lengths)

    def validate(self, *, max_new_tokens_limit: int, context_len: int,
                 vocab_size: int | None = None) -> "GenerationRequest":
        if not self.prompt_ids:
            raise InvalidArgument("prompt", "must not be empty")
        if vocab_size is not None:
            check_token_ids("prompt_ids", self.prompt_ids, vocab_size)
        if not 1 <= self.max_new_tokens <= max_new_tokens_limit:
            raise InvalidArgument(
                "max_new_tokens", f"must be in [1, {max_new_tokens_limit}], got {self.max_new_tokens}")
        if len(self.prompt_ids) + 1 > context_len:
            raise InvalidArgument(
                "prompt", f"is {len(self.prompt_ids)} tokens; the model's context holds {context_len}")
        if any(not s for s in self.stop):
            raise InvalidArgument("stop", "stop strings must not be empty")
        self.sampling.validate()
        return self


def check_token_ids(field: str, ids: Sequence[int], vocab_size: int | None) -> None:
    """Every id names a token of the model (in [0, vocab_size); without a vocabulary, at least >= 0)."""
    bad = next((t for t in ids if t < 0 or (vocab_size is not None and t >= vocab_size)), None)
    if bad is not None:
        limit = f"[0, {vocab_size})" if vocab_size is not None else ">= 0"
        raise InvalidArgument(field, f"token id {bad} is outside the vocabulary {limit}")
