"""What one target step did (`Cycle`) and the per-request counters built from cycles (`SpecStats`).

Kept apart from the exporters (Prometheus, OTLP, protobuf): they read these fields. Ratios are
derived, never stored: mean acceptance length = 1 + accepted_tokens / drafts (vLLM's definition,
counting the bonus token).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from specdec.core.config import FinishReason, ProposerKind


@dataclass
class Cycle:
    """One target step: what it verified and committed, and what it cost."""

    new_tokens: list[int]  # tokens committed this cycle (after EOS / length cuts)
    start: int  # absolute position of new_tokens[0]
    k: int = 0  # draft tokens verified
    accepted: int = 0  # of which accepted
    verify_s: float = 0.0  # the target's forward + verification
    draft_sources: list[ProposerKind] = field(default_factory=list)  # proposer of each verified draft token
    finish_reason: FinishReason | None = None
    wait_s: float = 0.0  # time the target waited for the proposal
    draft_s: float = 0.0  # the proposer's own time drafting it
    catch_up_s: float = 0.0  # part of wait_s the draft spent catching up on cycles it did not draft
    ahead: bool = False  # the proposal was drafted ahead, before the previous verdict (overlap)
    draft_failed: bool = False  # the draft has failed in this session (the target goes on alone)
    queued_s: float = 0.0  # (first cycle) how long the session waited for a KV slot before it

    @property
    def overlap_hit(self) -> bool:
        return self.ahead and self.k > 0


@dataclass
class SpecStats:
    drafts: int = 0  # cycles that verified at least one draft token
    draft_tokens: int = 0  # draft tokens sent to verification
    accepted_tokens: int = 0  # draft tokens the target accepted
    accepted_per_position: list[int] = field(default_factory=list)  # [i]: cycles accepting draft token i
    draft_tokens_by_source: dict[str, int] = field(default_factory=dict)  # proposer kind's value -> draft tokens
    accepted_tokens_by_source: dict[str, int] = field(default_factory=dict)  # ... -> accepted tokens
    cycles: int = 0  # target forward passes after prefill, with or without drafts
    new_tokens: int = 0  # tokens delivered (a stop string can end delivery inside a cycle)
    prompt_tokens: int = 0
    draft_time_s: float = 0.0  # time spent drafting (on the proposer's side)
    verify_time_s: float = 0.0  # time in target forward + verification
    wait_time_s: float = 0.0  # time the target waited for proposals
    network_wait_s: float = 0.0  # of that wait, what drafting does not explain (network, queues)
    queue_time_s: float = 0.0  # time waiting for a KV slot in the target's admission queue
    overlap_hits: int = 0  # cycles whose proposal was drafted ahead, before the previous verdict
    overlap_misses: int = 0  # cycles (with overlap on) that waited for a proposal drafted after the verdict
    wall_time_s: float = 0.0
    time_to_first_token_s: float = 0.0

    def observe(self, cycle: Cycle, overlap: bool = False) -> None:
        """Count one cycle (`overlap`: the draft was asked to draft ahead, so a drafted cycle is a hit or
        a miss). The one place a cycle becomes statistics."""
        self.cycles += 1
        self.verify_time_s += cycle.verify_s
        self.queue_time_s += cycle.queued_s
        if cycle.k == 0:
            return
        self.draft_time_s += cycle.draft_s
        self.wait_time_s += cycle.wait_s
        self.network_wait_s += max(0.0, cycle.wait_s - cycle.draft_s - cycle.catch_up_s)
        if overlap:
            self.overlap_hits += cycle.overlap_hit
            self.overlap_misses += not cycle.overlap_hit
        for i, source in enumerate(s.value for s in cycle.draft_sources):
            self.draft_tokens_by_source[source] = self.draft_tokens_by_source.get(source, 0) + 1
            if i < cycle.accepted:
                self.accepted_tokens_by_source[source] = self.accepted_tokens_by_source.get(source, 0) + 1
        self.drafts += 1
        self.draft_tokens += cycle.k
        self.accepted_tokens += cycle.accepted
        if len(self.accepted_per_position) < cycle.k:
            self.accepted_per_position.extend([0] * (cycle.k - len(self.accepted_per_position)))
        for i in range(cycle.accepted):
            self.accepted_per_position[i] += 1

    def __iadd__(self, other: "SpecStats") -> "SpecStats":
        """Totals over requests (time to first token: the sum, like every other time)."""
        for name, value in vars(other).items():
            mine = getattr(self, name)
            if isinstance(value, list):
                mine.extend([0] * (len(value) - len(mine)))
                for i, n in enumerate(value):
                    mine[i] += n
            elif isinstance(value, dict):
                for key, n in value.items():
                    mine[key] = mine.get(key, 0) + n
            else:
                setattr(self, name, mine + value)
        return self

    @property
    def mean_acceptance_length(self) -> float:
        return 1.0 + self.accepted_tokens / self.drafts if self.drafts else 1.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.wall_time_s if self.wall_time_s > 0 else 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["mean_acceptance_length"] = self.mean_acceptance_length
        out["acceptance_rate"] = self.acceptance_rate
        out["tokens_per_second"] = self.tokens_per_second
        return out


@dataclass
class Summary:
    """How one request ended, with its statistics."""

    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    stats: SpecStats
    draft_failed: bool = False
    session_id: str = ""


@dataclass
class PhaseStats:
    """What a target's own draft's phases did (core.own_draft), for the engine's log and metrics: a phase in which a
    session's draft catches up first (a new prompt, or the tokens of a pause) holds every row's step for that
    forward and its host read."""

    phases: int = 0
    rows: int = 0  # sessions drafted for, over all phases
    catching_up: int = 0  # phases in which some session's draft caught up before drafting
    catch_up_s: float = 0.0  # the time those catch-ups took
    catch_up_tokens: int = 0  # the tokens they forwarded, over every session caught up (Proposal.catch_up_tokens)
    joining_s: float = 0.0  # of it, the phases in which a new session's draft caught up on its prompt
    phase_s: float = 0.0  # the time all phases took
