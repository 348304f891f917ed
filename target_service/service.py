"""The target's logic for one session: validate, open a KV slot and (if asked) the draft link, run the
verification loop, give everything back however the session ends."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

from specdec.core.adaptive import AcceptanceEstimate, AdaptiveK, FixedK, ProbeSchedule, SharedPhase, StepCosts
from specdec.core.batching import BatchedRunner
from specdec.core.compute import INLINE, Compute
from specdec.core.config import TargetRequest
from specdec.core.drafting import DraftStart
from specdec.core.errors import FailedPrecondition
from specdec.core.runner import ModelRunner
from specdec.core.sequence import TargetSequence
from specdec.core.stats import Cycle
from specdec.core.target_loop import DraftSource, TargetLoop
from specdec.serving.sessions import SessionTable

log = logging.getLogger("specdec.target")
K_LOG_EVERY_S = 5.0  # at most this often, a finished session logs what adaptive K weighs now


@dataclass(frozen=True)
class TargetSettings:
    max_new_tokens: int = 4096  # the largest max_new_tokens a request may ask for
    draft_timeout_s: float = 5.0  # how long to wait for a usable proposal before going on alone


@dataclass(frozen=True)
class Load:
    """What a target holds now (metrics and DescribeTarget)."""

    active: int  # sessions running (queued for a slot included)
    free_slots: int  # KV slots free
    waiting: int  # sessions queued for a slot


class Backend(Protocol):
    """What the servicer drives: a TargetService, or one in a process of its own (engine_process.EngineProcess)."""

    def run(self, request: TargetRequest, on_cancel: Callable[[Callable[[], None]], None], observer: "Observer",
            deadline_s: float | None = None) -> Iterator[list[Cycle]]: ...

    def load(self) -> Load: ...


class Links(Protocol):
    def open(self, address: str, start: DraftStart, deadline_s: float | None) -> DraftSource: ...


class Observer(Protocol):
    """What watches sessions (metrics and traces)."""

    def queued(self, seconds: float) -> None:
        """The session waited this long for a KV slot (0 when one was free)."""
        ...

    def cycle(self, cycle: Cycle) -> None: ...

    def draft_failed(self, reason: str) -> None: ...


class TargetService:
    def __init__(self, runner: ModelRunner, eos_ids: set[int], links: Links, settings: TargetSettings = TargetSettings(),
                 compute: Compute = INLINE, own_drafts: Links | None = None) -> None:
        """`own_drafts`: links to the target's own draft (core.own_draft), for requests that ask for it."""
        self.runner = runner
        self.eos_ids = eos_ids
        self.links = links
        self.own_drafts = own_drafts
        self.settings = settings
        self.compute = compute  # where verification runs (core.compute: CPU models on one thread)
        self.sessions = SessionTable()
        self.step_costs = StepCosts()  # adaptive K: what cycles cost here, learned by every session
        self.acceptance_prior = AcceptanceEstimate()  # and how well this target's drafts do
        self.probes = ProbeSchedule()  # and when one of them tries a paused draft again
        self.own_phase = SharedPhase()  # own-draft sessions draft in one phase: K is chosen for all of them
        self._k_logged = 0.0

    def load(self) -> Load:
        return Load(len(self.sessions), self.runner.free_slots, self.runner.slots.waiting)

    def run(self, request: TargetRequest, on_cancel: Callable[[Callable[[], None]], None], observer: Observer,
            deadline_s: float | None = None) -> Iterator[list[Cycle]]:
        """The session's cycles, those committed since the caller last asked together (at least one);
        `on_cancel(fn)` registers what to run when the caller goes away."""
        request.validate(max_new_tokens_limit=self.settings.max_new_tokens, context_len=self.runner.max_len,
                         vocab_size=self.runner.vocab_size)
        if request.own_draft and self.own_drafts is None:
            raise FailedPrecondition("this target runs no draft of its own (serve target --own-draft MODEL)")
        entry = self.sessions.add(request.session_id)
        on_cancel(entry.cancel_now)
        sequence = link = chooser = None
        try:
            sequence = TargetSequence(self.runner, request.generation, self.eos_ids, seed=request.seed,
                                      cancelled=entry.cancel)
            spec = request.speculation
            chooser = (AdaptiveK(max_k=spec.k, initial_k=spec.k, costs=self.step_costs, prior=self.acceptance_prior,
                                 probes=self.probes,
                                 batch=self.runner if isinstance(self.runner, BatchedRunner) else None,
                                 phase=self.own_phase if request.own_draft else None)
                       if spec.adaptive else FixedK(spec.k))
            paused = not chooser.drafting_pays()  # e.g. under load: the draft need not even prefill for now
            if (request.draft_address or request.own_draft) and spec.k > 0:
                start = DraftStart(request.session_id, request.generation.prompt_ids, request.generation.sampling,
                                   sequence.seed, spec.k, request.overlap, self.runner.placement, paused=paused)
                links = self.own_drafts if request.own_draft else self.links
                link = links.open(request.draft_address, start, deadline_s)
                entry.on_cancel(link.wake)  # a cancelled session must not wait out the draft timeout
            fell_back = False
            queued_s = sequence.slot.queued_s
            observer.queued(queued_s)
            loop = TargetLoop(sequence, link, chooser, entry.cancel, self.compute, link_k=0 if paused else spec.k)
            for cycles in loop.run_batches():
                for cycle in cycles:
                    cycle.queued_s, queued_s = queued_s, 0.0  # reported once, with the first cycle
                    observer.cycle(cycle)
                    if cycle.draft_failed and not fell_back:
                        fell_back = True
                        observer.draft_failed(link.failure or "")
                yield cycles
        finally:
            if isinstance(chooser, AdaptiveK) and link is not None and time.monotonic() - self._k_logged > K_LOG_EVERY_S:
                self._k_logged = time.monotonic()
                log.info("adaptive K after a session: %s", chooser.summary())
            if chooser is not None:
                chooser.close()
            if link is not None:
                link.close(cancel=entry.cancel.is_set())  # cancelled: the draft stops drafting at once
            if sequence is not None:
                sequence.close()
            self.sessions.remove(entry)

