"""The target's verification loop for one session, with a draft at the other end of a link, or alone.

A link (`DraftSource`) is the target's end of one session's proposal stream: the gRPC stream to a draft
service (target_service.draft_link) or `LocalLink`, a DraftSession on a thread of this process.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Protocol, Sequence

from specdec.core.adaptive import KChooser
from specdec.core.compute import INLINE, Compute
from specdec.core.config import FinishReason
from specdec.core.decoder import feedback_of
from specdec.core.drafting import DraftSession, PredraftPolicy, SentProposal, Verdict
from specdec.core.errors import Unavailable
from specdec.core.proposal import Proposal, Proposer
from specdec.core.sequence import TargetSequence
from specdec.core.stats import Cycle


@dataclass
class Picked:
    proposal: Proposal | None
    wait_s: float  # time the target waited for it
    draft_s: float  # the draft's own time for it
    catch_up_s: float  # the draft's catching up before it (included in wait_s, not a cost of drafting)
    ahead: bool  # drafted before the previous verdict (overlap)


NOTHING = Picked(None, 0.0, 0.0, 0.0, False)
_BROKEN = object()  # LocalLink: its drafting thread has failed
log = logging.getLogger("specdec.target_loop")


class DraftSource(Protocol):
    """The target's end of one session's proposal stream."""

    failure: str | None  # why the draft was given up on; None while it serves

    @property
    def failed(self) -> bool: ...

    def wake(self) -> None:
        """Make a waiting `next_proposal` return now (the session was cancelled)."""
        ...

    def next_proposal(self, usable: Callable[[Proposal], int]) -> Picked:
        """The most useful proposal available (waiting for one); `usable(p)`: how many of p's tokens the
        target can verify now, -1 when p is stale."""
        ...

    def send_verdict(self, cycle: Cycle, next_k: int = 0) -> None: ...

    def close(self, cancel: bool = False) -> None: ...


class ProposalPicker:
    """Chooses, among received proposals, the one the target can verify most of; keeps the other usable
    ones for later cycles (a block drafted ahead is for the next cycle) and drops stale ones.

    Shared by the links: `to_proposal` turns a received item (a protobuf proposal, a SentProposal) into a
    core Proposal."""

    def __init__(self, to_proposal: Callable[[object], Proposal]) -> None:
        self.to_proposal = to_proposal
        self.held: list = []  # received, usable, not chosen yet
        self.best: Proposal | None = None
        self.best_item = None
        self._best_n = -1

    def begin(self, usable: Callable[[Proposal], int]) -> None:
        """Start a cycle: reconsider the held proposals first, and the last choice too: verified with a
        smaller K than it holds, its remaining tokens still extend the sequence, and the draft, which
        keeps it pending, drafts nothing new while they do."""
        held = self.held + ([self.best_item] if self.best_item is not None else [])
        self.held = []
        self.best, self.best_item, self._best_n = None, None, -1
        for item in held:
            self.consider(item, usable)

    def consider(self, item, usable: Callable[[Proposal], int]) -> None:
        proposal = self.to_proposal(item)
        n = usable(proposal)
        if n < 0:
            return  # stale: built on a guess the verdicts contradicted
        if n > self._best_n:
            if self.best_item is not None:
                self.held.append(self.best_item)
            self.best, self.best_item, self._best_n = proposal, item, n
        else:
            self.held.append(item)


class TargetLoop:
    """Prefill alone (the draft prefills meanwhile), then verify proposals until done.

    The draft is optional at every step: no link, a failed link, or k == 0 all mean plain decoding
    through the same `TargetSequence.step`, so failing over loses no token and changes no output.
    """

    def __init__(self, sequence: TargetSequence, link: DraftSource | None, chooser: KChooser,
                 cancelled: threading.Event, compute: Compute = INLINE, link_k: int | None = None) -> None:
        """`link_k`: the K the draft at the link was started with (None: the chooser's first choice); the
        first verdict tells the draft the chooser's K when they differ."""
        self.sequence = sequence
        self.compute = compute  # runs the verify step; waiting for the draft stays on the caller's thread
        self.link = link
        self.chooser = chooser
        self.k = chooser.choose(sequence.max_k)
        self.told_k = self.k if link_k is None else link_k  # the K the draft drafts with now
        self.cancelled = cancelled

    @property
    def draft_failed(self) -> bool:
        return self.link is not None and self.link.failed

    def run(self) -> Iterator[Cycle]:
        first = True
        while self.sequence.finish_reason is None:
            if self.cancelled.is_set():
                self.sequence.finish(FinishReason.CANCELLED)
                return
            cycle = self._cycle(use_draft=not first)
            if cycle is None:  # cancelled while waiting for the draft: no further forward
                self.sequence.finish(FinishReason.CANCELLED)
                return
            if not first:  # the draft costs the target what it waited for it: with overlap, only what was not
                #            hidden behind the last verify (not the draft's K+1 tokens or a whole branch pass);
                #            a paused draft's catching up is the price of the pause, not of drafting
                self.chooser.observe(cycle.k, cycle.accepted, cycle.verify_s, max(0.0, cycle.wait_s - cycle.catch_up_s))
            first = False
            self.k = self.chooser.choose(self.sequence.max_k)
            if self.link is not None and not self.link.failed:
                next_k = (self.k or -1) if self.k != self.told_k else 0  # -1 pauses, 0 keeps
                self.told_k = self.k
                self.link.send_verdict(cycle, next_k)
            yield cycle

    def _cycle(self, use_draft: bool) -> Cycle | None:
        picked = NOTHING
        wants_draft = use_draft and self.link is not None and not self.link.failed and self.k > 0
        if wants_draft and self.sequence.max_k > 0:
            def usable(p) -> int:
                found = self.sequence.usable_drafts(p, self.k)
                return -1 if found is None else len(found.token_ids)
            picked = self.link.next_proposal(usable)
            if self.cancelled.is_set():
                return None
        try:
            cycle = self.compute.run(self.sequence.step, picked.proposal, self.k)
        except Unavailable:  # the draft died while we fetched a q row: redo this position alone
            cycle = self.compute.run(self.sequence.step, None)
        return replace(cycle, wait_s=picked.wait_s, draft_s=picked.draft_s, catch_up_s=picked.catch_up_s, ahead=picked.ahead,
                       draft_failed=self.draft_failed)


class LocalLink:
    """An in-process draft at the other end of the link: a DraftSession drafting on its own thread, so it
    drafts ahead while the target verifies (overlap), as a draft service does."""

    def __init__(self, proposer: Proposer, prompt_ids: Sequence[int], k: int, greedy: bool,
                 predraft: PredraftPolicy) -> None:
        self._picker = ProposalPicker(self._to_proposal)
        self.session = DraftSession(proposer, prompt_ids, k, overlap=True, greedy=greedy, predraft=predraft)
        self._inbox: queue.Queue = queue.Queue()
        self._proposals: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True, name="local-draft")
        self._thread.start()

    failure: str | None = None  # set when the drafting thread raised: the target then goes on alone

    @property
    def failed(self) -> bool:
        return self.failure is not None

    def wake(self) -> None:
        """Nothing to do: the local draft answers every verdict, so a wait for it is never long."""

    @staticmethod
    def _to_proposal(sent: SentProposal) -> Proposal:
        return Proposal(sent.start, sent.token_ids, None, sent.source, sent.token_sources(), draft_s=sent.draft_s,
                        catch_up_s=sent.catch_up_s)

    def _run(self) -> None:
        try:
            self.session.start()
            while (verdict := self._inbox.get()) is not None:
                for batch in self.session.on_verdict(verdict):
                    for p in batch:
                        self._proposals.put(p)
        except Exception as e:  # noqa: BLE001 - a failed draft must not take the request with it
            log.exception("in-process draft failed; the target goes on alone")
            self.failure = f"{type(e).__name__}: {e}"
            self._proposals.put(_BROKEN)

    def next_proposal(self, usable: Callable[[Proposal], int]) -> Picked:
        t0 = time.perf_counter()
        self._picker.begin(usable)
        while self._picker.best is None or not self._proposals.empty():  # wait for a usable one, then drain
            item = self._proposals.get()
            if item is _BROKEN:
                return NOTHING
            self._picker.consider(item, usable)
        sent = self._picker.best_item
        return Picked(self._picker.best, time.perf_counter() - t0, sent.draft_s, sent.catch_up_s, sent.ahead)

    def send_verdict(self, cycle: Cycle, next_k: int = 0) -> None:
        self._inbox.put(Verdict(cycle.start, cycle.new_tokens, next_k, feedback_of(cycle)))

    def close(self, cancel: bool = False) -> None:
        self._inbox.put(None)
        self._thread.join()
