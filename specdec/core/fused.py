"""Fused projections: a decoder layer's query, key and value projections as one matmul, and its MLP's gate and
up projections as another (gpt-fast's `wqkv`, vLLM's QKVParallelLinear and MergedColumnParallelLinear).

Why: on a GPU a small model's batched step is bound by its kernel count, not its weights (core.compiled): three
projections of one input are three GEMM launches, each too small to fill the device, where one over the
concatenated weights reads the same weights once. Fewer launches per layer shorten every step: the draft's most.

How: in place, per layer, the weights concatenated into one Linear (the separate ones dropped, so no weight is
held twice) and the attention's and MLP's `forward` replaced by ones that split the fused output; rotary
embedding, cache update and attention go as the model's own code does them. Each output element is the same dot
product; a wider GEMM may take another kernel and round differently, as compiled layers do, so a fused model's
outputs are compared with the same fused model's (every runner over it runs fused: the change is to the model).
"""

from __future__ import annotations

import sys
import types

import torch
from torch import nn

ATTENTION = ("LlamaAttention", "Qwen2Attention")  # the attention forwards attention_forward follows
MLP = ("LlamaMLP", "Qwen2MLP")
_MARK = "_specdec_fused"


def _concatenated(linears: list[nn.Linear]) -> nn.Linear:
    """One Linear whose output is the given ones' outputs side by side; [sum(out), in] weight. Built on the meta
    device and given the concatenated tensors: no initialised weight of its own to allocate and overwrite."""
    first = linears[0]
    fused = nn.Linear(first.in_features, sum(x.out_features for x in linears), bias=first.bias is not None,
                      device="meta", dtype=first.weight.dtype)
    with torch.no_grad():
        fused.weight = nn.Parameter(torch.cat([x.weight for x in linears]), requires_grad=False)
        if first.bias is not None:
            fused.bias = nn.Parameter(torch.cat([x.bias for x in linears]), requires_grad=False)
    return fused


def attention_forward(modeling: types.ModuleType):
    """LlamaAttention / Qwen2Attention's forward with q, k and v from one matmul, over `modeling`'s (the attention
    class's module's) rotary embedding and attention functions."""
    rotary, interfaces, eager = (modeling.apply_rotary_pos_emb, modeling.ALL_ATTENTION_FUNCTIONS,
                                 modeling.eager_attention_forward)

    def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                attention_mask: torch.Tensor | None, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden [B, n, hidden] -> ([B, n, hidden], weights or None); the cache comes as `cache` (newer
        transformers) or `past_key_values`."""
        cache = kwargs.pop("cache", None)
        cache = kwargs.pop("past_key_values", None) if cache is None else cache
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query, key, value = self.qkv_proj(hidden_states).split(self.qkv_sizes, dim=-1)
        query_states = query.view(hidden_shape).transpose(1, 2)  # [B, heads, n, head_dim]
        key_states = key.view(hidden_shape).transpose(1, 2)  # [B, kv heads, n, head_dim]
        value_states = value.view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        query_states, key_states = rotary(query_states, key_states, cos, sin)
        if cache is not None:
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx)
        if getattr(self, "sliding_window", None) is not None:
            kwargs["sliding_window"] = self.sliding_window
        out, weights = interfaces.get_interface(self.config._attn_implementation, eager)(
            self, query_states, key_states, value_states, attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout, scaling=self.scaling, **kwargs)
        return self.o_proj(out.reshape(*input_shape, -1).contiguous()), weights

    return forward


def fused_mlp_forward(self, x: torch.Tensor) -> torch.Tensor:
    """LlamaMLP / Qwen2MLP's forward with gate and up from one matmul: [..., hidden] -> [..., hidden]."""
    gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
    return self.down_proj(self.act_fn(gate) * up)


def fuse_projections(model: nn.Module) -> int:
    """Fuse the projections of every attention and MLP module of `model` whose forward is one of those above (once:
    again is a no-op); returns how many modules were fused (0: none of the model's matched, and it runs as is)."""
    if hasattr(model, _MARK):
        return getattr(model, _MARK)
    fused = 0
    for module in model.modules():
        kind = type(module).__name__
        if kind in ATTENTION and all(type(getattr(module, n, None)) is nn.Linear for n in ("q_proj", "k_proj", "v_proj")):
            parts = [module.q_proj, module.k_proj, module.v_proj]
            module.qkv_proj = _concatenated(parts)
            module.qkv_sizes = tuple(x.out_features for x in parts)
            del module.q_proj, module.k_proj, module.v_proj
            module.forward = types.MethodType(attention_forward(sys.modules[type(module).__module__]), module)
            fused += 1
        elif kind in MLP and all(type(getattr(module, n, None)) is nn.Linear for n in ("gate_proj", "up_proj")):
            module.gate_up_proj = _concatenated([module.gate_proj, module.up_proj])
            del module.gate_proj, module.up_proj
            module.forward = types.MethodType(fused_mlp_forward, module)
            fused += 1
    setattr(model, _MARK, fused)
    return fused
