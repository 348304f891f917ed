"""Which attention form a batched decode or verify step should use: the engine's grouped attention (core.attention:
queries folded per key/value head, a boolean mask [B, 1, groups * n, L]) through SDPA (cuDNN's kernel, or the
memory-efficient one), written out with matmuls, written out as reductions inductor generates, and FlexAttention
(compiled; its decoding kernel splits the keys across the GPU). A step's profile (docs/results) shows cuDNN's
kernel at 38 us per layer for 16 rows of the 0.5B over a 1040-column cache: a grid of rows x key/value heads
blocks, each reading its whole row of the cache alone. Per (model shape, rows, tokens per row): microseconds per
call, timed as a CUDA graph of one call per layer (each layer its own cache, as in a step) replayed.
Usage: python3 scripts/gpu_attention.py [max_len] [context]   (default 1024 and 300 cached tokens per row)
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch

from specdec.core import attention

DEVICE = "cuda:0" if torch.cuda.is_available() else "cpu"  # a CPU run only checks the script
DTYPE = torch.bfloat16 if DEVICE != "cpu" else torch.float32
PAD = 16  # the engine's padding columns past max_len
SHAPES = {"0.5B": (24, 2, 7, 64), "7B": (28, 4, 7, 128)}  # layers, kv heads, query heads per kv head, head dim
STEPS = ((1, 1), (16, 1), (16, 3), (64, 1), (64, 5))  # rows x tokens per row


def sdpa(q, k, v, mask):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def efficient(q, k, v, mask):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def written_out(q, k, v, mask):
    scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5  # [B, H, gn, L]
    return (scores.masked_fill(~mask, float("-inf")).softmax(-1).to(v.dtype)) @ v


def reduced(q, k, v, mask):
    """The written-out arithmetic as elementwise products and sums: inductor generates the reductions."""
    scores = (q[:, :, :, None, :].float() * k[:, :, None, :, :].float()).sum(-1)  # [B, H, gn, L]
    scores = scores.to(q.dtype).float() * q.shape[-1] ** -0.5
    p = scores.masked_fill(~mask, float("-inf")).softmax(-1).to(v.dtype)  # [B, H, gn, L]
    return (p[..., None].float() * v[:, :, None, :, :].float()).sum(-2).to(v.dtype)  # [B, H, gn, D]


def flex(q, k, v, mask):
    from torch.nn.attention.flex_attention import flex_attention
    keep = mask[:, 0]  # [B, gn, L]

    def score_mod(score, b, h, q_idx, kv_idx):
        return torch.where(keep[b, q_idx, kv_idx], score, -float("inf"))
    return flex_attention(q, k, v, score_mod=score_mod)


def engine(q, k, v, mask):
    """core.attention's grouped attention written out, on inputs laid out as HF's Qwen2 attention hands them over:
    the query [B, H, n, D] a transpose of the projection's [B, n, H, D], the mask [B, 1, n, L]."""
    b, kv, gn, dim = q.shape
    groups = GROUPS[dim]
    n = gn // groups
    query = q.reshape(b, kv * groups, n, dim).transpose(1, 2).contiguous().transpose(1, 2)  # strides as HF's
    module = torch.nn.Module()
    module.num_key_value_groups = groups
    out = attention.grouped_attention(module, query, k, v, mask[:, :, :n])[0]  # [B, n, H, D]
    return out.transpose(1, 2).reshape(b, kv, gn, dim)  # as the other forms' (query head kv * groups + g: rows g * n..)


attention.WRITTEN_OUT_MAX = 1 << 20  # the engine forms attend written out at every step here
GROUPS = {dim: groups for _, _, groups, dim in SHAPES.values()}  # head dim -> query heads per key/value head
torch._dynamo.config.recompile_limit = 256  # one compile per (form, shape, rows, tokens)
FORMS = {"sdpa": sdpa, "efficient": efficient, "written out": torch.compile(written_out, dynamic=False),
         "reduced": torch.compile(reduced, dynamic=False), "flex": torch.compile(flex, dynamic=False),
         "written out dynamic": torch.compile(written_out, dynamic=True),
         "engine dynamic": torch.compile(engine, dynamic=True), "engine static": torch.compile(engine, dynamic=False)}
if os.environ.get("FORMS"):
    FORMS = {name: FORMS[name] for name in os.environ["FORMS"].split(",")}
if os.environ.get("STEPS"):
    STEPS = tuple(tuple(int(x) for x in step.split("x")) for step in os.environ["STEPS"].split(","))


def per_call_us(fn, args_per_layer) -> float:
    """One call per layer, as one CUDA graph (eager on a CPU), replayed: median µs per call."""
    layers = len(args_per_layer)
    for _ in range(3):
        fn(*args_per_layer[0])
    if DEVICE == "cpu":
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            for args in args_per_layer:
                fn(*args)
            times.append(time.perf_counter() - t0)
        return 1e6 * statistics.median(times) / layers
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn(*args_per_layer[0])
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for args in args_per_layer:
            fn(*args)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(20):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return 1e3 * statistics.median(times[3:]) / layers


def main() -> None:
    max_len = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    context = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    full = max_len + PAD
    print(f"{DEVICE}, {DTYPE}, cache {full} columns, rows at {context} cached tokens; µs per call "
          f"({', '.join(FORMS)}); and each form's largest difference from SDPA's output", flush=True)
    for name, (layers, kv, groups, dim) in SHAPES.items():
        for rows, n in STEPS if DEVICE != "cpu" else ((1, 1), (2, 3)):
            positions = torch.arange(context, context + n, device=DEVICE).repeat(groups)  # [groups * n]
            mask = (torch.arange(full, device=DEVICE)[None, :] <= positions[:, None])[None, None]  # [1, 1, gn, L]
            mask = mask.expand(rows, 1, -1, -1)
            per_layer = [(torch.randn(rows, kv, groups * n, dim, dtype=DTYPE, device=DEVICE),
                          torch.randn(rows, kv, full, dim, dtype=DTYPE, device=DEVICE),
                          torch.randn(rows, kv, full, dim, dtype=DTYPE, device=DEVICE), mask)
                         for _ in range(layers if DEVICE != "cpu" else 2)]
            want = sdpa(*per_layer[0]).float()
            cells = []
            for form, fn in FORMS.items():
                try:
                    diff = (fn(*per_layer[0]).float() - want).abs().max().item()
                    cells.append(f"{form} {per_call_us(fn, per_layer):.1f} (diff {diff:.3f})")
                except Exception as e:  # noqa: BLE001 - a form that does not run here is reported, not fatal
                    cells.append(f"{form} failed: {type(e).__name__}: {str(e)[:80]}")
            print(f"{name} {rows:2d}x{n}: " + "; ".join(cells), flush=True)


if __name__ == "__main__":
    main()
