"""Load target and draft models with their tokenizers.

A model spec is one of:
  - `tiny`                 the built-in pair (trained by scripts/train_tiny_pair.py, shipped in the package)
  - a local HF directory   (config.json + weights + tokenizer)
  - a `.gguf` file         (weights dequantised by transformers; the tokenizer is read from the GGUF)
  - a hub id               (only from the local HF cache: this never downloads)
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from specdec.cpu_kernels import INT8, quantize_int8
from specdec.errors import InvalidArgument, VocabularyMismatch

TINY = "tiny"
RANDOM_PREFIX = "random:"
# Real Qwen2.5 shapes, for systems benchmarks with random weights ("random:qwen2.5-7b"); the vocabulary
# is Qwen's size, the tokenizer the tiny pair's (ids it produces are valid in any of these).
QWEN25_SHAPES = {
    "qwen2.5-0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         intermediate_size=4864, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         intermediate_size=8960, tie_word_embeddings=True),
    "qwen2.5-7b": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                       intermediate_size=18944, tie_word_embeddings=False),
    "qwen2.5-32b": dict(hidden_size=5120, num_hidden_layers=64, num_attention_heads=40, num_key_value_heads=8,
                        intermediate_size=27648, tie_word_embeddings=False),
}
ASSETS = pathlib.Path(__file__).parent / "assets" / "tiny"
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


RESIDUAL_BRANCH_SCALE = 1e-3  # attention/MLP outputs stay tiny next to unit-scale embeddings


@torch.no_grad()
def plant_greedy_path(model) -> None:
    """Give a random-weight model a greedy continuation that bf16 rounding cannot flip.

    Plain random weights give nearly flat logits, so a (k+1)-token verify forward and a 1-token decode
    forward often round to different argmaxes and replayed acceptance stops meaning anything. Unit-scale
    embeddings dominate the residual stream and `lm_head[t] = embed[t + 1]` makes token t - 1 win by a
    wide margin after token t (a fixed, robust chain). Every layer keeps its random weights, so each
    forward costs what the real shape costs. Tied-embedding shapes (0.5B, 1.5B) get their own head: the
    same matmul, so the same cost, and then any two random models follow the same chain — a random
    draft-model proposer agrees with a random target (acceptance ~1, a "perfect draft" ceiling run
    through every mode, the services included). The output projections of every layer are scaled down
    so the deep stack of random layers cannot drown the planted signal; scaling changes no shape or cost.
    """
    embed = model.get_input_embeddings().weight
    embed.normal_(0.0, 1.0)
    head = model.get_output_embeddings()
    if head.weight.data_ptr() == embed.data_ptr():
        head.weight = torch.nn.Parameter(torch.empty_like(embed))
        model.config.tie_word_embeddings = False
    head.weight.copy_(torch.roll(embed, shifts=-1, dims=0))
    for layer in model.model.layers:  # keep the residual stream dominated by the embedding
        layer.self_attn.o_proj.weight.mul_(RESIDUAL_BRANCH_SCALE)
        layer.mlp.down_proj.weight.mul_(RESIDUAL_BRANCH_SCALE)


def random_model(spec: str, *, device: str, dtype: torch.dtype, seed: int = 0) -> LoadedModel:
    """Random weights in a real Qwen2.5 shape, built on the device (no download, no file)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = spec[len(RANDOM_PREFIX):]
    if shape not in QWEN25_SHAPES:
        raise InvalidArgument("model", f"unknown random shape {shape!r}; choose one of {sorted(QWEN25_SHAPES)}")
    config = Qwen2Config(vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6, **QWEN25_SHAPES[shape])
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the target dtype: 32B in fp32 would not fit
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(config)
            plant_greedy_path(model)
    finally:
        torch.set_default_dtype(default)
    tokenizer = load_tokenizer(spec)
    return LoadedModel(name=spec, model=model.eval(), tokenizer=tokenizer, fingerprint=vocab_fingerprint(tokenizer))


def load_model(spec: str, role: str = "target", *, device: str = "cpu", dtype: str = "auto") -> LoadedModel:
    """Load one model and its tokenizer; raise InvalidArgument with a clear message on failure.

    `auto` is bf16 on a GPU; on a CPU fp32 for a target and int8 for a draft: a draft only proposes, so its
    precision moves acceptance, never the output, and on a CPU an int8 draft step costs a fraction of an
    fp32 one (docs/benchmarks.md), which is what decides whether speculation pays there at all."""
    if dtype == "auto" and role == "draft" and not device.startswith("cuda"):
        dtype = INT8
    loaded = _load(spec, role, device=device, dtype=dtype)
    if dtype == INT8:
        loaded.model = quantize_int8(loaded.model)
    return loaded


def _load(spec: str, role: str, *, device: str, dtype: str) -> LoadedModel:
    if spec.startswith(RANDOM_PREFIX):
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
