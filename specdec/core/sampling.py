"""logits -> processed probabilities (temperature, top-k, top-p) and counter-based random numbers.

Randomness is a pure function of (seed, position, stream) instead of a stateful generator. Why: the
draft may draft ahead, throw work away and redo it (overlap), and the target may verify blocks of any
size; with a counter-based source the same position always sees the same random number, so a seeded
request is reproducible in-process and over gRPC alike, whatever work was discarded on the way.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable, Sequence
from enum import IntEnum

import torch

from specdec.core.config import SamplingParams
from specdec.core.transfer import to_device

FLOAT32_TINY = torch.finfo(torch.float32).tiny  # temperatures below it act as it does: all mass on the argmax
NUCLEUS_CANDIDATES = (1024, 16384)  # top-p looks for its nucleus among this many most likely tokens first


class Stream(IntEnum):
    """Independent random streams per position."""

    DRAFT = 0  # the draft's own sampling of a proposed token
    ACCEPT = 1  # the accept/reject coin of speculative sampling
    RESIDUAL = 2  # sampling the recovered token, the bonus token, or a plain target-only token
    RUNNER_UP = 3  # the replay proposer's runner-up (benchmarks only)


def uniform(seed: int, position: int, stream: Stream) -> float:
    """A uniform number in [0, 1) determined by (seed, position, stream)."""
    digest = hashlib.blake2b(struct.pack("<QQB", seed, position, stream), digest_size=8).digest()
    return (int.from_bytes(digest, "little") >> 11) * (1.0 / (1 << 53))


def fresh_seed() -> int:
    """A random seed for requests that did not ask for one."""
    return int.from_bytes(os.urandom(8), "little") >> 1


def process_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Turn logits [n, V] into the distributions actually sampled from, [n, V] float32.

    Draft and target apply this same function, so p and q in the acceptance test are the processed
    distributions, as speculative sampling requires. Filtered-out tokens get exactly 0. Every accepted
    setting gives a valid distribution: the temperature divides logits minus their maximum (all <= 0, so
    no temperature overflows them; the argmax keeps exp(0) = 1, so they never underflow to all zeros), and
    top-p always keeps the most likely token, so as T or top_p go to 0 the distribution goes to the argmax.
    """
    return _processed(logits, params, nucleus)


def process_first(logits: torch.Tensor, params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor]:
    """`process_logits` with no host read: top-p's nucleus looked for among the first NUCLEUS_CANDIDATES only.
    -> (probs [n, V], found [n] on the device): a row is what process_logits gives it where found (its nucleus ends
    among those candidates, or there is no top-p), and is to be processed again otherwise."""
    found = torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)

    def first(probs: torch.Tensor, top_p: float) -> torch.Tensor:
        nonlocal found
        kept, found = _nucleus_among(probs, top_p, NUCLEUS_CANDIDATES[0])
        return kept

    return _processed(logits, params, first), found


def _processed(logits: torch.Tensor, params: SamplingParams,
               top_p_of: Callable[[torch.Tensor, float], torch.Tensor]) -> torch.Tensor:
    assert logits.dim() == 2, f"expected [n, V] logits, got {tuple(logits.shape)}"
    assert not params.greedy, "greedy decoding uses argmax, not probabilities"
    logits = logits.float()
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    shifted = logits - logits.amax(dim=-1, keepdim=True)  # [n, V], <= 0
    probs = torch.softmax(shifted / max(params.temperature, FLOAT32_TINY), dim=-1)
    if params.top_p < 1.0:
        probs = top_p_of(probs, params.top_p)
    return probs


def _nucleus_among(probs: torch.Tensor, top_p: float, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's nucleus as its m likeliest decide it, with no host read: (probs [n, V] with every token outside it 0
    and the rest divided by their sum, found [n]: the m-th candidate is itself dropped, so every token after it is too
    and the nucleus is the whole answer). m past the vocabulary sorts it all: found everywhere. The kept values are
    summed and divided among the m candidates, not over the whole row: one pass over the vocabulary fewer."""
    if m >= probs.shape[-1]:
        values, order = torch.sort(probs, dim=-1, descending=True)  # [n, V]
    else:
        values, order = torch.topk(probs, m, dim=-1)  # [n, m], descending
    mass_before = torch.cumsum(values, dim=-1) - values
    drop = mass_before >= top_p  # the smallest prefix with mass >= top_p is kept
    drop[:, 0] = False  # a top_p below float32's resolution still keeps the argmax
    found = drop[:, -1] if m < probs.shape[-1] else torch.ones_like(drop[:, 0])
    kept = values.masked_fill(drop, 0.0)  # [n, m]
    return torch.zeros_like(probs).scatter_(-1, order, kept / kept.sum(dim=-1, keepdim=True)), found


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Each row of probs [n, V] restricted to its smallest set of most likely tokens whose mass reaches `top_p` (the
    argmax always kept) and renormalised: [n, V], 0 outside it.

    Sorting a whole vocabulary per position is most of a sampled step's host time on a CPU (docs/benchmarks.md), and
    a nucleus is rarely more than a few hundred tokens: the most likely NUCLEUS_CANDIDATES
    (in the same descending order, with the same running sums) are searched first, and only rows whose nucleus
    reaches past them widen the search. Where the last candidate is already dropped, every token after it is too,
    so the set is the one a full sort gives (tied probabilities aside, which either order may take, and on a GPU a
    last-bit difference in the running sums, whose scan may round a shorter row differently)."""
    n = probs.shape[0]
    out, left = None, torch.arange(n, device=probs.device)  # the rows whose nucleus is not found yet [r]
    for m in (*(c for c in NUCLEUS_CANDIDATES if c < probs.shape[-1]), probs.shape[-1]):
        rows = probs if len(left) == n else probs[left]  # [r, V]
        kept, found = _nucleus_among(rows, top_p, m)
        if m == probs.shape[-1] or bool(found.all()):
            break
        out = torch.empty_like(probs) if out is None else out
        out[left[found]] = kept[found]
        left = left[~found]  # each row decided at its own m, as it would be alone
    if out is None:
        return kept
    out[left] = kept
    return out


def draw(probs: torch.Tensor, u: Sequence[float]) -> list[int]:
    """Inverse-CDF samples, one per row of unnormalised distributions [n, V], row i with the uniform number u[i];
    one read back for all rows. Tokens of probability exactly 0 are never returned."""
    return draw_on_device(probs, u).tolist()


def draw_on_device(probs: torch.Tensor, u: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """`draw`'s tokens [n], left on the device (`u` there already, float64 [n], or numbers on the host)."""
    cdf = torch.cumsum(probs.double(), dim=-1)  # [n, V]
    u = u if isinstance(u, torch.Tensor) else to_device(list(u), probs.device, torch.float64)
    x = cdf[:, -1:] * u[:, None]  # [n, 1]
    return torch.searchsorted(cdf, x, right=True).clamp_(max=probs.shape[-1] - 1)[:, 0]


def process_rows(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Row i of logits [n, V] processed as process_logits(row i, params[i]) processes it, every row at once: the rows
    that sample alike are processed together (each row's arithmetic is its own; a sum over many rows may be split
    across threads otherwise than over one, a last-bit difference, which moves a drawn token only where its uniform
    number falls that close to a boundary). Why: a batched step's sampled rows, processed one by one, cost each row
    a dozen small launches; -> [n, V] float32."""
    return _alike(logits, params, lambda x, p: (process_logits(x, p),))[0]


def process_rows_first(logits: torch.Tensor, params: Sequence[SamplingParams]) -> tuple[torch.Tensor, torch.Tensor]:
    """`process_rows` with no host read (`process_first` per setting): (probs [n, V], found [n] on the device)."""
    return _alike(logits, params, process_first)


def _alike(logits: torch.Tensor, params: Sequence[SamplingParams], fn: Callable) -> tuple[torch.Tensor, ...]:
    """fn(rows, their setting) over each group of rows that sample alike, its outputs ([rows, ...] each) put back in
    row order."""
    alike: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        alike.setdefault((p.temperature, p.top_k, p.top_p), []).append(i)
    if len(alike) == 1:
        return fn(logits, params[0])
    outs = None
    for rows in alike.values():
        index = to_device(rows, logits.device)
        got = fn(logits[index], params[rows[0]])
        outs = outs or [torch.empty((logits.shape[0], *g.shape[1:]), dtype=g.dtype, device=g.device) for g in got]
        for out, g in zip(outs, got):
            out[index] = g
    return tuple(outs)


def sample_from(probs: torch.Tensor, u: float) -> int:
    """Inverse-CDF sample from an unnormalised distribution [V] with the uniform number u (`draw`'s one row).

    Tokens of probability exactly 0 are never returned.
    """
    assert probs.dim() == 1, f"expected [V] probabilities, got {tuple(probs.shape)}"
    return draw(probs[None], [u])[0]
