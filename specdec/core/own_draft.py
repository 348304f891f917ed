"""The target's own draft: a draft model in the target's process, drafting for all of the target engine's
sessions together, between the engine's steps.

Two engines sharing one GPU (a draft service's and a target's, or two in one process) each step on their own
and fall out of phase: the sessions split into cohorts, and each engine's steps wait on the device for the
other's (docs/benchmarks.md). Here the target's engine, before a step, drafts for every session that asked
for a block (the draft's K steps for all their rows, batched), then verifies them all in that step: draft and
verify take turns in one schedule, on one thread, as vLLM's and SGLang's speculative workers do. The draft
runner has no engine loop of its own (BatchedRunner with launch=None): its forwards run on the target
engine's thread.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Sequence

from specdec.core.drafting import DraftStart
from specdec.core.proposal import Proposal, Proposer, ProposerFactory
from specdec.core.runner import Drafted, DraftJoin, Launched
from specdec.core.stats import Cycle, PhaseStats
from specdec.core.target_loop import BROKEN, Picked, ProposalInbox, feedback_of

if TYPE_CHECKING:
    from specdec.core.batching import BatchedRunner

log = logging.getLogger("specdec.own_draft")

ProposeAll = Callable[[Sequence[Proposer], Sequence[Sequence[int]], Sequence[int], Launched | None], list[Proposal]]
Early = Callable[[list[tuple["OwnDraftLink", Drafted]]], None]  # each asking link's block, launched and not yet read
SLOW_PHASE_S = 0.05  # a drafting phase this long holds every session's step: the log says what it spent it on
CATCH_UP_DECAY = 0.8  # each catch-up timed weighs an older one by this (CatchUpPrice)
CATCH_UP_SPREAD = 0.25  # catch-ups whose sizes vary less than this (standard deviation over mean) give no slope


@dataclass
class CatchUpPrice:
    """Seconds a catch-up on n committed tokens takes, from the catch-ups timed so far: fixed work plus a price per
    token, fitted by least squares with each older catch-up's weight decayed by CATCH_UP_DECAY. A catch-up's forwards
    cost their launches and a read whatever its size, a few milliseconds; a price per token alone, set by the many
    catch-ups of one session's prompt, priced a catch-up of every row on 7747 tokens at 537 ms where one on 7406 took
    52.5 (docs/benchmarks.md, call sd4). Until the sizes seen vary enough for a slope (or where the fit has none, or
    no fixed part), the price per token, which errs dear."""

    weight: float = 0.0
    tokens: float = 0.0
    seconds: float = 0.0
    tokens_sq: float = 0.0
    tokens_seconds: float = 0.0

    def observe(self, tokens: int, seconds: float) -> None:
        d = CATCH_UP_DECAY
        self.weight, self.tokens, self.seconds = d * self.weight + 1, d * self.tokens + tokens, d * self.seconds + seconds
        self.tokens_sq = d * self.tokens_sq + tokens * tokens
        self.tokens_seconds = d * self.tokens_seconds + tokens * seconds

    def cost(self, tokens: int) -> float | None:
        """Seconds for a catch-up on `tokens` (0 for none); None: none timed yet."""
        if not self.tokens:
            return None
        if tokens <= 0:
            return 0.0
        per_token = self.seconds / self.tokens * tokens
        mean_t, mean_s = self.tokens / self.weight, self.seconds / self.weight
        spread = self.tokens_sq / self.weight - mean_t * mean_t  # the sizes' variance
        if spread <= (CATCH_UP_SPREAD * mean_t) ** 2:
            return per_token
        slope = (self.tokens_seconds / self.weight - mean_t * mean_s) / spread
        fixed = mean_s - slope * mean_t
        return fixed + slope * tokens if slope > 0 and fixed >= 0 else per_token


class OwnDraftLink(ProposalInbox):
    """A session's end of its own-draft link: with each verdict (or when the target looks for a proposal and has
    none) the session asks the drafter for a block, which the engine drafts with everyone else's before its next
    step."""

    def __init__(self, drafter: "OwnDrafts", proposer: Proposer, prompt_ids: Sequence[int], k: int) -> None:
        super().__init__(lambda proposal: proposal, timeout_s=None)  # drafted before the step that wants it
        self.drafter = drafter
        self.proposer = proposer
        self.k = k  # what the last verdict asked for
        self.committed = list(prompt_ids)  # the target's sequence, as the verdicts told it
        self.closed = False  # its session is over: the drafter must not touch its proposer (or slot) again
        self.joining = k > 0  # its first block is still to be drafted, on its prompt (a paused start's is a resume)

    def poll(self, usable: Callable[[Proposal], int], waited_s: float) -> Picked | None:
        picked = super().poll(usable, waited_s)
        if picked is None:
            self.drafter.ask(self)
        return picked

    def next_proposal(self, usable: Callable[[Proposal], int]) -> Picked:
        """Outside an engine (a session's own thread): draft this session's block alone, now."""
        self.drafter.ask(self)
        self.drafter.draft()
        return super().next_proposal(usable)

    def send_verdict(self, cycle: Cycle, next_k: int = 0) -> None:
        """Learn the committed tokens, and ask for the next block now (unless the session is done or paused): the
        engine drafts it before it plans its next step, so a drafting session is planned once per cycle."""
        del self.committed[cycle.start:]
        self.committed.extend(cycle.new_tokens)
        if next_k:
            self.k = max(0, next_k)
        self.proposer.observe(feedback_of(cycle))
        if self.k > 0 and cycle.finish_reason is None:
            self.drafter.ask(self)

    def join_ahead(self) -> DraftJoin | None:
        """Before its first block: its draft's catch-up on the prompt, for the target's engine to launch with its other
        sessions' next draft steps (`BatchedRunner.launch_ahead`), where its proposer's picks are read in a group."""
        group = getattr(self.proposer, "group", None)  # a model proposer's (proposers.base.ModelDrafting)
        with self.drafter.lock:  # not closed: its slot is still its own (a closed slot's index is -1)
            if not self.joining or self.closed or group is None:
                return None
            try:
                self.proposer.before_propose(self.committed)  # a replayed draft's `known` answers from its reference
            except Exception:  # noqa: BLE001 - not here, on the engine's path: its drafting phase fails this link alone
                return None
            return DraftJoin(self.drafter.runner, self.proposer.slot.index, list(self.committed), group.read, self.k,
                             group.known)

    def behind(self, committed: Sequence[int]) -> int:
        behind = getattr(self.proposer, "behind", None)  # a model proposer's (proposers.base.ModelDrafting)
        # without the drafter's lock, which a drafting phase holds: an estimate (the engine weighs a switch on by it),
        # and a slot closed meanwhile only reads its token list
        return 0 if self.closed or behind is None else behind(committed)

    def close(self, cancel: bool = False) -> None:
        """Give the proposer's slot back, once no drafting phase is using it (a cancelled session may have
        asked for a block just before it ended)."""
        with self.drafter.lock:
            self.closed = True
            self.proposer.close()


class OwnDrafts:
    """The target service's links to its own draft (the `Links` of target_service), and the drafter its batched
    engine calls between steps (BatchedRunner.drafter). `propose_all`: the proposers' batched propose
    (proposers.base.propose_together)."""

    def __init__(self, factory: ProposerFactory, propose_all: ProposeAll, runner: BatchedRunner) -> None:
        """`runner`: the draft's (`factory`'s proposers draft over it), whose table of step costs says what a draft step
        costs at a load."""
        self.factory = factory
        self.propose_all = propose_all
        self.runner = runner
        self._asked: dict[OwnDraftLink, None] = {}  # in the order they asked (a dict: each asks once per cycle)
        self.lock = threading.Lock()  # held while drafting: by the engine's thread (or a session outside one)
        self.stats = PhaseStats()
        self._reported = PhaseStats()
        self.catch_up_price = CatchUpPrice()  # what the catch-ups timed so far say one costs

    def open(self, address: str, start: DraftStart, deadline_s: float | None) -> OwnDraftLink:
        k = 0 if start.paused else start.k  # a paused session asks for nothing until a verdict resumes it
        return OwnDraftLink(self, self.factory.open(start.sampling, start.seed), start.prompt_ids, k)

    def ask(self, link: OwnDraftLink) -> None:
        with self.lock:
            if not link.closed:
                self._asked[link] = None

    def draft(self, early: Early | None = None) -> bool:
        """Draft a block for every session that asked since the last call, together; False when none had. A
        failed draft fails those sessions' links: they go on decoding alone, the other sessions are untouched.
        `early`: called with each link's block once its steps are launched, before the host reads them (where the
        runner does so: the engine launches the verify from the drafted tokens on the device)."""
        with self.lock:
            asked, self._asked = [link for link in self._asked if not link.closed], {}
            if not asked:
                return False
            launched = None if early is None else lambda drafted: early([(asked[i], d) for i, d in drafted.items()])
            joining = any(link.joining for link in asked)
            for link in asked:
                link.joining = False
            try:
                t0 = time.perf_counter()
                proposals = self.propose_all([link.proposer for link in asked], [link.committed for link in asked],
                                             [link.k for link in asked], launched)
                elapsed = time.perf_counter() - t0
                tokens = [p.catch_up_tokens for p in proposals]
                self._count(len(asked), elapsed, max(p.catch_up_s for p in proposals), sum(tokens), joining)
                if elapsed > SLOW_PHASE_S:
                    log.info("a drafting phase took %.0f ms: %d sessions drafting up to %d tokens, catching up %.1f ms "
                             "on %d tokens (%d sessions, at most %d tokens a session), drafting %.1f ms",
                             1e3 * elapsed, len(asked), max(link.k for link in asked),
                             1e3 * max(p.catch_up_s for p in proposals), sum(tokens), sum(t > 0 for t in tokens),
                             max(tokens), 1e3 * max(p.draft_s for p in proposals))
            except Exception as e:  # noqa: BLE001 - a failed draft must not take the requests with it
                log.exception("the own draft failed; %d sessions go on alone", len(asked))
                for link in asked:
                    link.fail(f"{type(e).__name__}: {e}")
                    link.put(BROKEN)
                return True
        for link, proposal in zip(asked, proposals):
            link.put(proposal)
        return True

    def _count(self, rows: int, elapsed: float, catch_up_s: float, catch_up_tokens: int, joining: bool) -> None:
        s = self.stats
        s.phases, s.rows, s.phase_s = s.phases + 1, s.rows + rows, s.phase_s + elapsed
        if catch_up_s > 0:
            s.catching_up, s.catch_up_s = s.catching_up + 1, s.catch_up_s + catch_up_s
            s.catch_up_tokens += catch_up_tokens
            s.joining_s += catch_up_s if joining else 0.0
            if catch_up_tokens > 0:
                self.catch_up_price.observe(catch_up_tokens, catch_up_s)

    def catch_up_cost(self, tokens: int) -> float | None:
        """Seconds a catch-up on `tokens` committed tokens would take (CatchUpPrice); None: none timed yet."""
        return self.catch_up_price.cost(tokens)

    def joining_s(self) -> float:
        return self.stats.joining_s

    def step_cost(self, rows: int) -> float | None:
        return self.runner.costs.cost(rows, 1)

    def report(self) -> str:
        """The phases since the last report, for the engine's log line."""
        s, r = self.stats, self._reported
        self._reported = replace(s)
        phases = s.phases - r.phases
        return (f"{phases} drafting phases, {(s.rows - r.rows) / max(1, phases):.1f} sessions each, "
                f"{s.catching_up - r.catching_up} catching up first ({1e3 * (s.catch_up_s - r.catch_up_s):.0f} ms of "
                f"{1e3 * (s.phase_s - r.phase_s):.0f}, {s.catch_up_tokens - r.catch_up_tokens} tokens)")
