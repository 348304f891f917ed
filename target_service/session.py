"""The target's verification loop for one session, with a draft link or alone."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterator

from specdec.compute import INLINE, Compute
from specdec.decoder import CycleResult, FinishReason, KChooser, TargetSequence
from specdec.errors import Unavailable
from target_service.draft_link import DraftLink, Picked


@dataclass
class CycleReport:
    cycle: CycleResult
    wait_s: float  # time spent waiting for the proposal
    draft_s: float  # the draft's own time for it
    overlap_hit: bool
    draft_failed: bool


class TargetSession:
    """Prefill alone (the draft prefills meanwhile), then verify proposals until done.

    The draft is optional at every step: no link, a failed link, or k == 0 all mean plain decoding
    through the same `TargetSequence.step`, so failing over loses no token and changes no output.
    """

    def __init__(self, sequence: TargetSequence, link: DraftLink | None, chooser: KChooser,
                 cancelled: threading.Event, compute: Compute = INLINE) -> None:
        self.sequence = sequence
        self.compute = compute  # runs the verify step; waiting for the draft stays on the caller's thread
        self.link = link
        self.chooser = chooser
        self.k = chooser.choose(sequence.max_k)
        self.cancelled = cancelled

    @property
    def draft_failed(self) -> bool:
        return self.link is not None and self.link.failed

    def run(self) -> Iterator[CycleReport]:
        first = True
        while self.sequence.finish_reason is None:
            if self.cancelled.is_set():
                self.sequence.finish(FinishReason.CANCELLED)
                return
            report = self._cycle(use_draft=not first)
            if report is None:  # cancelled while waiting for the draft: no further forward
                self.sequence.finish(FinishReason.CANCELLED)
                return
            if not first:  # the draft costs the target what it waited for it: with overlap, only what was not
                #            hidden behind the last verify (not the draft's K+1 tokens or a whole branch pass)
                self.chooser.observe(report.cycle.k, report.cycle.accepted, report.cycle.verify_s, report.wait_s)
            first = False
            previous, self.k = self.k, self.chooser.choose(self.sequence.max_k)
            if self.link is not None and not self.link.failed:
                next_k = (self.k or -1) if self.k != previous else 0
                self.link.send_verdict(report.cycle, next_k)
            yield report

    def _cycle(self, use_draft: bool) -> CycleReport | None:
        picked = Picked(None, 0.0, 0.0, False)
        wants_draft = use_draft and self.link is not None and not self.link.failed and self.k > 0
        if wants_draft and self.sequence.max_k > 0:
            def usable(p) -> int:
                found = self.sequence.usable_drafts(p, self.k)
                return -1 if found is None else len(found[0])
            picked = self.link.next_proposal(usable)
            if self.cancelled.is_set():
                return None
        try:
            cycle = self.compute.run(self.sequence.step, picked.proposal, self.k)
        except Unavailable:  # the draft died while we fetched a q row: redo this position alone
            cycle = self.compute.run(self.sequence.step, None)
        return CycleReport(cycle=cycle, wait_s=picked.wait_s, draft_s=picked.draft_s,
                           overlap_hit=picked.ahead and cycle.k > 0, draft_failed=self.draft_failed)
