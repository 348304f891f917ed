"""Grouped attention computes what HF's SDPA path computes, without repeating keys and values."""

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from specdec.core.attention import grouped_attention


class Layer(torch.nn.Module):
    num_key_value_groups = 3


@pytest.mark.parametrize("n", [1, 5, 17])
def test_grouped_attention_equals_sdpa_with_repeated_keys(n):
    torch.manual_seed(n)
    b, kv_heads, length, dim = 4, 2, 40, 8
    query = torch.randn(b, n, kv_heads * 3, dim).transpose(1, 2)  # [B, H, n, D], not contiguous (as in a model)
    key, value = torch.randn(b, kv_heads, length, dim), torch.randn(b, kv_heads, length, dim)
    positions = torch.randint(0, length - n, (b, 1)) + torch.arange(n)  # each row at its own place
    mask = (torch.arange(length)[None, None, None, :] <= positions[:, None, :, None])  # [B, 1, n, L]
    want, _ = sdpa_attention_forward(Layer(), query, key, value, mask, scaling=dim ** -0.5)
    got, _ = grouped_attention(Layer(), query, key, value, mask, scaling=dim ** -0.5)
    assert got.shape == (b, n, kv_heads * 3, dim)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
