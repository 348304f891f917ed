"""What the batched engine measures of its own steps: t(rows, tokens per row), the cost table load-aware K and the
engine's own choices read (StepCostTable), and the counts its metrics and log report (StepStats). Plain data and
arithmetic, kept apart from the engine that fills them (core.batching)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field, replace
from typing import Sequence

from specdec.core.config import ROW_BUCKETS, TOKEN_BUCKETS


def bucket(n: int, sizes: Sequence[int]) -> int:
    """The smallest size >= n (n itself past the largest)."""
    i = bisect.bisect_left(sizes, n)
    return sizes[i] if i < len(sizes) else n


@dataclass
class StepCostTable:
    """t(rows, tokens per row): what a batched step costs at each load, an EMA per (rows bucket, tokens bucket).

    Where a cell was never measured its seed (a captured step timed at start) stands for it, scaled as its rows are
    served (`_seeded`); without a seed it is scaled from a measured cell of the same rows bucket by the ratio
    of the two token counts in the nearest rows bucket where both were measured (a plain step at 16 rows
    is rarely run while every session speculates, but 1-row steps of both sizes are). No answer exceeds what a
    measured cell of more rows costs (`_capped`)."""

    smoothing: float = 0.2
    cells: dict[tuple[int, int], float] = field(default_factory=dict)
    touched: set[tuple[int, int]] = field(default_factory=set)  # cells observed since the last `report`
    _answers: dict[tuple[int, int], float | None] = field(default_factory=dict)  # (rows, tokens) asked, until the
    # next observation
    cycles: dict[tuple[int, int], float] = field(default_factory=dict)  # (driven rows bucket, tokens) -> a session's
    # wall time from one forward of that many tokens to its next (observe_cycle)
    cycles_touched: set[tuple[int, int]] = field(default_factory=set)
    cycles_seen: dict[tuple[int, int], int] = field(default_factory=dict)  # buckets -> how many cycles were observed
    forwards: dict[tuple[int, int], float] = field(default_factory=dict)  # (the step's rows, tokens) buckets -> a
    # step launched alone, from launch to read
    _forward_answers: dict[tuple[int, int], float | None] = field(default_factory=dict)  # as _answers, of forwards
    seeds: dict[tuple[int, int], float] = field(default_factory=dict)  # buckets -> a step's device time, timed once
    # at start (seed): what a cell never measured costs, before scaling from other cells

    @staticmethod
    def _key(rows: int, tokens: int) -> tuple[int, int]:
        return bucket(rows, ROW_BUCKETS), bucket(tokens, TOKEN_BUCKETS)

    @staticmethod
    def _cycle_key(rows: int, tokens: int) -> tuple[int, int]:
        """A cycle's cell: its tokens as they are, not bucketed as a step's. Cycles of K = 3 and K = 4 verify in steps
        of one width, but a K = 4 cycle drafts a step more: in one cell, the K that ran set both Ks' price."""
        return bucket(rows, ROW_BUCKETS), tokens

    def observe(self, rows: int, tokens: int, seconds: float) -> None:
        self._average(self.cells, self._key(rows, tokens), seconds, self.touched)
        self._answers = {}

    def observe_cycle(self, rows: int, tokens: int, seconds: float, samples: int = 1) -> None:
        """A session's whole cycle as it lives it, from the end of its last forward to the end of this one, at
        `rows` driven sessions: completing, drafting, planning, the steps it waited for. What a plain cycle
        costs in a run of plain steps (each launched while the last computes) and what a drafting cycle costs
        with its drafting phase are each measured as they are, not summed from parts; and a session left out
        of a step (sessions falling into cohorts) pays for it here. `seconds`: the mean of `samples` sessions'
        cycles that ended in one step, folded in once: they lived the same steps, and folded in one by one the
        last step's rows set the price by themselves (one slow step turned a batch's drafting off for good)."""
        key = self._cycle_key(rows, tokens)
        self._average(self.cycles, key, seconds, self.cycles_touched)
        self.cycles_seen[key] = self.cycles_seen.get(key, 0) + samples

    def seed(self, rows: int, tokens: int, seconds: float) -> None:
        """A captured step's device time, replayed on an idle device at start. A ratio scaled from another load
        misjudges a load never run: from a few rows, where a step's cost hardly depends on its tokens, it put a
        large batch's plain step far above its cost, and the batch kept drafting where decoding plainly was faster."""
        self.seeds[self._key(rows, tokens)] = seconds
        self._answers, self._forward_answers = {}, {}

    def observe_forward(self, rows: int, tokens: int, seconds: float) -> None:
        """A step launched while none was on the device, from launch to read: about the device's time for it."""
        self._average(self.forwards, self._key(rows, tokens), seconds)
        self._forward_answers = {}

    def _average(self, table: dict[tuple[int, int], float], key: tuple[int, int], seconds: float,
                 touched: set[tuple[int, int]] | None = None) -> None:
        """Fold `seconds` into the cell `key`."""
        old = table.get(key)
        table[key] = seconds if old is None else (1 - self.smoothing) * old + self.smoothing * seconds
        if touched is not None:
            touched.add(key)

    def cycle(self, rows: int, tokens: int) -> float | None:
        """The measured cycle at that load and step size (`_capped`); None where none was measured."""
        key = self._cycle_key(rows, tokens)
        return self._capped(self.cycles, key, self.cycles.get(key))

    def cycle_elsewhere(self, rows: int, tokens: int) -> float | None:
        """A cycle of `tokens` never measured at this load, from loads where it was: a cycle measured here (a plain
        one, as a rule) times the nearest load's ratio of the two (`_scaled`, as `cost` scales cells; `_capped`). None
        where no load has both."""
        key = self._cycle_key(rows, tokens)
        return self._capped(self.cycles, key, self._scaled(self.cycles, *key))

    def cycle_samples(self, rows: int, tokens: int) -> int:
        """How many cycles the measured cycle at that load and step size was observed over (0: never)."""
        return self.cycles_seen.get(self._cycle_key(rows, tokens), 0)

    def forward(self, rows: int, tokens: int) -> float | None:
        """A forward of a step at that load and size, launched alone; where never measured (a batch that drafts
        throughout launches no plain step alone at its load), its seed or, without one, scaled as `cost` scales;
        None without a scale."""
        return self._lookup(self.forwards, self._forward_answers, rows, tokens)

    def report(self) -> str:
        """The cells observed since the last report, 'rows x tokens: ms', and the cycles (for the engine's log line)."""
        cells, self.touched = sorted(self.touched), set()
        cycles, self.cycles_touched = sorted(self.cycles_touched), set()
        line = ", ".join(f"{r}x{n}: {1e3 * self.cells[(r, n)]:.1f}" for r, n in cells)
        if cycles:
            line += "; cycles " + ", ".join(f"{r}x{n}: {1e3 * self.cycles[(r, n)]:.1f}" for r, n in cycles)
        return line

    def cost(self, rows: int, tokens: int) -> float | None:
        return self._lookup(self.cells, self._answers, rows, tokens)

    def measured(self, rows: int, tokens: int) -> float | None:
        """The cell as served steps measured it: no seed, no scaling (None where none was)."""
        return self.cells.get(self._key(rows, tokens))

    def _lookup(self, table: dict[tuple[int, int], float], answers: dict[tuple[int, int], float | None], rows: int,
                tokens: int) -> float | None:
        """A cell, else its seed (`_seeded`), else its scaled estimate. Every session's K choice asks for each K between
        two steps: answered once per question until the table is next observed."""
        answer = answers.get((rows, tokens), self)
        if answer is self:
            key = self._key(rows, tokens)
            answer = table.get(key)
            answer = self._seeded(table, *key) if answer is None else answer
            answer = self._scaled(table, *key) if answer is None else answer
            answer = answers[(rows, tokens)] = self._capped(table, key, answer)
        return answer

    def _seeded(self, table: dict[tuple[int, int], float], r: int, n: int) -> float | None:
        """The seed of cell (r, n), times what the same rows cost served against their seed at the nearest step size
        measured (1 where none was): seeds are timed attending over the whole cache, a served step over the span its
        rows reach, and unscaled seeds priced the verifies of a large batch out of drafting (docs/benchmarks.md, lr1)."""
        seed = self.seeds.get((r, n))
        if seed is None:
            return None
        near = min((m for (b, m) in table if b == r and (b, m) in self.seeds), key=lambda m: (abs(m - n), m), default=None)
        return seed if near is None else seed * table[(r, near)] / self.seeds[(r, near)]

    @staticmethod
    def _capped(table: dict[tuple[int, int], float], key: tuple[int, int], answer: float | None) -> float | None:
        """`answer` for `key`, never more than a cell measured with more rows and as many tokens: fewer rows do the
        same work for fewer of them, so a dearer figure was timed disturbed (beside a drafting phase's catch-ups, in a
        ramp), and taken as is it makes drafting look better at a load the batch passes through between requests
        (docs/benchmarks.md, call n1)."""
        if answer is None:
            return None
        rows, tokens = key
        above = [v for (r, n), v in table.items() if n == tokens and r > rows]
        return min(answer, min(above)) if above else answer

    @staticmethod
    def _scaled(cells: dict[tuple[int, int], float], r: int, n: int) -> float | None:
        for m in sorted({m for (b, m) in cells if b == r}, key=lambda m: abs(m - n)):
            others = sorted({b for (b, x) in cells if x == m and (b, n) in cells}, key=lambda b: abs(b - r))
            if others:
                b = others[0]
                return cells[(r, m)] * cells[(b, n)] / cells[(b, m)]
        return None


@dataclass
class StepStats:
    """What the engine did, for metrics and tests."""

    steps: int = 0  # batched forwards
    rows: int = 0  # real rows over all of them
    driven: int = 0  # driven sessions over all of them (a session between its cycles, or drafting, is in no step)
    open_slots: int = 0  # slots open over all of them (a session setting up is not driven yet)
    arrivals: int = 0  # new driven sessions whose first forward was launched
    arrival_setup_s: float = 0.0  # their time from opening their slot to being driven (the session's set-up)
    arrival_wait_s: float = 0.0  # and from being driven to that launch (the engine's: gathered, held, split or drafting)
    prefill_chunks: int = 0
    prefill_rows: int = 0  # the requests those chunks forwarded (new prompts run alone together share one)
    chunks_apart: int = 0  # of the chunks, those launched before a step launched ahead and read apart from it
    joins_split: int = 0  # new prompts fed over more than one step at the other rows' width (`_split_joins`)
    busy_s: float = 0.0  # time in batched steps
    forward_s: float = 0.0  # of which in the forward itself (launch to logits on the host); the rest is Python
    drafting_s: float = 0.0  # time the engine spent drafting for its sessions between steps (a StepDrafter)
    drafting_phases: int = 0  # how many times it did
    drafting_longest_s: float = 0.0  # the longest of them since the engine last logged (a catch-up shows here)
    guesses: int = 0  # rows launched ahead on a guess (looking ahead)
    guesses_kept: int = 0  # of which their session's plan confirmed
    early: int = 0  # verifies launched from drafted tokens on the device, before the host read them
    early_kept: int = 0  # of which their session's plan confirmed
    early_steps: int = 0  # steps launched so (one a drafting phase at most)
    early_after_s: float = 0.0  # their launches' seconds after their drafting phase began: what of the phase the verify
    #                             does not overlap (the host's work before it: proposals, chains, the verify's inputs)
    early_before_s: float = 0.0  # their drafting phases' seconds after the host read the step before (handing its rows
    #                              on, planning those that draft no block): with early_after_s, the host's path
    early_before_cpu_s: float = 0.0  # of which the engine thread's CPU time (a CUDA sync spins: it counts here); the
    #                                  rest it waited, for the interpreter's lock other threads held or for a core
    early_waited_s: float = 0.0  # on the device: from the end of the work queued before their phase began (the last
    #                              verify, the draft steps launched ahead) to their start, waiting for the launch
    early_device_s: float = 0.0  # on the device: the steps themselves (on a CPU, where the host runs them: their forwards)
    ahead: int = 0  # a draft runner's rows of chain steps launched from a verify's outcome (launch_ahead: each
    #                 row's first step, and its later ones)
    ahead_kept: int = 0  # of which a chain took as its own step
    joins: int = 0  # new sessions' draft catch-ups launched in such a step (launch_ahead's `joins`)
    joins_kept: int = 0  # of which their first drafting phase took (joined_ahead)
    ahead_launches: int = 0  # launch_ahead calls whose steps were timed on the device (once a later host read passed)
    ahead_device_s: float = 0.0  # their steps' time on the device, the first step to the last (the bound prices each
    #                              such step as a one-token step of the rows: here it may be wider, and more of them)
    ahead_steps: int = 0  # the steps they launched (each chain's first, and its later ones)
    ahead_width: int = 0  # their first steps' tokens per row, summed (2, or a joining prompt's length + 1)
    ahead_joined: int = 0  # of those launches, the ones with a new session's catch-up (`joins`: a wider first step)
    ahead_joined_s: float = 0.0  # their steps' time on the device
    ahead_idled: int = 0  # launches timed from the verify they follow (one launched in a drafting phase)
    ahead_idle_s: float = 0.0  # the device's time from that verify's end to their first step's start: idle, but for
    #                            the drafting phase's own forwards (on a CPU, which runs each forward as it is
    #                            launched: the host's time between the two)
    rows_seen: dict[int, int] = field(default_factory=dict)  # rows in a step -> how many steps
    widths: dict[int, int] = field(default_factory=dict)  # tokens per row of a step -> how many steps

    def mark(self) -> "StepStats":
        """A copy for the next report to subtract from its figures: the widths histogram copied (it subtracts it),
        rows_seen left empty (no report reads it; a shallow copy would share the live one)."""
        return replace(self, rows_seen={}, widths=dict(self.widths))

    def count(self, rows: int, width: int) -> None:
        """One more step, of `rows` rows of `width` tokens."""
        self.steps, self.rows = self.steps + 1, self.rows + rows
        self.rows_seen[rows] = self.rows_seen.get(rows, 0) + 1
        self.widths[width] = self.widths.get(width, 0) + 1

    def others(self, width: int) -> int:
        """How many steps so far were of another width."""
        return self.steps - self.widths.get(width, 0)

    def launched_ahead(self) -> dict[str, tuple[int, int]]:
        """Rows launched on the device before the host read what they depend on, and how many were kept, by kind: a
        plain decode's guess, a verify from drafted tokens, a draft step from a verify's argmax, a new session's draft
        catch-up in that step (metrics)."""
        return {"guess": (self.guesses, self.guesses_kept), "verify": (self.early, self.early_kept),
                "draft": (self.ahead, self.ahead_kept), "catch-up": (self.joins, self.joins_kept)}
