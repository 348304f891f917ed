"""Per-request speculative-decoding statistics: raw counters plus times.

Kept apart from the exporters (Prometheus, OTLP, protobuf): they read these fields. Ratios are
derived, never stored: mean acceptance length = 1 + accepted_tokens / drafts (vLLM's definition,
counting the bonus token).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class SpecStats:
    drafts: int = 0  # cycles that verified at least one draft token
    draft_tokens: int = 0  # draft tokens sent to verification
    accepted_tokens: int = 0  # draft tokens the target accepted
    accepted_per_position: list[int] = field(default_factory=list)  # [i]: cycles accepting draft token i
    draft_tokens_by_source: dict[str, int] = field(default_factory=dict)  # proposer -> draft tokens
    accepted_tokens_by_source: dict[str, int] = field(default_factory=dict)  # proposer -> accepted tokens
    cycles: int = 0  # target forward passes after prefill, with or without drafts
    new_tokens: int = 0
    prompt_tokens: int = 0
    draft_time_s: float = 0.0  # time spent drafting (on the proposer's side)
    verify_time_s: float = 0.0  # time in target forward + verification
    wait_time_s: float = 0.0  # time the target waited for proposals beyond drafting (network, queues)
    overlap_hits: int = 0  # cycles whose proposal was drafted ahead, before the previous verdict
    overlap_misses: int = 0  # cycles (with overlap on) that waited for a proposal drafted after the verdict
    wall_time_s: float = 0.0
    time_to_first_token_s: float = 0.0

    def observe_cycle(self, k: int, accepted: int, sources: list[str] | None = None) -> None:
        self.cycles += 1
        if k == 0:
            return
        for i, source in enumerate(sources or []):
            self.draft_tokens_by_source[source] = self.draft_tokens_by_source.get(source, 0) + 1
            if i < accepted:
                self.accepted_tokens_by_source[source] = self.accepted_tokens_by_source.get(source, 0) + 1
        self.drafts += 1
        self.draft_tokens += k
        self.accepted_tokens += accepted
        if len(self.accepted_per_position) < k:
            self.accepted_per_position.extend([0] * (k - len(self.accepted_per_position)))
        for i in range(accepted):
            self.accepted_per_position[i] += 1

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
