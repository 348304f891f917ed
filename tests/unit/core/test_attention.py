"""Grouped attention computes what HF's SDPA path computes, without repeating keys and values."""

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from specdec.core.attention import WRITTEN_OUT_MAX, grouped_attention, writes_out, written_out_attention


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


@pytest.mark.parametrize("n", [1, 5])
def test_written_out_attention_equals_sdpa(n):
    torch.manual_seed(n)
    b, kv_heads, m, length, dim = 3, 2, 3 * n, 40, 8
    query = torch.randn(b, kv_heads, m, dim)
    key, value = torch.randn(b, kv_heads, length, dim), torch.randn(b, kv_heads, length, dim)
    positions = torch.randint(0, length - n, (b, 1)) + torch.arange(m) % n  # folded: each group's tokens again
    mask = (torch.arange(length)[None, None, None, :] <= positions[:, None, :, None])  # [B, 1, m, L]
    want = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=0.3)
    torch.testing.assert_close(written_out_attention(query, key, value, mask, 0.3), want, rtol=1e-5, atol=1e-6)


def test_only_small_steps_on_a_gpu_attend_written_out():
    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert writes_out(gpu, 1) and writes_out(gpu, WRITTEN_OUT_MAX)
    assert not writes_out(gpu, WRITTEN_OUT_MAX + 1)  # large steps: SDPA is as fast or faster there
    assert not writes_out(cpu, 1)  # CPU steps read only their span of the cache through SDPA
