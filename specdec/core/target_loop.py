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

import torch

from specdec.core.adaptive import KChooser
from specdec.core.compute import INLINE, Compute
from specdec.core.config import FinishReason, SamplingParams
from specdec.core.drafting import DraftSession, PredraftPolicy, SentProposal, Verdict
from specdec.core.proposal import Feedback, Proposal, Proposer
from specdec.core.runner import WAITING, DraftJoin, EarlyVerify, Forward, KVSlot
from specdec.core.sequence import Prepared, TargetSequence, UsableDrafts
from specdec.core.stats import Cycle
from specdec.core.verify import SampledVerify, VerifyResult


@dataclass
class Picked:
    proposal: Proposal | None
    wait_s: float  # time the target waited for it
    draft_s: float  # the draft's own time for it
    catch_up_s: float  # the draft's catching up before it (included in wait_s, not a cost of drafting)
    ahead: bool  # drafted before the previous verdict (overlap)


NOTHING = Picked(None, 0.0, 0.0, 0.0, False)
HOLD_VERDICTS_S = 5.0  # a paused draft hears of the committed tokens at least this often (its idle timeout is longer)
BROKEN = object()  # put in a link's inbox: nothing more will come (it failed, or the session was cancelled)
log = logging.getLogger("specdec.target_loop")


def feedback_of(cycle: Cycle) -> Feedback:
    """What the proposer learns from a cycle (one block comes from one proposer)."""
    source = cycle.draft_sources[0] if cycle.k and cycle.draft_sources else None
    return Feedback(source=source, k=cycle.k, accepted=cycle.accepted, verify_s=cycle.verify_s)


class DraftSource(Protocol):
    """The target's end of one session's proposal stream."""

    failure: str | None  # why the draft was given up on; None while it serves
    timeout_s: float | None  # the longest the target waits for a usable proposal (None: no limit)
    on_arrival: Callable[[], None]  # called on the link's thread whenever something arrives (wakes an engine)

    @property
    def failed(self) -> bool: ...

    def fail(self, reason: str) -> None: ...

    def wake(self) -> None:
        """Make a waiting `next_proposal` return now (the session was cancelled)."""
        ...

    def next_proposal(self, usable: Callable[[Proposal], int]) -> Picked:
        """The most useful proposal available (waiting for one); `usable(p)`: how many of p's tokens the
        target can verify now, -1 when p is stale."""
        ...

    def poll(self, usable: Callable[[Proposal], int], waited_s: float) -> Picked | None:
        """The most useful proposal already received, without waiting (None: none yet; NOTHING: the link
        broke); `waited_s`: how long the caller has been waiting for it."""
        ...

    def send_verdict(self, cycle: Cycle, next_k: int = 0) -> None: ...

    def close(self, cancel: bool = False) -> None: ...

    def join_ahead(self) -> DraftJoin | None:
        """Where the draft is a batched runner beside the target's engine that has not caught up on the prompt yet:
        that catch-up, for the engine to launch with its other sessions' draft steps (None: the draft catches up
        itself, as every draft across a link does)."""
        ...

    def behind(self, committed: Sequence[int]) -> int:
        """Where the draft is a batched runner beside the target's engine: the tokens of `committed` it would forward
        to catch up before drafting again (0: none, or a draft across a link, whose catch-ups are its own)."""
        ...


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


class ProposalInbox:
    """The received half of a link, shared by its kinds: proposals arrive on the link's own thread (`put`)
    and the target takes the most useful one when it wants one, waiting for it (`next_proposal`, on a
    session's thread) or not (`poll`, the batched engine, which never waits for one session's draft)."""

    failure: str | None = None

    def __init__(self, to_proposal: Callable[[object], Proposal], timeout_s: float | None) -> None:
        self.timeout_s = timeout_s
        self.on_arrival: Callable[[], None] = lambda: None
        self._picker = ProposalPicker(to_proposal)
        self._items: queue.SimpleQueue = queue.SimpleQueue()

    @property
    def failed(self) -> bool:
        return self.failure is not None

    def fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason

    def put(self, item) -> None:
        """A received proposal, or BROKEN: the link will bring nothing more."""
        self._items.put(item)
        self.on_arrival()

    def wake(self) -> None:
        self.put(BROKEN)

    def join_ahead(self) -> DraftJoin | None:
        return None  # a draft across a link catches up on its own (the target's own draft: OwnDraftLink)

    def behind(self, committed: Sequence[int]) -> int:
        return 0  # as join_ahead

    def next_proposal(self, usable: Callable[[Proposal], int]) -> Picked:
        t0 = time.perf_counter()
        picker = self._picker
        picker.begin(usable)
        while not self.failed:
            try:  # once something usable is in hand, take only what has already arrived
                item = (self._items.get_nowait() if picker.best is not None else
                        self._items.get(timeout=None if self.timeout_s is None
                                        else max(0.0, t0 + self.timeout_s - time.perf_counter())))
            except queue.Empty:
                if picker.best is None:
                    self.fail(f"no usable proposal within {self.timeout_s:.2f}s")
                break
            if item is BROKEN:
                break
            picker.consider(item, usable)
        return self._picked(time.perf_counter() - t0)

    def poll(self, usable: Callable[[Proposal], int], waited_s: float) -> Picked | None:
        picker = self._picker
        picker.begin(usable)
        broken = self.failed
        while not broken:
            try:
                item = self._items.get_nowait()
            except queue.Empty:
                break
            broken = item is BROKEN
            if not broken:
                picker.consider(item, usable)
        if picker.best is None and not broken:
            return None
        return self._picked(waited_s)

    def _picked(self, wait_s: float) -> Picked:
        p = self._picker.best
        return NOTHING if p is None else Picked(p, wait_s, p.draft_s, p.catch_up_s, p.ahead)


class TargetLoop:
    """Prefill alone (the draft prefills meanwhile), then verify proposals until done.

    A cycle has two halves around its forward: `plan` (pick the proposal, say what to forward) and
    `complete` (verify, commit, tell the draft). A batched runner's engine calls them for all its sessions
    from its own thread (`drive`); with a single-sequence runner, `run` calls them on the caller's thread.

    The draft is optional at every step: no link, a failed link, or k == 0 all mean plain decoding
    through the same `TargetSequence` cycle, so failing over loses no token and changes no output.
    """

    def __init__(self, sequence: TargetSequence, link: DraftSource | None, chooser: KChooser,
                 cancelled: threading.Event, compute: Compute = INLINE, link_k: int | None = None) -> None:
        """`link_k`: the K the draft at the link was started with (None: the chooser's first choice); the
        first verdict tells the draft the chooser's K when they differ."""
        self.sequence = sequence
        self.compute = compute  # runs the forward and verification; waiting for the draft stays on the caller's thread
        self.link = link
        self.chooser = chooser
        self.k = chooser.choose(sequence.max_k)
        self.told_k = self.k if link_k is None else link_k  # the K the draft drafts with now
        self.cancelled = cancelled
        self._first = True  # the prefill cycle: the draft prefills meanwhile
        self._picked = NOTHING
        self._prepared: Prepared | None = None
        self._ready_at = time.perf_counter()  # when the last cycle ended: waiting for the draft since
        self._held: tuple[int, list[int]] | None = None  # (start, tokens) committed while the draft is paused, not told yet
        self._held_since = 0.0

    @property
    def slot(self) -> KVSlot:
        return self.sequence.slot

    @property
    def done(self) -> bool:
        return self.sequence.finish_reason is not None

    @property
    def tokens_left(self) -> int:
        return self.sequence.remaining

    def draft_behind(self) -> int:
        """The committed tokens its draft lacks, where the draft runs beside the target's engine (else 0)."""
        return self.link.behind(self.sequence.committed) if self.link is not None and not self.link.failed else 0

    @property
    def drafting(self) -> bool:
        """Its cycles verify drafts now (past the prefill, a K > 0 and a draft to ask): its next forward is not a
        plain decode."""
        return not self._first and self._will_draft

    @property
    def _will_draft(self) -> bool:
        """Its cycles after the prefill verify drafts: a draft to ask, a K > 0 and room for a draft token."""
        return self.link is not None and not self.link.failed and self.k > 0 and self.sequence.max_k > 0

    def early_verify(self, drafted: int) -> EarlyVerify | None:
        """What `plan` forwards if its draft's fresh block of `drafted` tokens (drafted from the end of the committed
        sequence) is the proposal it verifies next. A batched engine launches that forward from the drafted tokens on
        the device before the host reads them, and keeps it where the plan asks for exactly it (a sampled verify's
        coins and draws need the draft's q only once the step is read). None where the next cycle verifies no such
        block (the prefill, a finished or cancelled sequence, no draft, k = 0)."""
        if self.done or self.cancelled.is_set() or not self.drafting:
            return None
        drafts = min(drafted, self.k, self.sequence.max_k)
        return EarlyVerify(self.sequence.committed, drafts, self.sequence.sampling.greedy) if drafts > 0 else None

    def draft_join(self) -> DraftJoin | None:
        """While its prompt step is in flight: its draft's catch-up on the prompt (`DraftSource.join_ahead`), where its
        next cycles verify drafts on the argmax alone (as `early_verify`: greedy, a K > 0, a draft)."""
        if not self._first or not self._will_draft or not self.sequence.sampling.greedy:
            return None
        return self.link.join_ahead()

    @property
    def draft_failed(self) -> bool:
        return self.link is not None and self.link.failed

    def attach(self, wake: Callable[[], None]) -> None:
        """An engine drives this loop: `wake` tells it the draft sent something (or the session ended)."""
        if self.link is not None:
            self.link.on_arrival = wake

    def run(self) -> Iterator[Cycle]:
        """The session's cycles, as soon as each is committed."""
        batches = self.run_batches()
        try:
            for cycles in batches:
                yield from cycles
        finally:
            batches.close()

    def run_batches(self) -> Iterator[list[Cycle]]:
        """The session's cycles committed since the caller last asked, at least one: a batched engine hands a
        caller that fell behind it everything at once (a stream sends them as one message); alone, each cycle
        as it is committed."""
        drive = getattr(self.sequence.runner, "drive", None)
        if drive is not None:
            yield from drive(self)
            return
        while (forward := self.plan(wait=True)) is not None:
            yield [self.compute.run(self._forward_and_complete, forward)]

    def plan(self, wait: bool) -> Forward | None:
        """The next cycle's forward; None when the sequence is done (or cancelled), WAITING (only when not
        `wait`) while the draft's proposal has not come and the draft timeout has not passed."""
        if self.done:
            return None
        if self.cancelled.is_set():
            self.sequence.finish(FinishReason.CANCELLED)
            return None
        picked = NOTHING
        found: dict[int, UsableDrafts] = {}  # id(proposal) -> its usable part, for `prepare` (the picker holds them)
        if self.drafting:
            def usable(p) -> int:
                drafts = self.sequence.usable_drafts(p, self.k)
                if drafts is None:
                    return -1
                found[id(p)] = drafts
                return len(drafts.token_ids)
            if wait:
                picked = self.link.next_proposal(usable)
                if self.cancelled.is_set():  # woken: no further forward
                    self.sequence.finish(FinishReason.CANCELLED)
                    return None
            else:
                waited = time.perf_counter() - self._ready_at
                picked = self.link.poll(usable, waited)
                if picked is None:
                    timeout = self.link.timeout_s
                    if timeout is None or waited < timeout:
                        return WAITING
                    self.link.fail(f"no usable proposal within {timeout:.2f}s")
                    picked = NOTHING
        self._picked = picked
        self._prepared = self.sequence.prepare(picked.proposal, self.k, found.get(id(picked.proposal)))
        return self._prepared.forward

    def sampled_verify(self) -> tuple[SamplingParams, SampledVerify] | None:
        """The planned cycle's sampling and its verification but for its target distributions (None: greedy;
        TargetSequence.sampled_verify), for an engine that verifies a step's sampled cycles at once."""
        verify = self.sequence.sampled_verify(self._prepared)
        return None if verify is None else (self.sequence.sampling, verify)

    def complete(self, top: list[int] | None, logits: torch.Tensor | None, started: float,
                 verified: VerifyResult | None = None) -> Cycle:
        """Verify and commit the planned cycle from its forward's argmax or logits, or with its verification done
        (`verified`, of `sampled_verify`); choose the next K and tell the draft."""
        picked = self._picked
        cycle = self.sequence.complete(self._prepared, top, logits, started, verified)  # a new Cycle: filled in here
        cycle.wait_s, cycle.draft_s, cycle.catch_up_s = picked.wait_s, picked.draft_s, picked.catch_up_s
        cycle.ahead, cycle.draft_failed = picked.ahead, self.draft_failed
        if not self._first:
            self.chooser.observe(cycle.k, cycle.accepted, cycle.verify_s, *self._draft_cost(picked, started),
                                 catch_up_s=picked.catch_up_s)
        self._first = False
        self.k = self.chooser.choose(self.sequence.max_k)
        now = time.perf_counter()
        if self.link is not None and not self.link.failed:
            next_k = (self.k or -1) if self.k != self.told_k else 0  # -1 pauses, 0 keeps
            self.told_k = self.k
            self._tell(cycle, next_k, now)
        self._ready_at = now  # waiting for the draft from here (a verdict takes microseconds to hand on)
        return cycle

    def _tell(self, cycle: Cycle, next_k: int, now: float) -> None:
        """Send the draft the verdict on this cycle. A paused draft has no use for each plain cycle's tokens
        until it drafts again: they are held and sent as one verdict with the one that resumes it (or after
        HOLD_VERDICTS_S), so under load a paused draft costs neither process a message per token."""
        paused = cycle.k == 0 and next_k == 0 and self.k == 0  # a plain cycle, and the draft stays paused
        if self._held is None and paused:
            self._held_since = now
        if paused and now - self._held_since < HOLD_VERDICTS_S:
            if self._held is None:
                self._held = (cycle.start, [])
            self._held[1].extend(cycle.new_tokens)
            return
        if self._held is not None:  # one verdict for all: the held tokens, then this cycle's (which it describes)
            start, tokens = self._held
            cycle = replace(cycle, start=start, new_tokens=tokens + cycle.new_tokens)
            self._held = None
        self.link.send_verdict(cycle, next_k)

    def _draft_cost(self, picked: Picked, started: float) -> tuple[float, float]:
        """What the draft cost the target this cycle: (drafting, round trip). It waited for the draft from the
        end of the last cycle until this forward started (in a batched engine, the wait for the step that took
        the proposal in too); with overlap that is only what was not hidden behind the last verify. A paused
        draft's catching up is the price of the pause, not of drafting; of the rest, up to the draft's own
        drafting time scales with k, and what is beyond it (hops, handing over) is paid once per cycle."""
        waited = max(0.0, max(picked.wait_s, started - self._ready_at) - picked.catch_up_s)
        drafting = min(waited, picked.draft_s) if picked.draft_s > 0 else waited
        return drafting, waited - drafting

    def _forward_and_complete(self, forward: Forward) -> Cycle:
        started = time.perf_counter()
        return self.complete(*self.sequence.run_forward(forward), started)


class InlineLink:
    """A proposer that drafts on the target's own thread when the target asks for a block (no overlap): the
    in-process decoder's link. The draft's time is all wait, charged to adaptive K as drafting."""

    failure: str | None = None
    timeout_s: float | None = None

    def __init__(self, proposer: Proposer, committed: Callable[[], list[int]], k: int) -> None:
        self.proposer = proposer
        self.committed = committed  # the target's committed tokens now
        self.k = k  # what the last verdict asked for
        self.on_arrival: Callable[[], None] = lambda: None

    @property
    def failed(self) -> bool:
        return self.failure is not None

    def fail(self, reason: str) -> None:
        self.failure = self.failure or reason

    def wake(self) -> None:
        pass  # nothing waits: drafting happens when asked

    def next_proposal(self, usable: Callable[[Proposal], int]) -> Picked:
        t0 = time.perf_counter()
        p = self.proposer.propose(self.committed(), self.k)
        return NOTHING if usable(p) < 0 else Picked(p, time.perf_counter() - t0, p.draft_s, p.catch_up_s, False)

    def poll(self, usable: Callable[[Proposal], int], waited_s: float) -> Picked | None:
        return self.next_proposal(usable)  # on an engine's thread: one request at a time only

    def send_verdict(self, cycle: Cycle, next_k: int = 0) -> None:
        if next_k:
            self.k = max(0, next_k)
        self.proposer.observe(feedback_of(cycle))

    def close(self, cancel: bool = False) -> None:
        self.proposer.close()

    def join_ahead(self) -> DraftJoin | None:
        return None  # drafts on the target's thread, when asked

    def behind(self, committed: Sequence[int]) -> int:
        return 0  # catches up on the target's thread, a session at a time


class LocalLink(ProposalInbox):
    """An in-process draft at the other end of the link: a DraftSession drafting on its own thread, so it
    drafts ahead while the target verifies (`overlap`), as a draft service does."""

    def __init__(self, proposer: Proposer, prompt_ids: Sequence[int], k: int, greedy: bool,
                 predraft: PredraftPolicy, paused: bool = False, overlap: bool = True) -> None:
        super().__init__(self._to_proposal, timeout_s=None)  # it answers every verdict: no wait is long
        self.session = DraftSession(proposer, prompt_ids, k, overlap=overlap, greedy=greedy, predraft=predraft,
                                    paused=paused)
        self._inbox: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True, name="local-draft")
        self._thread.start()

    @staticmethod
    def _to_proposal(sent: SentProposal) -> Proposal:
        return Proposal(sent.start, sent.token_ids, None, sent.source, sent.token_sources(), draft_s=sent.draft_s,
                        catch_up_s=sent.catch_up_s, ahead=sent.ahead)

    def _run(self) -> None:
        try:
            self.session.start()
            while (verdict := self._inbox.get()) is not None:
                for batch in self.session.on_verdict(verdict):
                    for p in batch:
                        self.put(p)
        except Exception as e:  # noqa: BLE001 - a failed draft must not take the request with it
            log.exception("in-process draft failed; the target goes on alone")
            self.fail(f"{type(e).__name__}: {e}")
            self.put(BROKEN)

    def send_verdict(self, cycle: Cycle, next_k: int = 0) -> None:
        self._inbox.put(Verdict(cycle.start, cycle.new_tokens, next_k, feedback_of(cycle)))

    def close(self, cancel: bool = False) -> None:
        self._inbox.put(None)
        self._thread.join()
