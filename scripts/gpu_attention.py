"""Whether a decode step's attention should read less of the cache: the engine's grouped attention
(core.attention: queries folded per key/value head, a boolean mask [B, 1, groups * n, L]) over the whole
cache (L = max_len + pad) against the same call over a shorter span of it (what a step whose rows are all
shorter than the span needs), and against the same arithmetic written out (matmul, masked softmax, matmul),
eager and compiled. Per (model shape, rows, tokens per row): microseconds per call, timed as a CUDA graph of
one call per layer replayed (no launch overhead, as in the engine's steps).
Usage: python3 scripts/gpu_attention.py [max_len] [context]   (default 1024 and 300 cached tokens per row)
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

DEVICE = "cuda:0" if torch.cuda.is_available() else "cpu"  # a CPU run only checks the script
DTYPE = torch.bfloat16 if DEVICE != "cpu" else torch.float32
PAD = 16  # the engine's padding columns past max_len
SHAPES = {"0.5B": (24, 2, 7, 64), "7B": (28, 4, 7, 128)}  # layers, kv heads, query heads per kv head, head dim
SPANS = (256, 512)  # spans below max_len + PAD to compare (a multiple of 256: few graph shapes)


def sdpa(q, k, v, mask):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def written_out(q, k, v, mask):
    scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5  # [B, H, gn, L]
    return (scores.masked_fill(~mask, float("-inf")).softmax(-1).to(v.dtype)) @ v


torch._dynamo.config.recompile_limit = 64  # one compile per (shape, rows, tokens, span): more than the default 8
COMPILED = torch.compile(written_out, dynamic=False)


def per_call_us(fn, layers: int, args) -> float:
    """One call per layer, as one CUDA graph (eager on a CPU), replayed: median µs per call."""
    for _ in range(3):
        fn(*args)
    if DEVICE == "cpu":
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(layers):
                fn(*args)
            times.append(time.perf_counter() - t0)
        return 1e6 * statistics.median(times) / layers
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn(*args)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(layers):
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
    spans = [s for s in SPANS if context + 17 <= s < full] + [full]
    print(f"{DEVICE}, {DTYPE}, cache {full} columns, rows at {context} cached tokens; µs per call "
          f"(grouped SDPA over a span of the cache; written out over the whole cache, eager / compiled)", flush=True)
    for name, (layers, kv, groups, dim) in SHAPES.items():
        for rows in (1, 16, 64) if DEVICE != "cpu" else (1, 2):
            for n in (1, 5):
                q = torch.randn(rows, kv, groups * n, dim, dtype=DTYPE, device=DEVICE)
                k = torch.randn(rows, kv, full, dim, dtype=DTYPE, device=DEVICE)
                v = torch.randn(rows, kv, full, dim, dtype=DTYPE, device=DEVICE)
                positions = torch.arange(context, context + n, device=DEVICE).repeat(groups)  # [groups * n]
                mask = (torch.arange(full, device=DEVICE)[None, :] <= positions[:, None])[None, None]  # [1, 1, gn, L]
                mask = mask.expand(rows, 1, -1, -1)
                cells = [f"{s}: {per_call_us(sdpa, layers, (q, k[:, :, :s], v[:, :, :s], mask[..., :s])):.1f}"
                         for s in spans]
                eager = per_call_us(written_out, layers, (q, k, v, mask))
                compiled = per_call_us(COMPILED, layers, (q, k, v, mask))
                print(f"{name} rows {rows:2d} x {n}: sdpa {', '.join(cells)}; written out {eager:.1f} / {compiled:.1f}",
                      flush=True)


if __name__ == "__main__":
    main()
