"""Grouped attention computes what HF's SDPA path computes, without repeating keys and values."""

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from specdec.core.attention import (
    MAX_FOLDED,
    WRITTEN_OUT_MAX,
    grouped_attention,
    step_mask,
    writes_out,
    written_out_attention,
)


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
    folded = step_mask(mask, Layer.num_key_value_groups, query.dtype)  # as the engine makes it, once per step
    assert folded.shape == (b, 1, 3 * n, length) and folded.dtype == query.dtype
    got, _ = grouped_attention(Layer(), query, key, value, folded, scaling=dim ** -0.5)
    assert got.shape == (b, n, kv_heads * 3, dim)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_a_step_that_does_not_fold_keeps_its_boolean_mask_for_hfs_path():
    """A prompt chunk (more query rows than MAX_FOLDED once folded) or a model without grouped heads attends through
    HF's SDPA path, with the mask as it was."""
    allowed = torch.ones(2, 1, MAX_FOLDED // 3 + 1, 8, dtype=torch.bool)
    assert step_mask(allowed, 3, torch.float32) is allowed
    one = allowed[:, :, :1]
    assert step_mask(one, 1, torch.float32) is one  # no grouped heads: nothing to fold


@pytest.mark.parametrize("n", [1, 5])
def test_written_out_attention_equals_sdpa(n):
    torch.manual_seed(n)
    b, kv_heads, m, length, dim = 3, 2, 3 * n, 40, 8
    query = torch.randn(b, kv_heads, m, dim)
    key, value = torch.randn(b, kv_heads, length, dim), torch.randn(b, kv_heads, length, dim)
    positions = torch.randint(0, length - n, (b, 1)) + torch.arange(m) % n  # folded: each group's tokens again
    mask = (torch.arange(length)[None, None, None, :] <= positions[:, None, :, None])  # [B, 1, m, L]
    want = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=0.3)
    additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))  # [B, 1, m, L]
    torch.testing.assert_close(written_out_attention(query, key, value, additive, 0.3), want, rtol=1e-5, atol=1e-6)


def test_only_small_steps_on_a_gpu_attend_written_out():
    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert writes_out(gpu, 1) and writes_out(gpu, WRITTEN_OUT_MAX)
    assert not writes_out(gpu, WRITTEN_OUT_MAX + 1)  # large steps: SDPA is as fast or faster there
    assert not writes_out(cpu, 1)  # CPU steps read only their span of the cache through SDPA
