"""Load target and draft models with their tokenizers.

A model spec is one of:
  - `tiny`                 the built-in pair (trained by scripts/train_tiny_pair.py, shipped in the package)
  - a local HF directory   (config.json + weights + tokenizer)
  - a `.gguf` file         (weights dequantised by transformers; the tokenizer is read from the GGUF)
  - a hub id               (only from the local HF cache: this never downloads)
  - `random:<shape>`       random weights in a real shape, for systems benchmarks (random_models.py)
"""

from __future__ import annotations

import hashlib
import json
import logging
import pathlib
from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from specdec.core.cpu_kernels import INT8, quantize_int8
from specdec.core.errors import InvalidArgument, VocabularyMismatch
from specdec.core.fused import fuse_projections

log = logging.getLogger("specdec.models")

TINY = "tiny"
RANDOM_PREFIX = "random:"
ASSETS = pathlib.Path(__file__).resolve().parents[1] / "assets" / "tiny"  # specdec/assets: package data
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoadedModel:
    name: str  # the spec it was loaded from, for messages
    model: torch.nn.Module
    tokenizer: object  # a transformers PreTrainedTokenizerBase
    fingerprint: str  # vocabulary fingerprint (see vocab_fingerprint)


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """The torch dtype a model is built in; `int8` builds in fp32 and quantizes after loading."""
    if dtype == INT8:
        if not device.startswith("cpu"):
            raise InvalidArgument("dtype", f"int8 is a CPU draft option (dynamic quantization); {device} takes "
                                           "bfloat16 or float16")
        return torch.float32
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise InvalidArgument("dtype", f"unknown dtype {dtype!r}; choose auto, {', '.join(DTYPES)}, {INT8}")
    return DTYPES[dtype]


def _source(spec: str, role: str) -> tuple[str, dict]:
    """Map a spec to (from_pretrained path or id, extra kwargs)."""
    if spec == TINY:
        return str(ASSETS / role), {}
    path = pathlib.Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise InvalidArgument(role, f"GGUF file {spec} does not exist")
        return str(path.parent), gguf_kwargs(path.name)
    if path.is_dir():
        return str(path), {}
    if path.exists():
        raise InvalidArgument(role, f"{spec} is a file but not a .gguf; pass a model directory or a .gguf file")
    return spec, {"local_files_only": True}


def gguf_kwargs(name: str) -> dict:
    """from_pretrained arguments for a GGUF file, its weights unpacked to dense tensors at load time.

    Newer transformers (with `GgufConfig`) otherwise keep the quantized blocks and, without a published
    matmul kernel for the device, unpack them again in every forward; older ones always unpacked. Dense
    weights are what the runner's kernels (oneDNN on CPU, CUDA graphs) are built for."""
    import transformers

    if hasattr(transformers, "GgufConfig"):
        return {"gguf_file": name, "quantization_config": transformers.GgufConfig(gguf_file=name, dequantize=True)}
    return {"gguf_file": name}


def load_model(spec: str, role: str = "target", *, device: str = "cpu", dtype: str = "auto",
               fuse: bool | None = None) -> LoadedModel:
    """Load one model and its tokenizer; raise InvalidArgument with a clear message on failure.

    `auto` is bf16 on a GPU; on a CPU fp32 for a target and int8 for a draft: a draft only proposes, so its
    precision moves acceptance, never the output, and on a CPU an int8 draft step costs a fraction of an
    fp32 one (docs/benchmarks.md), which is what decides whether speculation pays there at all.
    `fuse`: each layer's projections fused (core.fused; default on a GPU, where a step is bound by its kernel
    count): here, before any runner captures a CUDA graph over the separate weights."""
    if dtype == "auto" and role == "draft" and not device.startswith("cuda"):
        dtype = INT8
    loaded = _load(spec, role, device=device, dtype=dtype)
    if dtype == INT8:
        loaded.model = quantize_int8(loaded.model)
    if device.startswith("cuda") if fuse is None else fuse:
        n = fuse_projections(loaded.model)
        log.info("%s: fused the projections of %d attention and MLP modules%s", role, n,
                 "" if n else f" (none of {type(loaded.model).__name__}'s: it runs as loaded)")
    return loaded


def _load(spec: str, role: str, *, device: str, dtype: str) -> LoadedModel:
    if spec.startswith(RANDOM_PREFIX):
        from specdec.core.random_models import random_model

        return random_model(spec, device=device, dtype=resolve_dtype(dtype, device))
    source, kwargs = _source(spec, role)
    hf_logging.disable_progress_bar()  # per-tensor bars for a 3 MB model are noise; we report loading ourselves
    torch_dtype = resolve_dtype(dtype, device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **kwargs)
    except OSError as exc:
        hint = " (hub ids load only from the local cache; download it first)" if kwargs.get("local_files_only") else ""
        raise InvalidArgument(role, f"cannot load model {spec!r}{hint}: {exc}") from exc
    model.to(device).eval()
    return LoadedModel(name=spec, model=model, tokenizer=tokenizer, fingerprint=vocab_fingerprint(tokenizer))


def load_tokenizer(spec: str, role: str = "target"):
    """Only the tokenizer of a model spec (the orchestrator tokenizes but runs no model). Random-weight
    shapes use the built-in tokenizer: their ids only need to be the same in every service."""
    source, kwargs = (str(ASSETS / "target"), {}) if spec.startswith(RANDOM_PREFIX) else _source(spec, role)
    try:
        return AutoTokenizer.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise InvalidArgument(role, f"cannot load the tokenizer of {spec!r}: {exc}") from exc


def encode_prompt(tokenizer, prompt: str | None = None, messages: list[dict] | None = None) -> list[int]:
    """Tokenize once, in one place, so draft and target see the same ids; chat templates apply once."""
    if messages is not None:
        if not getattr(tokenizer, "chat_template", None):
            raise InvalidArgument("chat", "this model has no chat template; send a plain prompt")
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def encode_text(tokenizer, prompt: str, chat: bool = False) -> list[int]:
    """A user's prompt as ids: as is, or (`chat`) as one user message under the model's chat template."""
    return encode_prompt(tokenizer, messages=[{"role": "user", "content": prompt}]) if chat else encode_prompt(tokenizer, prompt)


def vocab_fingerprint(tokenizer) -> str:
    """A hash of the token -> id map and the special tokens: equal iff ids mean the same text."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    special = {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}
    blob = json.dumps({"vocab": vocab, "special": special}, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def check_same_vocabulary(target: LoadedModel, draft: LoadedModel) -> None:
    """Refuse a pair whose tokenizers differ, naming the first difference."""
    if target.fingerprint == draft.fingerprint:
        return
    tv, dv = target.tokenizer.get_vocab(), draft.tokenizer.get_vocab()
    if len(tv) != len(dv):
        diff = f"vocabulary sizes differ: {len(tv)} vs {len(dv)}"
    else:
        by_id_t = {i: t for t, i in tv.items()}
        by_id_d = {i: t for t, i in dv.items()}
        first = next((i for i in sorted(by_id_t) if by_id_t[i] != by_id_d.get(i)), None)
        diff = (f"token id {first} is {by_id_t[first]!r} in the target but {by_id_d.get(first)!r} in the draft"
                if first is not None else "special tokens differ")
    raise VocabularyMismatch(
        f"draft {draft.name!r} (vocab {draft.fingerprint}) and target {target.name!r} "
        f"(vocab {target.fingerprint}) use different tokenizers: {diff}. "
        "Speculative decoding exchanges token ids, so both must share one tokenizer.")


def context_length(model: torch.nn.Module, cap: int) -> int:
    """The KV length to allocate: the model's own limit, capped by what the user asked for."""
    own = getattr(model.config, "max_position_embeddings", None) or cap
    return min(int(own), cap)


def eos_ids_of(tokenizer, model=None) -> set[int]:
    """Every id that ends generation: the tokenizer's EOS and the model's generation_config EOS ids."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, Sequence):
        ids.update(int(e) for e in eos)
    return ids
