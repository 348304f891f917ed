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
from enum import IntEnum

import torch

from specdec.core.config import SamplingParams

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
    assert logits.dim() == 2, f"expected [n, V] logits, got {tuple(logits.shape)}"
    assert not params.greedy, "greedy decoding uses argmax, not probabilities"
    logits = logits.float()
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    shifted = logits - logits.amax(dim=-1, keepdim=True)  # [n, V], <= 0
    probs = torch.softmax(shifted / max(params.temperature, FLOAT32_TINY), dim=-1)
    if params.top_p < 1.0:
        probs = probs.masked_fill(outside_nucleus(probs, params.top_p), 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def outside_nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """The tokens [n, V] (True: dropped) outside each row's smallest set of most likely tokens whose mass reaches
    `top_p`; the argmax is always kept.

    Sorting a whole vocabulary per position is most of a sampled step's host time on a CPU (a 150k vocabulary:
    ~9 ms a position), and a nucleus is rarely more than a few hundred tokens: the most likely NUCLEUS_CANDIDATES
    (in the same descending order, with the same running sums) are searched first, and only rows whose nucleus
    reaches past them widen the search. Where the last candidate is already dropped, every token after it is too,
    so the set is the one a full sort gives (tied probabilities aside, which either order may take, and on a GPU a
    last-bit difference in the running sums, whose scan may round a shorter row differently)."""
    def dropped(values: torch.Tensor) -> torch.Tensor:  # values [n, m] in descending order -> [n, m]
        mass_before = torch.cumsum(values, dim=-1) - values
        drop = mass_before >= top_p  # the smallest prefix with mass >= top_p is kept
        drop[:, 0] = False  # a top_p below float32's resolution still keeps the argmax
        return drop

    for m in (c for c in NUCLEUS_CANDIDATES if c < probs.shape[-1]):
        values, order = torch.topk(probs, m, dim=-1)  # [n, m], descending
        drop = dropped(values)
        if bool(drop[:, -1].all()):
            return torch.ones_like(probs, dtype=torch.bool).scatter(-1, order, drop)
    values, order = torch.sort(probs, dim=-1, descending=True)  # [n, V]
    return torch.ones_like(probs, dtype=torch.bool).scatter(-1, order, dropped(values))


def sample_from(probs: torch.Tensor, u: float) -> int:
    """Inverse-CDF sample from an unnormalised distribution [V] with the uniform number u.

    Tokens of probability exactly 0 are never returned.
    """
    assert probs.dim() == 1, f"expected [V] probabilities, got {tuple(probs.shape)}"
    cdf = torch.cumsum(probs.double(), dim=0)
    x = cdf[-1:] * u
    index = int(torch.searchsorted(cdf, x, right=True).item())
    return min(index, probs.shape[0] - 1)
