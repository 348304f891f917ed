"""Attention for the batched engine's steps: grouped-query attention that reads each cached key once.

Given a mask, HF's SDPA path copies every key/value head once for each query head that shares it
(`repeat_kv`) before attending. For a step of B rows over a cache of L positions that is 2 x B x heads x L x
dim elements written and read per layer, and at 64 rows it costs more than the weights. Here the query heads
that share a key/value head are folded into the query length instead ([B, kv heads, groups * n, dim], with
the mask repeated per group), which is the same arithmetic on the same cached tensors, copied nowhere.
Everything else (prefill chunks, no mask) goes to HF's SDPA path unchanged.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "specdec_grouped"
MAX_FOLDED = 512  # fold queries of at most this many rows per key/value head (decode and verify steps)


def grouped_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """query [B, H, n, D], key/value [B, H_kv, L, D], a boolean mask [B, 1, n, L] -> ([B, n, H, D], None)."""
    groups = getattr(module, "num_key_value_groups", 1)
    b, heads, n, dim = query.shape
    if (groups == 1 or attention_mask is None or attention_mask.dtype != torch.bool or attention_mask.ndim != 4
            or attention_mask.shape[1] != 1 or n * groups > MAX_FOLDED or set(kwargs) & {"position_bias", "softcap"}):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs)
    kv_heads = heads // groups
    folded = query.reshape(b, kv_heads, groups * n, dim)  # query head kv * groups + g -> rows g * n .. g * n + n - 1
    mask = attention_mask[:, :, None].expand(-1, -1, groups, -1, -1).reshape(attention_mask.shape[0], 1, groups * n, -1)
    out = torch.nn.functional.scaled_dot_product_attention(folded, key, value, attn_mask=mask, dropout_p=dropout,
                                                           scale=scaling)  # [B, H_kv, groups * n, D]
    return out.reshape(b, heads, n, dim).transpose(1, 2).contiguous(), None


def use_grouped_attention(model: torch.nn.Module) -> None:
    """Switch a model to `grouped_attention` (its masks are built as for SDPA)."""
    AttentionInterface.register(NAME, grouped_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
