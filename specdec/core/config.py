"""Typed settings and requests shared by the CLI, the in-process decoder and the services.

Validation lives here, once: every entry point (CLI flags, gRPC requests) builds these dataclasses
and calls `validate()`, so a bad value gets the same message wherever it comes from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Sequence

from specdec.core.errors import InvalidArgument

MAX_K = 16  # the largest speculation length any code path accepts
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
# The sizes of a batched step: core/batching.py captures a CUDA graph per pair, and its cost table and every
# service's rows-per-step histogram use the same cells. Here, not in batching, so that the orchestrator's
# metrics do not import the engine and with it transformers' model code (seconds at every start).
ROW_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)  # rows per step
TOKEN_BUCKETS = (1, 2, 3, 5, 9, 17)  # tokens per row (a decode step, a verify of K = 1, 2, 4, 8, 16)
CHUNK_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048)  # tokens per row of an eager prompt chunk on a GPU (few shapes)
SPAN_BUCKETS = (256, 1024, 4096, 16384)  # cache columns a captured step attends over, below the whole cache's
CHAT_ROLES = ("system", "user", "assistant")


class FinishReason(str, Enum):
    LENGTH = "length"  # max_new_tokens or the context is full
    EOS = "eos"
    STOP = "stop"  # a stop string matched
    CANCELLED = "cancelled"


class EngineProcessMode(str, Enum):
    """Where a target runs its engine (`serve target --engine-process`): in a child process, gRPC in the server's, or
    in the server's process. `auto` splits a CUDA target (the engine waits for the interpreter behind the sessions'
    gRPC threads) and keeps a CPU target whole (there the engine waits for its cores, and the front end's threads
    would take them): both measured, docs/benchmarks.md."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"

    def apart(self, device: str) -> bool:
        """Whether the engine runs in a child process for a target on `device`."""
        return self == EngineProcessMode.ON or (self == EngineProcessMode.AUTO and device.startswith("cuda"))


class ProposerKind(str, Enum):
    """Who drafts tokens; the value is the name used on the command line and in statistics."""

    DRAFT_MODEL = "draft-model"  # a small draft model
    NGRAM = "ngram"  # prompt lookup: no model
    HYBRID = "hybrid"  # per cycle lookup, the draft model or neither, whichever pays most


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

    def validate(self, field: str = "k") -> "SpeculationConfig":
        """`field` names k as the caller's input does (`k`, `start.k`)."""
        if not 0 <= self.k <= MAX_K:
            raise InvalidArgument(field, f"must be in [0, {MAX_K}], got {self.k}")
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
        if len(self.stop) > MAX_STOP_STRINGS:
            raise InvalidArgument("stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(self.stop)}")
        if any(not 1 <= len(s) <= MAX_STOP_CHARS for s in self.stop):
            raise InvalidArgument("stop", f"each stop string must have 1..{MAX_STOP_CHARS} characters")
        self.sampling.validate()
        return self


@dataclass(frozen=True)
class ChatMessage:
    role: str  # one of CHAT_ROLES
    content: str


@dataclass(frozen=True)
class TextRequest:
    """A request as a client sends it: text (or chat turns), not yet tokenized."""

    prompt: str | None = None
    messages: tuple[ChatMessage, ...] | None = None  # chat turns instead of a prompt
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_new_tokens: int | None = None  # None = the server's default
    stop: tuple[str, ...] = ()
    k: int | None = None  # None = the server's policy (adaptive K)
    ignore_eos: bool = False
    proposer: ProposerKind | None = None  # route to a draft running this proposer; None = any

    def validate(self) -> "TextRequest":
        """What can be checked before tokenizing; the token-level rules are GenerationRequest's."""
        if self.messages is not None:
            if not self.messages:
                raise InvalidArgument("chat.messages", "must not be empty")
            for i, m in enumerate(self.messages):
                if m.role not in CHAT_ROLES:
                    raise InvalidArgument(f"chat.messages[{i}].role", f"must be one of {CHAT_ROLES}, got {m.role!r}")
        elif not self.prompt:
            raise InvalidArgument("prompt", "must not be empty (send `prompt` or `chat`)")
        if self.k is not None:
            SpeculationConfig(k=self.k).validate()
        return self

    @property
    def texts(self) -> list[str]:
        return [self.prompt or ""] if self.messages is None else [m.content for m in self.messages]


def check_token_ids(field: str, ids: Sequence[int], vocab_size: int | None) -> None:
    """Every id names a token of the model (in [0, vocab_size); without a vocabulary, at least >= 0)."""
    bad = next((t for t in ids if t < 0 or (vocab_size is not None and t >= vocab_size)), None)
    if bad is not None:
        limit = f"[0, {vocab_size})" if vocab_size is not None else ">= 0"
        raise InvalidArgument(field, f"token id {bad} is outside the vocabulary {limit}")


@dataclass(frozen=True)
class TargetRequest:
    """What a target is asked for in one session: generate, speculating with a draft if one is named."""

    session_id: str
    generation: GenerationRequest
    seed: int  # resolved: every hop uses the same random numbers
    speculation: SpeculationConfig = SpeculationConfig(k=0)  # k = 0: target only
    draft_address: str = ""  # host:port of the draft; "" = target only
    overlap: bool = True  # let the draft draft ahead while the target verifies
    own_draft: bool = False  # draft with the target's own draft model (core.own_draft) instead of a draft service

    def validate(self, *, max_new_tokens_limit: int, context_len: int, vocab_size: int) -> "TargetRequest":
        if not self.session_id:
            raise InvalidArgument("session_id", "must not be empty")
        if self.own_draft and self.draft_address:
            raise InvalidArgument("own_draft", f"drafts with the target's own draft; draft_address "
                                               f"{self.draft_address!r} must be empty")
        self.speculation.validate()
        self.generation.validate(max_new_tokens_limit=max_new_tokens_limit, context_len=context_len,
                                 vocab_size=vocab_size)
        return self
