"""Random weights in real Qwen2.5 shapes, built on the device (no download, no file), for systems
benchmarks: every forward costs what the real shape costs."""

from __future__ import annotations

import torch

from specdec.core.errors import InvalidArgument
from specdec.core.models import RANDOM_PREFIX, LoadedModel, load_tokenizer, vocab_fingerprint

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
