"""Greedy exactness across a benchmark's modes: every output against its prompt's reference decoding, and
where one differs, how near a tie the target's choice was there.

Lossless decoding gives every mode and every batch the same greedy tokens. Batched kernels round differently
from one-row ones, and on real weights in bf16 that can flip a near-tie: a benchmark reports each such
difference with the target's top-2 logit gap at that position (a gap of a rounding error says "near-tie"; a
large one says "bug"), and never hides it.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch

REFERENCE_MODES = ("target-only", "engine-target-only")  # plain decoding, preferred in this order


def first_difference(a: Sequence[int], b: Sequence[int]) -> int:
    """The first index where a and b differ (the shorter length when one is a prefix of the other)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@dataclass
class Mismatch:
    """Where one output first differs from its prompt's reference."""

    mode: str
    concurrency: int
    prompt: int  # index into the prompts
    position: int  # the first generated token that differs
    expected: int  # the reference's token there (-1: past its end)
    got: int  # (-1: past the output's end)
    gap: float | None = None  # the target's top-1 minus top-2 logit there (an eager forward); None: not computed
    warm_up: bool = False  # in the level's unmeasured warm-up round (compared as far as both outputs go)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        gap = "?" if self.gap is None else f"{self.gap:.4f}"
        clients = f"{self.concurrency} client{'s' if self.concurrency != 1 else ''}"
        round_ = " (its warm-up round)" if self.warm_up else ""
        return (f"{self.mode} at {clients}{round_}, prompt {self.prompt}: token {self.position} is {self.got}, "
                f"the reference has {self.expected} (the target's top-2 logit gap there: {gap})")


def references(points: list[dict]) -> dict[int, list[int]]:
    """Each prompt's reference output: its first output in plain decoding (REFERENCE_MODES in order, the lowest
    concurrency first), else in any mode. `points`: sweep points with `outputs` ([prompt index, *ids])."""
    def rank(p: dict) -> tuple[int, int]:
        mode = REFERENCE_MODES.index(p["mode"]) if p["mode"] in REFERENCE_MODES else len(REFERENCE_MODES)
        return mode, p["concurrency"]

    found: dict[int, list[int]] = {}
    for p in sorted((p for p in points if p.get("outputs")), key=rank):
        for index, *ids in p["outputs"]:
            found.setdefault(index, ids)
    return found


def mismatches(points: list[dict], reference: dict[int, list[int]]) -> list[Mismatch]:
    """Every point's outputs that differ from their prompt's reference, once per (point, prompt, position, token);
    its warm-up round's (`warm_up_outputs`, of another length) as far as both go."""
    found: dict[tuple, Mismatch] = {}
    for p in points:
        for warm_up, outputs in ((False, p.get("outputs")), (True, p.get("warm_up_outputs"))):
            for index, *ids in outputs or []:
                want = reference.get(index)
                if warm_up and want is not None:  # as far as both go: a warm-up may be longer than a short sweep's
                    ids, want = ids[:len(want)], want[:len(ids)]
                if want is None or ids == want:
                    continue
                at = first_difference(ids, want)
                got, expected = (ids[at] if at < len(ids) else -1), (want[at] if at < len(want) else -1)
                found.setdefault((p["mode"], p["concurrency"], warm_up, index, at, got),
                                 Mismatch(p["mode"], p["concurrency"], index, at, expected, got, warm_up=warm_up))
    return list(found.values())


def top2_gap(model: torch.nn.Module, ids: Sequence[int]) -> float:
    """The target's top-1 minus top-2 logit for the token after `ids`, from one eager forward."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(torch.tensor([list(ids)], device=device)).logits[0, -1].float()  # [V]
    top = logits.topk(2).values
    return float(top[0] - top[1])


def measure_gaps(found: list[Mismatch], reference: dict[int, list[int]], prompt_ids: Sequence[Sequence[int]],
                 model: torch.nn.Module, run: Callable = lambda fn, *args: fn(*args)) -> None:
    """Fill each mismatch's gap: the target's margin for the reference's token there. `run(fn, *args)`: where the
    model computes (a CPU model's compute thread)."""
    for m in found:
        m.gap = run(top2_gap, model, list(prompt_ids[m.prompt]) + reference[m.prompt][:m.position])


def report(found: list[Mismatch], tool: str, headline: str, report_only: bool) -> bool:
    """Print each difference on stderr; True when the run must fail (differences, and not `report_only`)."""
    if not found:
        return False
    print(f"{tool}: {headline}:", file=sys.stderr)
    for m in found:
        print(f"  {m}", file=sys.stderr)
    if not report_only:
        print(f"{tool}: FAILED (lossless decoding must give identical greedy outputs)", file=sys.stderr)
        return True
    print(f"{tool}: WARNING: reported, not failed (--report-greedy-mismatch: random-weight bf16 numerics)",
          file=sys.stderr)
    return False
