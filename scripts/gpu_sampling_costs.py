"""What a sampled cycle's own device work costs at real shapes (Qwen's 151936-token vocabulary), apart from the
forwards: on an H100 (call u1) a 64-row K = 4 sampled cycle measured 53.6 ms in the engine against 21.5 for a greedy
one, and a 16-row one 24.4 against 14.3. Per rows x positions, each timed alone with CUDA events (median of REPS
after a warm-up): the processing with no host read (`process_rows_first`: temperature, the nucleus among the first
candidates), its parts (top-k of the candidates, a full sort), the draw (`draw_on_device`), a draft step's
processing and draw (`sampled_on_device`), the device outcome of a verify (`outcomes_on_device`), and the host verify
(`verify_sampling_rows` on processed rows, with its two reads), next to a greedy step's argmax. Two kinds of
distributions: peaked (a planted random model's: one token holds nearly all the mass) and wide (logits N(0, 4): a
nucleus of hundreds of tokens). Usage: python3 scripts/gpu_sampling_costs.py [rows ...] (default 16 64; K = 4)
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from specdec.core.config import SamplingParams
from specdec.core.runner import Sampled, draft_uniforms, sampled_on_device
from specdec.core.sampling import draw_on_device, process_rows, process_rows_first
from specdec.core.verify import DenseDraftProbs, SampledVerify, outcomes_on_device, verify_sampling_rows

DEVICE = "cuda:0" if torch.cuda.is_available() else "cpu"  # a CPU run only checks the script
VOCAB = 151936 if DEVICE != "cpu" else 4096
K = 4
REPS = 20 if DEVICE != "cpu" else 2
SAMPLING = SamplingParams(temperature=0.7, top_p=0.95)


def timed_ms(fn) -> float:
    """Median milliseconds of fn() over REPS calls after one warm-up: device time between two events on a GPU (the
    host's own waits, such as a read back, included), wall time on a CPU."""
    fn()
    times = []
    for _ in range(REPS):
        if DEVICE == "cpu":
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def logits_of(kind: str, n: int, g: torch.Generator) -> torch.Tensor:
    """[n, VOCAB] bf16 logits (float32 on a CPU): peaked, one token 60 above noise of scale 4; or the noise alone."""
    dtype = torch.bfloat16 if DEVICE != "cpu" else torch.float32
    x = 4.0 * torch.randn(n, VOCAB, device=DEVICE, generator=g)
    if kind == "peaked":
        x[torch.arange(n, device=DEVICE), torch.randint(0, VOCAB, (n,), device=DEVICE, generator=g)] += 60.0
    return x.to(dtype)


def report(kind: str, rows: int, g: torch.Generator) -> None:
    """One kind of distribution at `rows` rows: each cost, timed alone."""
    n = rows * (K + 1)
    draft_logits, verify_logits = logits_of(kind, rows, g), logits_of(kind, n, g)
    settings = [SAMPLING] * n
    chains = [Sampled(SAMPLING, 7 + b, 0, lambda token, q: token) for b in range(rows)]
    u = draft_uniforms(chains, range(100, 100 + rows))
    probs, found = process_rows_first(verify_logits, settings)
    half = torch.full((n,), 0.5, dtype=torch.float64, device=DEVICE)
    q = process_rows(logits_of(kind, rows * K, g), [SAMPLING] * (rows * K))
    drafts = [draw_on_device(q[b * K:(b + 1) * K], [0.5] * K).tolist() for b in range(rows)]
    planned = [SampledVerify(d, DenseDraftProbs(q[b * K:(b + 1) * K], d), 40 + b, 100) for b, d in enumerate(drafts)]
    costs = {
        "argmax (greedy)": lambda: verify_logits.argmax(-1),
        "top-1024 of the verify's": lambda: torch.topk(verify_logits.float(), 1024, dim=-1),
        "full sort of the verify's": lambda: torch.sort(verify_logits.float(), dim=-1, descending=True),
        "process_rows_first, verify": lambda: process_rows_first(verify_logits, settings),
        "draw_on_device, verify": lambda: draw_on_device(probs, half),
        "sampled_on_device, a draft step": lambda: sampled_on_device(draft_logits, chains, u, first=True),
        "outcomes_on_device": lambda: outcomes_on_device(planned, probs),
        "verify_sampling_rows (host reads)": lambda: verify_sampling_rows(planned, probs),
        "process_rows (host nucleus), verify": lambda: process_rows(verify_logits, settings),
    }
    print(f"== {kind}, {rows} rows ({n} verify positions; nucleus found among the first candidates in "
          f"{100 * float(found.float().mean()):.0f}% of them)", flush=True)
    for name, fn in costs.items():
        print(f"  {name:38s} {timed_ms(fn):8.3f}", flush=True)


def main() -> None:
    rows_list = [int(a) for a in sys.argv[1:]] or [16, 64]
    g = torch.Generator(device=DEVICE).manual_seed(0)
    print(f"{DEVICE}, vocabulary {VOCAB}, K = {K}, {SAMPLING}; ms, median of {REPS}", flush=True)
    for kind in ("peaked", "wide"):
        for rows in rows_list:
            report(kind, rows, g)


if __name__ == "__main__":
    main()
