"""The draft's logic for one Propose stream: read the start, open a proposer, answer verdicts with
proposals and row requests with rows, until the target ends the stream, cancels, or goes idle."""

from __future__ import annotations

import logging
import queue
from typing import Callable, Iterator

from specdec.core.compute import INLINE, Compute
from specdec.core.drafting import DraftSession, DraftStart, PredraftPolicy, Row, RowRequest, SentProposal, Verdict
from specdec.core.errors import InvalidArgument
from specdec.core.placement import Placement
from specdec.core.proposal import ProposerFactory
from specdec.serving.sessions import SessionTable

log = logging.getLogger("specdec.draft")
END = object()  # the target ended the stream (or it broke)
Message = DraftStart | Verdict | RowRequest | InvalidArgument | object  # what the inbox carries


def overlap_pays(requested: bool, draft: Placement | None, target: Placement | None) -> bool:
    """Overlap as requested, except where the draft shares its target's compute (its GPU, or its CPU cores):
    there the draft's forwards and the target's take turns, so drafting ahead hides nothing and only adds
    draft work (docs/benchmarks.md)."""
    return requested and not (draft is not None and draft.shares_compute_with(target))


class DraftService:
    def __init__(self, factory: ProposerFactory, *, idle_timeout_s: float, predraft: PredraftPolicy = PredraftPolicy.NEVER,
                 placement: Placement | None = None, compute: Compute = INLINE, vocab_size: int | None = None) -> None:
        self.factory = factory
        self.idle_timeout_s = idle_timeout_s  # a session without messages this long is abandoned
        self.predraft = predraft
        self.placement = placement  # where the draft model computes; None without a model (prompt lookup)
        self.compute = compute  # where drafting runs (core.compute: CPU models on one thread)
        self.vocab_size = vocab_size  # ids a model can embed; None (prompt lookup): any id >= 0
        self.sessions = SessionTable()
        self._shared_with: set[Placement] = set()  # targets already told of: under load, a line per session is noise

    def serve(self, inbox: queue.Queue, on_cancel: Callable[[Callable[[], None]], None]
              ) -> Iterator[list[SentProposal] | Row]:
        """One stream: `inbox` yields the target's messages (END when it ends); `on_cancel(fn)` registers
        what to run when the call is cancelled."""
        start = self._get(inbox, first=True)
        if not isinstance(start, DraftStart):
            raise InvalidArgument("start", "the first message of a Propose stream must be `start`")
        start.validate(self.vocab_size)
        overlap = overlap_pays(start.overlap, self.placement, start.target_placement)
        if overlap != start.overlap and start.target_placement not in self._shared_with:
            self._shared_with.add(start.target_placement)
            log.info("session %s: the target computes on this draft's %s: drafting without overlap (said once per "
                     "target)", start.session_id, "GPU" if self.placement.gpu_uuid else "CPUs")
        entry = self.sessions.add(start.session_id)
        on_cancel(entry.cancel_now)
        proposer = None
        try:
            proposer = self.factory.open(start.sampling, start.seed)
            session = DraftSession(proposer, start.prompt_ids, start.k, overlap, greedy=start.sampling.greedy,
                                   predraft=self.predraft, vocab_size=self.vocab_size,
                                   paused=start.paused)
            self.compute.run(session.start)
            while not entry.cancel.is_set():
                msg = self._get(inbox)
                if msg is None:
                    log.warning("session %s idle for %.0fs: closing it", start.session_id, self.idle_timeout_s)
                    return
                if msg is END:
                    return
                if isinstance(msg, Verdict):
                    yield from self.compute.iterate(session.on_verdict(msg))
                elif isinstance(msg, RowRequest):
                    yield self.compute.run(session.row, msg)
                else:
                    raise InvalidArgument("message", f"unexpected {type(msg).__name__} after start")
        finally:
            if proposer is not None:
                proposer.close()
            self.sessions.remove(entry)

    def _get(self, inbox: queue.Queue, first: bool = False) -> Message | None:
        """The next message; None after idle_timeout_s (at the start: refused); a message the servicer could
        not read is raised here."""
        try:
            msg = inbox.get(timeout=self.idle_timeout_s)
        except queue.Empty:
            if first:
                raise InvalidArgument("start", f"no start message within {self.idle_timeout_s:.0f}s") from None
            return None
        if isinstance(msg, InvalidArgument):
            raise msg
        return msg
