"""Fused projections (core.fused): the same model, fewer matmuls per layer."""

from __future__ import annotations

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from specdec.core.batching import BatchedRunner
from specdec.core.fused import fuse_projections
from specdec.core.models import load_model
from tests.conftest import PROMPTS
from tests.unit.core.test_batching import concurrently, decode


def small_qwen2() -> Qwen2ForCausalLM:
    """Qwen2's layers (biased q/k/v projections, grouped key/value heads) at a CPU test's size."""
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_()  # HF initialises biases to 0: a fused bias in the wrong place would go unseen
    return model


def test_fused_projections_compute_what_the_separate_ones_did_with_and_without_a_cache():
    for make in (small_qwen2, lambda: load_model("tiny", "target", dtype="float32").model):
        separate, fused = make(), make()
        assert fuse_projections(fused) == 2 * fused.config.num_hidden_layers
        assert fuse_projections(fused) == 2 * fused.config.num_hidden_layers  # once: again changes nothing
        names = {n.rsplit(".", 1)[0].rsplit(".", 1)[-1] for n, _ in fused.named_parameters()}
        assert {"qkv_proj", "gate_up_proj"} <= names and not names & {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"}
        assert sum(p.numel() for p in fused.parameters()) == sum(p.numel() for p in separate.parameters())
        ids = torch.randint(0, fused.config.vocab_size, (2, 9))
        with torch.no_grad():
            assert torch.allclose(fused(ids).logits, separate(ids).logits, atol=1e-5)
            want = separate.generate(ids[:1, :4], max_new_tokens=12, do_sample=False)  # through the model's cache
            got = fused.generate(ids[:1, :4], max_new_tokens=12, do_sample=False)
        assert torch.equal(got, want)


def test_a_batched_engine_over_a_fused_model_decodes_what_the_separate_one_does(tiny_pair_fp32):
    """The engine's own cache (rows at their own positions, verify steps of several tokens) through the fused
    forward: every request's greedy output, target-only and K = 3, equals the unfused target decoding alone."""
    pair = tiny_pair_fp32
    fused = load_model("tiny", "target", dtype="float32", fuse=True)
    runner = BatchedRunner(fused.model, max_len=256, max_sessions=4, gather_s=0.005)
    try:
        cases = [(pair.encode(p), 10 + 3 * i, 3 * (i % 2)) for i, p in enumerate(PROMPTS[:4])]
        want = [decode(pair, pair.target_runner, ids, n) for ids, n, _ in cases]
        assert concurrently([lambda c=c: decode(pair, runner, *c) for c in cases]) == want
    finally:
        runner.stop()
