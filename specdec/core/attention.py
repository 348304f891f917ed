"""Attention for the batched engine's steps: grouped-query attention that reads each cached key once.

Given a mask, HF's SDPA path copies every key/value head once for each query head that shares it
(`repeat_kv`) before attending. For a step of B rows over a cache of L positions that is 2 x B x heads x L x
dim elements written and read per layer, and at 64 rows it costs more than the weights. Here the query heads
that share a key/value head are folded into the query length instead ([B, kv heads, groups * n, dim], with
the mask repeated per group), which is the same arithmetic on the same cached tensors, copied nowhere. The
engine makes that folded mask once per step, additive (`step_mask`: 0 where a key is attended, -inf where not),
which SDPA would otherwise make from a boolean mask in every layer (a fill and a conversion per layer: kernels
of their own in a small model's step, docs/benchmarks.md, call y2). Everything else (prefill chunks, no mask) goes
to HF's SDPA path unchanged, with a boolean mask.

On a GPU, a small step (few rows, one or a few tokens each) attends written out instead: matmul, masked softmax,
matmul, as HF's eager attention computes it (scores rounded to the model's dtype, softmax in float32). Fused by
the compiled layers (core.compiled), that is a few kernels where SDPA with a mask over the whole cache costs
several times as long for one or two rows of one token; with more rows it was no faster in a whole step, and
slower for a large target (docs/benchmarks.md, call h3).
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "specdec_grouped"
MAX_FOLDED = 512  # fold queries of at most this many rows per key/value head (decode and verify steps)
WRITTEN_OUT_MAX = 16  # on a GPU, attend written out when a step folds at most this many query rows in all


def writes_out(device: torch.device, folded_rows: int) -> bool:
    """Whether a step of `folded_rows` query rows in all (rows x query heads per key/value head x tokens) attends
    written out: on a GPU, at small steps only."""
    return device.type == "cuda" and folded_rows <= WRITTEN_OUT_MAX


def folds(groups: int, n: int) -> bool:
    """Whether a step of n tokens per row, `groups` query heads per key/value head, attends folded."""
    return groups > 1 and n * groups <= MAX_FOLDED


def step_mask(allowed: torch.Tensor, groups: int, dtype: torch.dtype) -> torch.Tensor:
    """A step's mask for every layer: `allowed` [B, 1, n, L] (True where a query attends to a key) folded per group
    and additive, [B, 1, groups * n, L] of `dtype` (0 or -inf), where the step attends folded; else `allowed`."""
    b, _, n, length = allowed.shape
    if not folds(groups, n):
        return allowed
    folded = allowed[:, :, None].expand(-1, -1, groups, -1, -1).reshape(b, 1, groups * n, length)
    # filled on the device from a Python scalar: no host-to-device copy, which a CUDA graph capture refuses
    return torch.zeros(folded.shape, dtype=dtype, device=allowed.device).masked_fill_(~folded, float("-inf"))


def written_out_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor,
                          scale: float) -> torch.Tensor:
    """query [B, H_kv, m, D], key/value [B, H_kv, L, D], an additive mask [B, 1, m, L] (0 or -inf) -> [B, H_kv, m, D]."""
    scores = (query @ key.transpose(-1, -2)).float() * scale + mask  # [B, H_kv, m, L]
    return scores.softmax(-1).to(value.dtype) @ value


def grouped_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """query [B, H, n, D], key/value [B, H_kv, L, D], and a step's mask (`step_mask`: folded and additive
    [B, 1, groups * n, L] where the step folds, else boolean [B, 1, n, L]) -> ([B, n, H, D], None)."""
    groups = getattr(module, "num_key_value_groups", 1)
    b, heads, n, dim = query.shape
    if (not folds(groups, n) or attention_mask is None or attention_mask.dtype == torch.bool
            or set(kwargs) & {"position_bias", "softcap"}):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs)
    kv_heads = heads // groups
    folded = query.reshape(b, kv_heads, groups * n, dim)  # query head kv * groups + g -> rows g * n .. g * n + n - 1
    if writes_out(query.device, b * groups * n) and not dropout:
        out = written_out_attention(folded, key, value, attention_mask, dim ** -0.5 if scaling is None else scaling)
    else:
        out = torch.nn.functional.scaled_dot_product_attention(folded, key, value, attn_mask=attention_mask,
                                                               dropout_p=dropout, scale=scaling)  # [B, H_kv, groups * n, D]
    return out.reshape(b, heads, n, dim).transpose(1, 2).contiguous(), None


def use_grouped_attention(model: torch.nn.Module) -> None:
    """Switch a model to `grouped_attention` (its masks are built as for SDPA)."""
    AttentionInterface.register(NAME, grouped_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
