"""Adaptive K: choose the draft length per cycle from measured acceptance and step costs.

With per-token acceptance rate a, a cycle that drafts k tokens commits on average
    E(k) = (1 - a^(k+1)) / (1 - a)            tokens (Leviathan et al. 2023, eq. 1)
and costs T(k) = k * draft_step + verify(k) + [k > 0] * round_trip   (verify(0) is a plain decode step).
We pick k in [0, max_k] maximising E(k) / T(k). k = 0 means plain target decoding: a useless draft
costs nothing but an occasional probe (after `ProbeSchedule.every` steps at k = 0 a cycle tries k = 1 to re-measure a).
Costs are exponential moving averages of measured times; verify(k) for an unmeasured k is
interpolated linearly between the nearest measured sizes. `round_trip` is what a drafted cycle waits for
beyond the draft's own drafting (the hops to a draft service and back, an engine step taking the proposal
in): it does not grow with k, and charging it per token would make a k = 1 probe's cost per token look
several times a real draft step's and keep K at 0 with a perfect draft. The acceptance rate a pools decayed counts
over blocks (see AcceptanceEstimate), which averaging per-block rates would bias low, and K is chosen as if a
were at the upper end of its confidence interval (`AcceptanceEstimate.hoped`): a decision on the estimate
itself stops drafting after a few unlucky blocks (one block of 0 accepted out of 4 says a = 0), and a session
that drafts no more learns nothing more but a probe's one token, so a good draft stays off for good.

Under a batched engine, verify(k) is the engine's measured step cost at its current number of rows if every
row verified k drafts (`BatchLoad.batch_verify_cost`): rows are padded to a common length, so one session's
own cycles cannot show what a plain step would cost, and each session choosing as if the batch followed it is
what lets K fall to 0 together when the load makes speculation cost more than it gains. Sessions that draft in
one phase between the engine's steps (SharedPhase) weigh the engine's measured cycles instead, where it has
them: T(k) summed from parts misses what the host does per drafting step and that plain steps run launched
ahead, and at 64 rows its error picked drafting where it lost (docs/benchmarks.md). Such a phase decides once per
engine step for all its rows, and once it decodes plainly it turns drafting on again only for a clear gain, and
not soon after drafting that did not last; while it drafts, it tries a K never measured at its load whose price is
close to the best's (a K priced too high is otherwise never run, so never measured).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Protocol, TypeVar

from specdec.core.config import MAX_K, ROW_BUCKETS
from specdec.core.step_costs import bucket

T = TypeVar("T")
log = logging.getLogger("specdec.adaptive")
SWITCH_LOG_EVERY_S = 1.0  # a shared phase that turns drafting on or off logs it at most this often
DRAINING_STEPS = 32  # a batch that no session joined for this many steps is draining: a switch on must pay before it ends
SWITCH_ON_GAIN = 1.1  # a shared phase decoding plainly turns drafting on only for this much more tokens per second
ACCEPTANCE_DECAY = 0.95  # a session's acceptance keeps this much of its past at each block: about the last 20 blocks
OPTIMISM = 0.5  # standard errors above the estimate that K is chosen by (AcceptanceEstimate.hoped)
WELL_MEASURED = 100  # sessions' cycles a drafting K's measured cycle averages over for it to stand against the K below
TRY_SHARE = 0.85  # a drafting phase tries a K never measured at its load where it is priced this close to the best
TRIAL_SAMPLES = 48  # sessions' cycles a trial measures that K over before the rates choose again
TRIAL_STEPS = 8  # engine steps a trial lasts at most (a step whose rows changed K, or that others joined, times none)


def expected_tokens(alpha: float, k: int) -> float:
    """E(k): expected tokens committed by one cycle with k drafts and acceptance rate alpha."""
    if alpha >= 1.0:
        return k + 1.0
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


@dataclass
class AcceptanceEstimate:
    """Per-token acceptance rate a from verified blocks: decayed counts of accepted tokens over decayed
    counts of tokens judged (accepted ones plus the one rejection that ends a block, if any).

    Under the geometric model behind E(k) this is the maximum-likelihood a. Averaging per-block rates
    accepted / (accepted + 1) instead is biased low whenever acceptance is all-or-little, as on code:
    blocks of 6/6 and 0/6 average 0.5 while a = 6/7 is what predicts their mean length.
    """

    decay: float = ACCEPTANCE_DECAY  # weight kept by the past at each new block
    accepted: float = 0.0
    judged: float = 0.0

    def observe(self, k: int, accepted: int) -> None:
        """One block of k > 0 drafts, `accepted` of them accepted."""
        self.accepted = self.decay * self.accepted + accepted
        self.judged = self.decay * self.judged + accepted + (accepted < k)

    @property
    def value(self) -> float | None:
        """a, or None before any block."""
        return self.accepted / self.judged if self.judged else None

    @property
    def hoped(self) -> float | None:
        """The upper end of a's Wilson score interval at OPTIMISM standard errors (the decayed counts as the
        sample): what K is chosen by. Near a on much evidence, above it on little, so a session stops drafting
        only once the evidence says drafting loses; None before any block."""
        n = self.judged
        if not n:
            return None
        a, z2 = self.accepted / n, OPTIMISM * OPTIMISM
        return (a + z2 / (2 * n) + OPTIMISM * math.sqrt(a * (1 - a) / n + z2 / (4 * n * n))) / (1 + z2 / n)


def ema(old: float | None, new: float, weight: float) -> float:
    """Exponential moving average; the first measurement is taken as is."""
    return new if old is None else (1 - weight) * old + weight * new


@dataclass
class StepCosts:
    """What a cycle costs: the target's verify time per number of drafts and the draft's time per token.

    They depend on the models and the machine, not on the request, so one StepCosts serves every session
    of a target (a new session starts from what earlier ones measured instead of re-measuring)."""

    smoothing: float = 0.2  # EMA weight of a new measurement
    draft_step_s: float | None = None  # per drafted token
    round_trip_s: float = 0.0  # per drafted cycle, whatever its k
    verify_s: dict[int, float] = field(default_factory=dict)  # k -> verify time of k drafts (+1 position)

    def observe(self, k: int, verify_s: float, draft_s: float | None = None, round_trip_s: float | None = None,
                weight: float | None = None) -> None:
        """`weight`: of this cycle's draft costs, when not `smoothing` (a probe's, measured after a long pause)."""
        self.verify_s[k] = ema(self.verify_s.get(k), verify_s, self.smoothing)
        weight = weight or self.smoothing
        if k > 0 and draft_s is not None:
            self.draft_step_s = ema(self.draft_step_s, draft_s / k, weight)
        if k > 0 and round_trip_s is not None:
            self.round_trip_s = ema(self.round_trip_s, round_trip_s, weight)

    def verify_cost(self, k: int) -> float | None:
        """verify(k), interpolated (or extrapolated) linearly from the measured sizes."""
        if k in self.verify_s:
            return self.verify_s[k]
        known = sorted(self.verify_s)
        if not known:
            return None
        lower = [x for x in known if x < k]
        upper = [x for x in known if x > k]
        if lower and upper:
            a, b = lower[-1], upper[0]
            return self.verify_s[a] + (self.verify_s[b] - self.verify_s[a]) * (k - a) / (b - a)
        if len(known) >= 2:  # extrapolate with the slope of the two nearest points
            a, b = (known[-2], known[-1]) if not upper else (known[0], known[1])
            slope = (self.verify_s[b] - self.verify_s[a]) / (b - a)
            ref = known[-1] if not upper else known[0]
            return max(self.verify_s[ref] + slope * (k - ref), 1e-6)
        return self.verify_s[known[0]]  # one point: assume flat (launch-bound GPUs are nearly so)

    def cycle_cost(self, k: int, verify_s: float | None = None) -> float | None:
        """T(k): seconds of a cycle drafting k tokens (verifying in `verify_s` when given); None before
        measurements."""
        if self.draft_step_s is None or not self.verify_s:
            return None
        return (verify_s or self.verify_cost(k) or 0.0) + k * self.draft_step_s + (self.round_trip_s if k else 0.0)


@dataclass
class PlainProbes:
    """When a phase that drafts decodes plainly for a few steps, to measure a plain cycle at its load again.

    The mirror of ProbeSchedule: a phase's plain cycle is measured only while it decodes plainly, so a figure
    measured once in other conditions (a ramp of joining sessions, far above its steps' cost: docs/benchmarks.md) keeps
    it drafting for good. After `first` steps of drafting its cycles decode plainly for `length` steps (the first
    is a transition; the next are timed); each probe after which drafting still wins doubles the wait, up to
    `max_every`, so a batch where drafting does pay loses at most `length` plain steps in `max_every`."""

    first: int = 64
    max_every: int = 1024
    length: int = 3
    every: int = 0  # the current wait in steps (0: `first`)
    since: int | None = None  # the step from which drafting is counted (None: the phase decodes plainly)
    until: int = -1  # a probe's plain steps run up to this step (exclusive)

    def plain(self, step: int, drafting: bool) -> bool:
        """Whether the cycles completed at engine step `step` decode plainly, the phase's rates asking for drafting
        (`drafting`) or not."""
        if step < self.until:
            return True
        if not drafting:
            self.since, self.every = None, 0
            return False
        if self.since is None:
            self.since = step
        elif step - self.since >= (self.every or self.first):
            self.until = self.since = step + self.length
            self.every = min(self.max_every, 2 * (self.every or self.first))
            return True
        return False


@dataclass
class SwitchHold:
    """How long a shared phase that turned drafting off keeps it off before it may turn it on again.

    Where the batch's rows swing around the break-even (sessions ending and joining between rounds of requests), the
    rates favour drafting at fewer rows and plain decoding at more, and the phase switched many times a second
    (docs/benchmarks.md, call t2), each switch on a catch-up of every row's draft on the tokens of the pause. So
    drafting that lasted fewer than `stable` steps makes the next switch on wait `first` steps, and twice as long each
    time after, up to `max_wait`; drafting that lasted `stable` steps or more clears the wait. The wait is also long
    enough that the dearest catch-up since drafting was turned on (`caught_up`, in plain steps) is at most PROBE_SHARE
    of it, as a probe's is: a catch-up of many rows on a long pause costs many plain steps."""

    first: int = 16
    max_wait: int = 1024
    stable: int = 256
    wait: int = 0  # the last wait set (0: none)
    on_at: int | None = None  # the step drafting was last turned on (None: it is off)
    until: int = -1  # drafting may be turned on again from this step
    cost_steps: float = 0.0  # the dearest catch-up since drafting was last turned on, in plain steps

    def caught_up(self, steps: float) -> None:
        """A member's draft caught up before drafting, for `steps` plain steps' time."""
        self.cost_steps = max(self.cost_steps, steps)

    def allows(self, step: int | None) -> bool:
        """Whether drafting may be turned on at engine step `step` (None: not known, yes)."""
        return step is None or step >= self.until

    def turned(self, drafting: bool, step: int) -> None:
        """The phase turned drafting on (`drafting`) or off at engine step `step`."""
        if drafting:
            self.on_at, self.cost_steps = step, 0.0
            return
        if self.on_at is not None and step - self.on_at < self.stable:
            doubled = min(self.max_wait, 2 * self.wait) if self.wait else self.first
            self.wait = max(doubled, min(self.max_wait, math.ceil(self.cost_steps / PROBE_SHARE)))
            self.until = step + self.wait
        else:
            self.wait = 0
        self.on_at = None


class SharedPhase:
    """The sessions whose drafts are drafted in one phase and verified in one step (the target's own draft,
    core.own_draft): every row waits for the longest chain drafted and is padded to the longest block verified,
    so K is the batch's: the k that maximises the tokens all of them commit per second, sum_i E(a_i, k) / T(k),
    which each of them computes alike. Each session choosing for itself instead, one whose drafts are all accepted
    drafts a long block and every row pays for it (docs/benchmarks.md, the tiny pair at 8 CPU clients).
    Keeps each member's acceptance as it moves, and works out the members' mean E(a_i, k) when it is read, once per
    step: every drafting row's acceptance moves every cycle, and updating the mean with each one was per-row work on
    the engine's thread between a verify's read and the next verify's launch."""

    def __init__(self, max_k: int = MAX_K) -> None:
        self.max_k = max_k
        self._members: dict[int, tuple[float, int]] = {}  # id(member) -> (its acceptance, its max K)
        self._lock = threading.Lock()  # members observe on the engine's thread and leave on their own
        self._mean: list[float] | None = None  # the members' mean E(a_i, k) for k = 0..max_k, as last worked out
        self._stale = False  # a member changed since
        self._memo: dict[str, tuple[object, object]] = {}  # what -> (key, value) last computed (`once`)
        self.plain_probes = PlainProbes()
        self.hold = SwitchHold()
        self._plain: tuple[int, bool] | None = None  # (step, its answer) last given (`plain_now`)
        self._probed: int | None = None  # the engine step whose probe a member took (`take_probe`)
        self._drafting: bool | None = None  # whether the rates last chose drafting (`switched`)
        self._switches = 0  # since the last one logged
        self._logged_at = -math.inf
        self._charge_logged_at = -math.inf  # when a switch on kept off by its catch-up was last logged
        self.trial: tuple[int, int, int] | None = None  # (K, rows bucket, its first engine step): the trial of a K
        #                                                   never measured at that load under way (AdaptiveK._trial_k)
        self.tried: set[tuple[int, int]] = set()  # (K, rows bucket) tried once already

    def update(self, member: object, alpha: float | None, member_max_k: int) -> None:
        """The acceptance a member chooses K by now (None: not known yet, so it does not weigh in)."""
        with self._lock:
            if alpha is None:
                self._members.pop(id(member), None)
            else:
                self._members[id(member)] = (alpha, member_max_k)
            self._stale = True

    def leave(self, member: object) -> None:
        with self._lock:
            self._members.pop(id(member), None)
            self._stale = True

    def _current_mean(self) -> list[float] | None:
        """The members' mean E(a_i, k) for k = 0..max_k (None without members), worked out again if one changed."""
        if not self._stale:
            return self._mean
        with self._lock:
            # E(a, k) = 1 + a + ... + a^k, a member's flat past its max K: its terms summed as they grow, and its
            # flat part added once per max K below (every row, every step, at up to 16 Ks: a few hundred
            # microseconds a step on the host's path, done term by term)
            sums, flat = [0.0] * (self.max_k + 1), [0.0] * (self.max_k + 1)  # flat[k]: members whose E stops at k
            for alpha, member_max_k in self._members.values():
                top, total, term = min(member_max_k, self.max_k), 0.0, 1.0
                for k in range(top + 1):
                    total += term
                    sums[k] += total
                    term *= alpha
                flat[top] += total
            carried = 0.0
            for k in range(self.max_k + 1):
                sums[k] += carried
                carried += flat[k]
            self._mean = [s / len(self._members) for s in sums] if self._members else None
            self._stale = False
            return self._mean

    def once(self, what: str, key: object, compute: Callable[[], T]) -> T:
        """The members' `what` (their rates by k, their K, their step's costs observed) at `key` (an engine's step and a
        cap), computed by the first member that asks: they weigh the same mean and the same engine's costs, and every
        session computing them after every step costs the host time that grows with the batch."""
        cached = self._memo.get(what)
        if cached is not None and cached[0] == key:
            return cached[1]
        value = compute()
        self._memo[what] = (key, value)  # one reference: read unlocked
        return value

    def caught_up(self, steps: float) -> None:
        """A member's draft caught up before drafting, for `steps` plain steps' time (what `hold` weighs)."""
        with self._lock:
            self.hold.caught_up(steps)

    def take_probe(self, step: int) -> bool:
        """Whether the member asking is the first of engine step `step` to take the probe due then (the others decode
        plainly)."""
        with self._lock:
            if self._probed == step:
                return False
            self._probed = step
            return True

    def plain_now(self, step: int, drafting: bool) -> bool:
        """Whether the members' cycles completed at engine step `step` decode plainly (PlainProbes); every member of
        a step gets the first one's answer."""
        with self._lock:
            if self._plain is None or self._plain[0] != step:
                self._plain = (step, self.plain_probes.plain(step, drafting))
            return self._plain[1]

    @property
    def paused(self) -> bool:
        """Whether the rates last chose plain decoding (a phase that has not chosen yet is not paused)."""
        return self._drafting is False

    def switched(self, k: int, step: int) -> int:
        """The rates chose K = k at engine step `step`: how many times they turned drafting on or off since the last
        switch reported, once SWITCH_LOG_EVERY_S has passed since then (else 0). Each switch on costs every member's
        draft a catch-up on what it did not draft: a phase switching often is the first thing to look for where
        drafting loses (and what `hold` spaces out)."""
        drafting = k > 0
        with self._lock:
            if drafting != bool(self._drafting):  # a phase that has not chosen yet was not drafting
                self.hold.turned(drafting, step)
                self._switches += self._drafting is not None
            self._drafting = drafting
            if not self._switches or time.monotonic() - self._logged_at < SWITCH_LOG_EVERY_S:
                return 0
            switches, self._switches, self._logged_at = self._switches, 0, time.monotonic()
            return switches

    def should_log_charge(self) -> bool:
        """Whether a switch on that its catch-up's cost kept off is to be logged now (once per SWITCH_LOG_EVERY_S)."""
        with self._lock:
            if time.monotonic() - self._charge_logged_at < SWITCH_LOG_EVERY_S:
                return False
            self._charge_logged_at = time.monotonic()
            return True

    def tokens(self, k: int) -> float | None:
        """The members' mean E(a_i, k) (the sum's argmax over T(k) is the mean's); None without members."""
        mean = self._current_mean()
        return None if mean is None else mean[min(k, self.max_k)]


@dataclass
class ProbeSchedule:
    """When a cycle that would decode plainly tries k = 1 instead, to see whether the draft pays again.

    A probe after which drafting still does not pay (nothing accepted, or the draft too slow at this load)
    doubles the wait, and one that makes it pay resets it. Shared by a target's sessions (as the
    costs and the acceptance prior are), it counts their plain cycles in steps: a cycle of a batch of R
    rows is 1/R of a step. A probe costs the whole batch about the same at any R (every row is padded to
    the probe's verify, and the draft's catching up shares the device), so sixty-four sessions of a
    useless draft probe together as often in time as one session alone, and what they lose stays a small,
    fixed share of the steps instead of growing with the load."""

    first: int = 16  # steps at k = 0 before the first probe, and again after a probe that made drafting pay
    max_every: int = 512
    every: int = 0  # the current wait (0: `first`)
    since: float = 0.0  # plain steps since the last probe

    def due(self, share: float = 1.0) -> bool:
        """Count one plain cycle, `share` of a step (1 / rows in a batch); True when it should probe instead."""
        self.since += share
        if self.since < (self.every or self.first):
            return False
        self.since = 0.0
        return True

    def result(self, pays: bool, cost_steps: float = 0.0) -> None:
        """After a probe: `cost_steps` is what it cost beyond a plain cycle, in plain steps (its draft catching up
        on the tokens of the pause, and drafting). A draft that does not pay waits twice as long each time, and
        long enough that such probes take at most PROBE_SHARE of the steps: on a GPU a catch-up after a pause
        can cost ten steps, and probing every few dozen steps then loses more than a useless draft may."""
        if pays:
            self.every = self.first
            return
        self.every = max(min(self.max_every, 2 * (self.every or self.first)), math.ceil(cost_steps / PROBE_SHARE))


class CatchUp(NamedTuple):
    """A batch's drafts catching up on what they did not draft (a paused phase's price of turning drafting on)."""

    tokens_left: float  # the tokens each row may still commit, on average: what the gain of drafting is over
    tokens_behind: int  # the committed tokens the rows' drafts lack, in all
    seconds: float  # what forwarding them would take, at the seconds per token catch-ups took so far
    steps_since_join: int  # engine steps since a session last joined the batch

    def gain(self, plain_rate: float, drafting_rate: float) -> float:
        """The seconds drafting at `drafting_rate` tokens per second a row instead of `plain_rate` saves the rows over
        the tokens they have left."""
        return self.tokens_left * (1.0 / plain_rate - 1.0 / drafting_rate)

    def pays(self, plain_rate: float, drafting_rate: float) -> bool:
        """Whether drafting saves the rows more time (`gain`) than the catch-up holds them (every row waits for it).
        Only a draining batch is charged (no session joined for DRAINING_STEPS): while sessions join, drafting gains
        on theirs too, and a pause's catch-up grows with the pause, so a charge on the rows' tokens left would keep a
        batch under steady load from ever drafting again."""
        return (self.steps_since_join < DRAINING_STEPS or plain_rate <= 0 or drafting_rate <= 0
                or self.gain(plain_rate, drafting_rate) >= self.seconds)


class BatchLoad(Protocol):
    """What a batched engine (core.batching.BatchedRunner) tells load-aware K about the load: its costs are read at
    `load_rows`, the rows its choice will run under."""

    def batch_rows(self) -> int:
        """The driven sessions: the rows of a step (at least 1)."""
        ...

    def load_rows(self) -> int:
        """The rows the costs below are read at: the most driven sessions of the last few steps, or now."""
        ...

    def batch_verify_cost(self, k: int) -> float | None:
        """A step's cost if every row verified k drafts (in a padded batch one row's K sets every row's step)."""
        ...

    def batch_cycle_cost(self, k: int) -> float | None:
        """A session's measured cycle verifying k drafts, drafting between steps included (k = 0: or a hopeful
        estimate of it); None: not measured."""
        ...

    def batch_cycle_samples(self, k: int) -> int:
        """How many cycles `batch_cycle_cost(k)`'s figure averages (0: none, or not a measured cycle)."""
        ...

    def batch_cycle_elsewhere(self, k: int) -> float | None:
        """A cycle verifying k drafts never measured at this load, scaled from another load's measured cycles of k
        and of a K measured here (None: no load has both)."""
        ...

    def batch_steps(self) -> int | None:
        """Steps run so far: what a shared phase's rates are computed once per (None: every time)."""
        ...

    def batch_draft_step_cost(self) -> float | None:
        """One draft step's time over this load's rows, where the engine drafts for its sessions and timed one (else
        None)."""
        ...

    def batch_catch_up(self) -> CatchUp | None:
        """What turning drafting on for every row would cost its drafts first, where the engine drafts for its
        sessions and has timed a catch-up (else None)."""
        ...


PRIOR_TOKENS = 8.0  # a pooled prior weighs in a new session's acceptance as much as this many judged drafts, at most
PROBE_WEIGHT = 0.5  # EMA weight of a probe's draft costs
PROBE_SHARE = 0.03  # the most of the steps that probes of a draft that does not pay may cost


@dataclass
class AdaptiveK:
    """Chooses each cycle's K for one session.

    Costs come from `costs` (shared by a target's sessions when given); the session's own acceptance
    starts from `prior` (the acceptance pooled over earlier sessions, weighted as at most PRIOR_TOKENS drafts) when
    there is one, so a request speculates as well as its predecessors from its first cycle and stops
    speculating at once on a deployment where it does not pay. Every block is also added to `prior`."""

    max_k: int = 8
    initial_k: int = 4
    smoothing: float = 0.2  # EMA weight of a new cost measurement
    probes: ProbeSchedule | None = None  # shared between sessions, or this session's own
    costs: StepCosts | None = None  # shared between sessions, or made from `smoothing`
    prior: AcceptanceEstimate | None = None  # pooled over sessions; updated with every block
    acceptance: AcceptanceEstimate | None = None  # this session's (from the prior, when there is one)
    batch: BatchLoad | None = None  # the batched engine it runs in (load-aware K; probes are counted in its
    #                                 steps); None: alone
    phase: SharedPhase | None = None  # sessions drafted and verified together: K is chosen for all of them
    _probing: bool = False

    def __post_init__(self) -> None:
        if self.costs is None:
            self.costs = StepCosts(self.smoothing)
        if self.probes is None:
            self.probes = ProbeSchedule()
        if self.acceptance is None:
            self.acceptance = AcceptanceEstimate()
            if self.prior is not None and self.prior.judged > 0:  # never weighed above its own evidence: one
                # unlucky block read as eight kept the next sessions from drafting (docs/benchmarks.md, call v4)
                scale = min(1.0, PRIOR_TOKENS / self.prior.judged)
                self.acceptance.accepted, self.acceptance.judged = self.prior.accepted * scale, self.prior.judged * scale
        if self.phase is not None:
            self.phase.update(self, self.acceptance.hoped, self.max_k)

    @property
    def alpha(self) -> float | None:
        return self.acceptance.value

    def observe(self, k: int, accepted: int, verify_s: float, draft_s: float, round_trip_s: float | None = None,
                catch_up_s: float = 0.0) -> None:
        """Record one cycle: k drafts verified, `accepted` of them accepted, and its costs (`draft_s`: drafting
        its k tokens; `round_trip_s`: the rest of the wait for them, when the caller can tell them apart;
        `catch_up_s`: the draft's catching up on a pause before drafting, which only a probe's cost counts)."""
        # a probe comes after up to hundreds of plain cycles: what the draft costs now outweighs older figures
        weight = PROBE_WEIGHT if self._probing else None
        steps = self._phase_step()
        if steps is None:
            self.costs.observe(k, verify_s, draft_s, round_trip_s, weight)
        else:  # one step's figures, once: every member folding in one slow phase made it most of the draft's cost
            # per token, and drafting turned off for a ramp's phase (docs/benchmarks.md, call w1)
            self.phase.once(f"costs of k = {k}", steps,
                            lambda: self.costs.observe(k, verify_s, draft_s, round_trip_s, weight))
        if k > 0:
            self.acceptance.observe(k, accepted)
            if self.prior is not None:
                self.prior.observe(k, accepted)
            if self.phase is not None:
                self.phase.update(self, self.acceptance.hoped, self.max_k)
        caught_up = self.phase is not None and catch_up_s > 0
        plain = self._verify_costs()[0] if caught_up or self._probing else None  # a plain step, what both weigh in
        if caught_up and plain:
            self.phase.caught_up(catch_up_s / plain)
        if self._probing:
            self._probing = False
            cost_steps = (catch_up_s + draft_s + (round_trip_s or 0.0)) / plain if plain else 0.0
            self.probes.result(self._drafting_k(self._rates(self.max_k), held=False) > 0, cost_steps)

    def rate(self, k: int) -> float | None:
        return self._rates(k)[k]

    def close(self) -> None:
        """The session is over: its acceptance no longer weighs in the shared phase's K."""
        if self.phase is not None:
            self.phase.leave(self)

    def _rates(self, cap: int) -> list[float | None]:
        """Expected tokens per second of a cycle of each k <= cap: this session's, or per session of the shared
        phase it drafts in. A shared phase in an engine divides by the cycles measured at this load where there
        are: its verify, drafting and the host's work between steps as they add up (a K never measured is priced
        from the nearest that was, `_unmeasured_cost`, so it gets tried). A cycle drafting one more token costs
        at least a draft step more: a cheaper figure for it is noise or stale, and taken as is, a session whose
        drafts are never accepted drafts one token whenever its k = 1 cycles measure a hair under its plain ones (a
        tie is not enough: K is chosen by a hoped acceptance, a hair above 0 for such a draft). Of two neighbours
        that disagree so, the one averaging fewer cycles is the suspect: a K = 1 figure from a few probes raising a
        K = 2 cycle measured hundreds of times hid most of K = 2's margin over plain decoding (docs/benchmarks.md,
        call n2). A drafting K's own cycle measured over many (WELL_MEASURED) is not raised by a step, nor by a figure
        that is not measured so: a longer chain runs in the shadow of the host's work between steps where that work
        outlasts the draft's. At 64 rows on an H100 a K = 4 cycle measured 17.8 ms and K = 1's 16.2; raised from K = 1's
        a step a K, K = 4 lost to plain decoding where it gave ~17% more (call sd4). Priced too low, a K is chosen and
        so measured again; priced too high, it is not."""
        steps = self._phase_step()
        rates = self._compute_rates() if steps is None else self.phase.once("rates", steps, self._compute_rates)
        return rates[:cap + 1]

    def _phase_step(self) -> int | None:
        """The engine's step count, for a session of a shared phase in an engine that keeps one (else None): what
        the phase's rates and plain probes go by."""
        return self.batch.batch_steps() if self.batch is not None and self.phase is not None else None

    def _compute_rates(self) -> list[float | None]:
        """`_rates` for every k up to max_k (a cap cuts them: a k's rate does not depend on it)."""
        verify, ks = self._verify_costs(), range(self.max_k + 1)
        shared = self.phase is not None and self.phase.tokens(0) is not None
        hoped = self.acceptance.hoped
        tokens = [self.phase.tokens(k) if shared else None if hoped is None else expected_tokens(hoped, k) for k in ks]
        measured = shared and self.batch is not None
        cycles = [self.batch.batch_cycle_cost(k) if measured else None for k in ks]
        samples = [self.batch.batch_cycle_samples(k) if cycles[k] is not None else 0 for k in ks]
        step = self._draft_step(measured)
        costs = [self._unmeasured_cost(k, cycles, verify, step, measured) if cycles[k] is None else cycles[k]
                 for k in ks]
        for k in reversed(ks[1:]):  # the better-measured figure of two neighbours stands
            if costs[k] is not None and costs[k - 1] is not None and samples[k] > samples[k - 1] and costs[k] > step:
                costs[k - 1] = min(costs[k - 1], costs[k] - step)
        own = [cycles[k] is not None and samples[k] >= WELL_MEASURED for k in ks]
        floor = 0.0  # the dearest well-measured drafting cycle below k: a longer chain is no cheaper
        for k in ks[1:]:
            if costs[k] is None:
                continue
            if costs[k - 1] is not None and (k == 1 or not own[k]):  # a plain cycle's work (or K - 1's) and a step
                costs[k] = max(costs[k], costs[k - 1] + step)
            costs[k] = max(costs[k], floor)
            floor = max(floor, costs[k]) if own[k] else floor
        return [None if tokens[k] is None or costs[k] is None else tokens[k] / costs[k] if costs[k] > 0 else 0.0
                for k in ks]

    def _unmeasured_cost(self, k: int, cycles: list[float | None], verify: list[float | None], step: float,
                         measured: bool = False) -> float | None:
        """A cycle drafting k tokens, never measured at this load: from the nearest drafting K that was (the one below
        on a tie), by the draft steps and the verify's growth between them; with none (`measured`: in an engine that
        times cycles), from another load's cycle of k, scaled by a cycle both loads measured (`batch_cycle_elsewhere`);
        else the sum of its parts. The parts' price of a draft token (a phase's drafting time over its K) also holds
        the phase's fixed work, launching the verify and reading back, which the sum charges k times: next to a
        measured K it made the next K look dearer than one more step makes it, so the phase did not try it
        (docs/benchmarks.md, stop 47); where a batch entered a rows bucket with only plain cycles measured in it, it
        priced K = 4 at ~31 ms against the 16-18 ms measured there a second later, and drafting turned off (call sd4)."""
        near = [j for j in range(1, len(cycles)) if cycles[j] is not None and verify[j] is not None]
        if k > 0 and not near and measured and verify[k] is not None:
            elsewhere = self.batch.batch_cycle_elsewhere(k)
            if elsewhere is not None:
                return max(elsewhere, verify[k])
        if k == 0 or not near or verify[k] is None:
            return self.costs.cycle_cost(k, verify[k])
        j = min(near, key=lambda j: (abs(j - k), j))
        return max(cycles[j] + (k - j) * step + verify[k] - verify[j], verify[k])

    def _draft_step(self, measured: bool) -> float:
        """What one more draft token costs a cycle at least: the draft's step at this load where its engine timed one
        (`measured`), if less than the drafting time per token. A phase's drafting time over its K also holds the
        phase's fixed work (launching the verify, reading back), well above a step's cost, which raised a measured
        longer cycle over a shorter one's and kept the phase at the shorter K (docs/benchmarks.md, call w2)."""
        step = self.costs.draft_step_s or 0.0
        device = self.batch.batch_draft_step_cost() if measured else None
        return min(step, device) if step and device else step

    def _verify_costs(self) -> list[float | None]:
        """verify(k) for k = 0..max_k: the batch's at its rows now (else this target's own), never more than a
        larger k's. A forward of fewer tokens per row does less of the same work, so a larger figure for it is
        a stale or disturbed estimate (a fresh service's first cycles, a step timed beside the draft on a
        shared GPU); taken as is, drafting looks better than plain decoding even where nothing is accepted,
        and then plain decoding is never measured again."""
        costs = [self.batch.batch_verify_cost(k) if self.batch is not None else None for k in range(self.max_k + 1)]
        costs = [c if c is not None else self.costs.verify_cost(k) for k, c in enumerate(costs)]
        for k in reversed(range(self.max_k)):
            if costs[k] is not None and costs[k + 1] is not None:
                costs[k] = min(costs[k], costs[k + 1])
        return costs

    @staticmethod
    def _best(rates: list[float | None]) -> int:
        return max(range(len(rates)), key=lambda k: rates[k] or 0.0)  # the first best on ties

    def _drafting_k(self, rates: list[float | None], held: bool = True) -> int:
        """The best K by the rates, but a shared phase that decodes plainly turns drafting on only for a clear gain
        (SWITCH_ON_GAIN) and, `held`, once its hold allows (SwitchHold): each switch on costs every row's draft a
        catch-up on what it did not draft, which the rates leave out (`_best_k` weighs it against the gain), and a
        phase near the break-even switches on and off for noise (docs/benchmarks.md, call r5) or as its rows swing
        (call t2). A probe's result asks whether drafting pays, not when to turn it on: not `held`."""
        k = self._best(rates)
        if (k > 0 and self.phase is not None and self.phase.paused and rates[0] is not None
                and (rates[k] < SWITCH_ON_GAIN * rates[0] or held and not self.phase.hold.allows(self._phase_step()))):
            return 0
        return k

    def summary(self) -> str:
        """What the next choice weighs, for a log line."""
        ms = lambda v: "?" if v is None else f"{1e3 * v:.1f}"  # noqa: E731
        alpha = "?" if self.alpha is None else f"{self.alpha:.2f} (hoped {self.acceptance.hoped:.2f})"
        rates = " ".join(f"{k}:{r:.0f}" for k in range(self.max_k + 1) if (r := self.rate(k)) is not None)
        batch = self.batch
        verify = " ".join(f"{k}:{ms(batch.batch_verify_cost(k) if batch else None)}/{ms(self.costs.verify_cost(k))}"
                          for k in range(self.max_k + 1))
        cycles = (" ".join(f"{k}:{ms(c)}" for k in range(self.max_k + 1) if (c := batch.batch_cycle_cost(k)) is not None)
                  if batch is not None and self.phase is not None else "")
        step = batch.batch_draft_step_cost() if batch is not None and self.phase is not None else None
        return (f"acceptance {alpha}, draft {ms(self.costs.draft_step_s)} ms/token"
                f"{f' (a step {ms(step)})' if step is not None else ''} + {ms(self.costs.round_trip_s)} ms/cycle, "
                f"verify(k) batch/own ms {verify}, {f'measured cycles ms {cycles}, ' if cycles else ''}"
                f"tokens/s by k {rates or '?'}")

    def _step_share(self) -> float:
        """What one of this session's cycles is of an engine step: 1 / rows in a batch, 1 alone."""
        return 1.0 / max(1, self.batch.batch_rows()) if self.batch is not None else 1.0

    def drafting_pays(self) -> bool:
        """Whether drafting pays now (before any measurement: yes). Unlike `choose`, counts no probe: a new
        session asks it to start its draft paused."""
        rates = self._rates(self.max_k)
        return rates[0] is None or self._drafting_k(rates) > 0

    def choose(self, limit: int | None = None) -> int:
        """K for the next cycle (<= limit). A shared phase's member takes the phase's K at this engine step, cut to
        its limit (a row near its end drafts fewer): every row of every step asks, so what it pays is host time
        that grows with the batch, and the phase decides once per step for all of them (and its probe with it)."""
        cap = self.max_k if limit is None else min(self.max_k, limit)
        if cap <= 0:
            return 0
        steps = self._phase_step()
        if steps is not None:
            k, probe = self.phase.once("k", (steps, self.max_k), lambda: self._phase_k(steps))
            if probe and self.phase.take_probe(steps):  # one member probes for the step
                self._probing = True
                return 1
            return min(k, cap)
        k, plain = self._best_k(cap, None)
        if plain and self.probes.due(self._step_share()):  # speculation may pay again: measure
            self._probing = True
            k = 1
        return k

    def _phase_k(self, steps: int) -> tuple[int, bool]:
        """(The shared phase's K at engine step `steps`, whether one of its members probes instead): a plain step of
        the phase counts one step towards the shared probe schedule."""
        k, plain = self._best_k(self.max_k, steps)
        return k, plain and self.probes.due()

    def _best_k(self, cap: int, steps: int | None) -> tuple[int, bool]:
        """(K by the rates, whether that is plain decoding because drafting does not pay); `steps`: the engine step a
        shared phase decides for (its plain probes and its switches go by it), None alone. A paused phase turns
        drafting on only where the time it saves the rows over the tokens they have left covers their drafts'
        catch-up (`BatchLoad.batch_catch_up`): one turned on as its batch drained, and held every row for a catch-up of
        most rows' drafts with few tokens left to gain it back on (docs/benchmarks.md, call ap1)."""
        rates = self._rates(cap)
        if rates[0] is None:
            return min(self.initial_k, cap), False  # measure first
        k = weighed = self._drafting_k(rates)
        catch_up = self.batch.batch_catch_up() if steps is not None and k > 0 and self.phase.paused else None
        if catch_up is not None and not catch_up.pays(rates[0], rates[k]):
            k = 0
            if self.phase.should_log_charge():
                log.info("shared phase: drafting stays off at %s: %s", self._rows_text(),
                         self._charge_text(catch_up, rates, weighed))
        if steps is not None and k > 0 and not self.phase.paused:
            k = self._trial_k(rates, k, steps)
        if steps is not None and self.phase.plain_now(steps, k > 0):  # decoding plainly may pay again: measure
            return 0, False
        if steps is not None and (switches := self.phase.switched(k, steps)):
            held = self.phase.hold.until - steps
            log.info("shared phase: drafting %s at %s (%d switch%s since the last line%s): %s",
                     f"on, K = {k}" if k else "off", self._rows_text(), switches, "" if switches == 1 else "es",
                     f"; held off for {held} steps" if not k and held > 0 else
                     f"; {self._charge_text(catch_up, rates, k)}" if catch_up is not None else "", self.summary())
        return k, k == 0

    def _trial_k(self, rates: list[float | None], k: int, step: int) -> int:
        """The K a drafting phase runs at engine step `step`: `k`, the best by the rates, or a trial of a drafting K
        never measured at this load (fewer than TRIAL_SAMPLES cycles) priced within TRY_SHARE of it, the best-priced
        such first, each tried once per rows bucket, for at most TRIAL_STEPS steps or until its cycles are measured.
        An unmeasured K is priced from a measured neighbour by a draft step and the verify's growth, which misses what
        else a longer chain costs a cycle: at 16 rows on the H200 K = 2 was priced 9% under K = 4 and never run, where
        in process it made 1.37x target-only against K = 4's 1.28x (docs/benchmarks.md, calls vb1, lr1). Switching
        between drafting Ks costs no catch-up, so a trial costs a few steps at a slightly worse K at most; a phase
        decoding plainly tries none (turning drafting on does cost one). A trial runs its K to the end: re-priced each
        step, untried Ks took turns, and a step whose rows changed K times no cycle, so none got measured. A trial runs
        only while the rows now are in the bucket it is priced at: cycles are filed under the rows that lived them, so
        a trial during a dip measures nothing at its load and yet counts as tried there (call tr1)."""
        rows = bucket(self.batch.load_rows(), ROW_BUCKETS)
        if bucket(self.batch.batch_rows(), ROW_BUCKETS) != rows:  # a dip: no trial starts or goes on
            self.phase.trial = None
            return k
        trial = self.phase.trial
        if trial is not None:
            j, at, since = trial
            if at == rows and step - since < TRIAL_STEPS and j < len(rates) and self.batch.batch_cycle_samples(j) < TRIAL_SAMPLES:
                return j
            self.phase.trial = None
        untried = [j for j in range(1, len(rates)) if j != k and rates[j] is not None and (j, rows) not in self.phase.tried
                   and rates[j] >= TRY_SHARE * rates[k] and self.batch.batch_cycle_samples(j) < TRIAL_SAMPLES]
        if not untried:
            return k
        j = max(untried, key=lambda j: rates[j])
        self.phase.trial = (j, rows, step)
        self.phase.tried.add((j, rows))
        log.info("shared phase: trying K = %d at %s, never measured there (%.0f tokens/s by its price against K = %d's "
                 "%.0f): %s", j, self._rows_text(), rates[j], k, rates[k], self.summary())
        return j

    def _rows_text(self) -> str:
        """The rows now, and those the prices were read at where they differ, for a log line."""
        rows, load = self.batch.batch_rows(), self.batch.load_rows()
        return f"{rows} rows" + (f" (priced at {load})" if load != rows else "")

    @staticmethod
    def _charge_text(catch_up: CatchUp, rates: list[float | None], k: int) -> str:
        """What a switch on to K = k was weighed against, for a log line."""
        gain = catch_up.gain(rates[0], rates[k]) if rates[0] and rates[k] else 0.0
        return (f"its drafts' catch-up on {catch_up.tokens_behind} tokens ~{1e3 * catch_up.seconds:.1f} ms against "
                f"{1e3 * gain:.1f} ms gained by K = {k} over {catch_up.tokens_left:.0f} tokens a row left")


class KChooser(Protocol):
    """Decides the draft length of each cycle (FixedK, or AdaptiveK)."""

    def choose(self, limit: int | None = None) -> int: ...

    def drafting_pays(self) -> bool: ...

    def observe(self, k: int, accepted: int, verify_s: float, draft_s: float, round_trip_s: float | None = None,
                catch_up_s: float = 0.0) -> None: ...

    def close(self) -> None: ...


@dataclass
class FixedK:
    """Always k (at most the limit): a request that fixes K gets exactly K."""

    k: int

    def choose(self, limit: int | None = None) -> int:
        return self.k if limit is None else min(self.k, limit)

    def drafting_pays(self) -> bool:
        return self.k > 0

    def observe(self, k: int, accepted: int, verify_s: float, draft_s: float, round_trip_s: float | None = None,
                catch_up_s: float = 0.0) -> None:
        pass

    def close(self) -> None:
        pass
