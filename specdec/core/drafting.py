"""The draft's side of one session: verdicts in, proposals out, optionally one block ahead.

Overlap (design.md §2): with `overlap`, the draft does not wait for the verdict on its last proposal.
It drafts k+1 tokens (the last is its guess of the bonus token) and, while the target verifies, drafts
the next block for the outcomes it expects:
- plain: only "everything accepted, bonus as guessed";
- with `predraft` (a proposer that drafts branches in one pass, on a GPU): every outcome "j tokens
  accepted, then the target's token is the draft's runner-up at that position", for j = 0..k, plus
  the guessed bonus: k+2 branches, sent together in one message (policy `when-it-pays`: only while the
  target is expected to wait less for them than for the plain guess, `PredraftCosts`).
Each proposal is a claim "from position `start` the sequence is ...", covering every token it assumed
beyond what is committed, so the target can check the whole assumption, take the branch the verdict
came true for and drop the rest. A wrong guess wastes draft work; it never changes the output.
Runner-up branches are pre-drafted for greedy sessions only: the root of such a branch is not a sample
from q, so it must never be verified as a sampled draft token.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterator, Sequence

import torch

from specdec.core.config import MAX_K, ProposerKind, SamplingParams, SpeculationConfig, check_token_ids
from specdec.core.errors import InvalidArgument, NotFound
from specdec.core.placement import Placement
from specdec.core.proposal import BranchProposer, Feedback, Proposal, Proposer

RETRY_BRANCHES_EVERY = 16  # blocks drafted with the plain guess before a branch pass is timed again


class Predraft(str, Enum):
    """What an operator asks for (`--predraft`)."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


class PredraftPolicy(Enum):
    """What a draft does."""

    NEVER = "never"
    WHEN_PAYS = "when-it-pays"  # per block, by the target's expected wait (PredraftCosts)
    ALWAYS = "always"


def predraft_policy(choice: Predraft, device: torch.device | None) -> PredraftPolicy:
    """`on` always; `off` never; `auto`: on a GPU, where a forward of k+2 branch rows costs about what one
    row does, and only while branches are expected to make the target wait less than the plain guess
    (`PredraftCosts`); never on a CPU, where each row costs its own compute and the branches would delay
    the block the target waits for."""
    if choice == Predraft.AUTO:
        on_gpu = device is not None and device.type == "cuda"
        return PredraftPolicy.WHEN_PAYS if on_gpu else PredraftPolicy.NEVER
    return PredraftPolicy.ALWAYS if choice == Predraft.ON else PredraftPolicy.NEVER


@dataclass
class HitRate:
    """How often blocks drafted ahead were used, counted with decay (recent blocks weigh most)."""

    hits: float = 0.0
    blocks: float = 0.0

    DECAY = 0.95

    def observe(self, hit: bool) -> None:
        self.hits = self.hits * self.DECAY + hit
        self.blocks = self.blocks * self.DECAY + 1

    @property
    def value(self) -> float:
        """The rate with a uniform prior: 1/2 before any block."""
        return (self.hits + 1) / (self.blocks + 2)


@dataclass
class PredraftCosts:
    """Branches or the plain guess for the next block drafted ahead: whichever the target is expected to
    wait for less. Per block it waits for whatever of the pass outlasts its verify, plus, on a miss, k
    fresh draft steps:
        wait = max(0, pass - verify) + (1 - hit rate) * k * step.
    The branch pass is wider (k+2 rows per step) and hits more often (the plain guess is one of its
    branches, so both hit rates are counted while branches are drafted). With a small target the plain
    guess wins (its pass already outlasts the verify, and branches add little to its hit rate); with a
    large one branches win even when their pass slightly outlasts the verify (docs/benchmarks.md, two
    H200s)."""

    branch_s: float | None = None  # the last branch pass
    step_s: float | None = None  # one draft step of one row (from the last chain drafted)
    verify_s: float | None = None  # the target's last verify, from its feedback
    branch_hits: HitRate = field(default_factory=HitRate)  # any branch used
    plain_hits: HitRate = field(default_factory=HitRate)  # the plain guess's branch used
    plain_blocks: int = 0  # plain blocks drafted ahead since the last branch pass

    def branches_pay(self, k: int) -> bool:
        if self.branch_s is None or self.step_s is None or self.verify_s is None:
            return True  # not all timed yet: draft branches, which times them and counts both hit rates
        if self.plain_blocks >= RETRY_BRANCHES_EVERY:
            return True  # re-time the branch pass and re-count its hit rate now and then
        h_branch, h_plain = self.branch_hits.value, self.plain_hits.value
        miss = k * self.step_s
        wait_branch = max(0.0, self.branch_s - self.verify_s) + (1 - h_branch) * miss
        wait_plain = max(0.0, (k + 1) * self.step_s - self.verify_s) + (1 - h_plain) * miss
        return wait_branch < wait_plain


@dataclass
class SentProposal:
    id: int
    start: int  # absolute position of token_ids[0]: the committed length when it was drafted
    token_ids: list[int]  # the claim: assumed-but-uncommitted tokens + new drafts
    chain: list[int]  # full sequence the next block builds on: committed + claim + bonus guess
    draft_s: float  # the proposer's own drafting time (Proposal.draft_s)
    catch_up_s: float  # its catching up before drafting (Proposal.catch_up_s)
    ahead: bool  # drafted on top of an earlier proposal, before its verdict
    source: ProposerKind
    source_of: dict[int, ProposerKind] = field(default_factory=dict)  # position -> proposer of that token
    q_of_token: dict[int, float] = field(default_factory=dict)  # position -> q(token) (sampling)
    rows: dict[int, torch.Tensor | None] = field(default_factory=dict)  # position -> q row [V]; None = one-hot
    runner_ups: dict[int, int] = field(default_factory=dict)  # position -> the draft's likeliest other token
    expanded: bool = False  # the next block for its outcomes has been drafted (overlap)

    def positions(self) -> range:
        return range(self.start, self.start + len(self.token_ids))

    def token_probs(self) -> list[float]:
        return [self.q_of_token[p] for p in self.positions()] if self.q_of_token else []

    def token_sources(self) -> list[ProposerKind]:
        return [self.source_of[p] for p in self.positions()]


@dataclass(frozen=True)
class DraftStart:
    """Opens a session on a draft."""

    session_id: str
    prompt_ids: list[int]
    sampling: SamplingParams
    seed: int
    k: int  # draft tokens per proposal
    overlap: bool  # draft the next block while the target verifies this one
    target_placement: Placement | None = None  # where the target computes (None: not said)
    paused: bool = False  # the target's K is 0 for now: no prefill until a verdict resumes drafting

    def validate(self, vocab_size: int | None) -> "DraftStart":
        if not self.prompt_ids:
            raise InvalidArgument("start.prompt_ids", "must not be empty")
        check_token_ids("start.prompt_ids", self.prompt_ids, vocab_size)
        SpeculationConfig(k=self.k).validate("start.k")
        self.sampling.validate()
        return self


@dataclass(frozen=True)
class Verdict:
    """What the target committed in one cycle, and how the block it verified fared."""

    start: int  # absolute position of token_ids[0]
    token_ids: list[int]
    next_k: int = 0  # K from now on; 0 keeps it, -1 pauses drafting
    feedback: Feedback | None = None


@dataclass(frozen=True)
class RowRequest:
    """The target asks for q at one proposed position (sampling, after a rejection)."""

    proposal_id: int
    index: int


@dataclass(frozen=True)
class Row:
    """q at one proposed position, exactly: its support."""

    proposal_id: int
    index: int
    ids: list[int]
    probs: list[float]


class DraftSession:
    def __init__(self, proposer: Proposer, prompt_ids: Sequence[int], k: int, overlap: bool,
                 greedy: bool = True, keep_recent: int = 8, predraft: PredraftPolicy = PredraftPolicy.NEVER,
                 vocab_size: int | None = None, paused: bool = False) -> None:
        """`paused`: drafting starts paused (the target's K is 0); a verdict with next_k > 0 resumes it at
        that K."""
        self.proposer = proposer
        self.vocab_size = vocab_size  # verdict ids are checked against it (None: only >= 0)
        self.greedy = greedy  # sampling needs q for every claimed token (1.0 for one-hot proposers)
        self.committed: list[int] = list(prompt_ids)
        self.k = 0 if paused else k
        self.overlap = overlap
        self.predraft = (overlap and predraft != PredraftPolicy.NEVER and greedy
                         and isinstance(proposer, BranchProposer))
        self.when_pays = predraft == PredraftPolicy.WHEN_PAYS
        # While drafting is paused (adaptive K at 0), cache each verdict's tokens anyway, so the probe
        # that resumes drafting costs one draft step instead of one long catch-up forward the target
        # waits for. Only where the draft's forwards are free (pre-drafting on: its own GPU).
        self.keep_up = overlap and predraft != PredraftPolicy.NEVER
        self.costs = PredraftCosts()
        self._ahead: list[SentProposal] | None = None  # last drafted ahead; its last is the plain guess
        self.pending: list[SentProposal] = []  # sent and still consistent with `committed`
        self.recent: deque[SentProposal] = deque(maxlen=keep_recent)  # for row requests
        self._ids = itertools.count(1)

    def start(self) -> None:
        """Right after the prompt arrives: prefill while the target prefills, and wait for its first
        token. Drafting from the prompt alone would offer the target a shorter block than k on its first
        cycle, and then which block it verifies would depend on timing; waiting keeps every block
        exactly k tokens long, so a seeded request is reproducible, overlap on or off. A session that starts
        paused prefills nothing (unless its forwards are free, `keep_up`): under load most sessions never
        draft, and the verdict that resumes one catches it up in one forward."""
        if self.k > 0 or self.keep_up:
            self.proposer.prefill(self.committed)

    def on_verdict(self, verdict: Verdict) -> Iterator[list[SentProposal]]:
        """The target committed tokens: update and drop broken assumptions now, then draft on lazily: each
        message's proposals are yielded as soon as they exist, so after a miss the target gets the block
        it needs without waiting for the ones drafted ahead of it."""
        start, token_ids, next_k, feedback = verdict.start, verdict.token_ids, verdict.next_k, verdict.feedback
        if start != len(self.committed):
            raise InvalidArgument("verdict.start", f"is {start} but the draft has {len(self.committed)} committed tokens")
        if not token_ids:
            raise InvalidArgument("verdict.token_ids", "a cycle commits at least one token")
        check_token_ids("verdict.token_ids", token_ids, self.vocab_size)
        if not -1 <= next_k <= MAX_K:
            raise InvalidArgument("verdict.next_k", f"must be in [-1, {MAX_K}] (-1 pauses, 0 keeps K), got {next_k}")
        self.committed.extend(token_ids)
        if feedback is not None:
            self.proposer.observe(feedback)
            if feedback.verify_s > 0:
                self.costs.verify_s = feedback.verify_s
        if next_k:
            self.k = max(0, next_k)  # -1: pause drafting
        self.pending = [p for p in self.pending if self._extends_committed(p)]
        if self._ahead is not None:  # the verdict on the block the last ahead-drafting was for
            ahead = self._ahead
            if len(ahead) > 1:
                self.costs.branch_hits.observe(any(p is q for p in ahead for q in self.pending))
            self.costs.plain_hits.observe(any(ahead[-1] is q for q in self.pending))
            self._ahead = None
        return self._fill()

    def row(self, request: RowRequest) -> Row:
        """q at token `index` of a recent proposal, as its exact support (ids, probabilities)."""
        for p in self.recent:
            if p.id == request.proposal_id:
                position = p.start + request.index
                if position not in p.rows:
                    raise InvalidArgument("row_request.index", f"proposal {p.id} has no row {request.index}")
                row = p.rows[position]
                if row is None:  # one-hot (n-gram token)
                    return Row(p.id, request.index, [p.chain[position]], [1.0])
                support = row.nonzero().flatten()  # only the exact zeros top-k/top-p left are dropped
                return Row(p.id, request.index, support.tolist(), row[support].tolist())
        raise NotFound(f"proposal {request.proposal_id} is no longer kept by the draft")

    def _extends_committed(self, p: SentProposal) -> bool:
        n = len(self.committed)
        agrees = p.token_ids[:n - p.start] == self.committed[p.start:n]
        return agrees and p.start + len(p.token_ids) > n

    def _fill(self) -> Iterator[list[SentProposal]]:
        """Draft a fresh block when nothing sent is still usable; with overlap, then draft ahead for the
        outcomes of the one block in flight (several in flight: wait for the verdict to pick one)."""
        if self.k <= 0:
            if self.keep_up:
                self.proposer.prefill(self.committed)
            return
        if not self.pending:
            fresh = self._draft(None)
            yield self._send([fresh])
            if not fresh.token_ids:
                return  # nothing to propose (e.g. no n-gram match): don't draft ahead of nothing
        if not self.overlap or len(self.pending) != 1 or self.pending[0].expanded:
            return
        parent = self.pending[0]
        parent.expanded = True
        ahead = self._branches(parent) if self._branches_pay() else None
        if ahead is None:
            self.costs.plain_blocks += 1
            ahead = [self._draft(parent)]
            if len(ahead[0].chain) == len(parent.chain):
                return  # nothing new to propose: don't send a copy of the parent
        self._ahead = ahead  # branches end with the plain guess's own branch
        yield self._send(ahead)

    def _branches_pay(self) -> bool:
        return self.predraft and (not self.when_pays or self.costs.branches_pay(self.k))

    def _send(self, proposals: list[SentProposal]) -> list[SentProposal]:
        self.pending += proposals
        self.recent.extend(proposals)
        return proposals

    def _draft(self, parent: SentProposal | None) -> SentProposal:
        base = parent.chain if parent else self.committed
        drafted = self.proposer.propose(base, self.k + 1 if self.overlap else self.k)
        if drafted.token_ids:
            self.costs.step_s = drafted.draft_s / len(drafted.token_ids)
        return self._sent(drafted, base, parent)

    def _branches(self, parent: SentProposal) -> list[SentProposal] | None:
        """The next block for each likely outcome of `parent`, drafted in one pass (greedy only): the
        target rejects at a drafted position and takes the draft's runner-up there, or accepts all and
        its bonus is the guess or the guess's runner-up."""
        chain, n = parent.chain, len(self.committed)
        roots = [(p, token) for p, token in sorted(parent.runner_ups.items()) if p >= n]
        roots.append((len(chain) - 1, chain[-1]))  # everything accepted, bonus as guessed
        if len(roots) < 2:
            return None  # no runner-ups known (e.g. an n-gram block): only the plain guess
        drafted = self.proposer.propose_branches(chain, roots, self.k + 1)
        if drafted is None:
            return None
        self.costs.branch_s, self.costs.plain_blocks = drafted[0].draft_s, 0
        return [self._sent(d, chain[:p] + [token], parent) for (p, token), d in zip(roots, drafted)]

    def _sent(self, drafted: Proposal, base: list[int], parent: SentProposal | None) -> SentProposal:
        """Record a drafted block on top of `base` (which may hold assumed tokens) as a claim from the
        committed length: the k+1-th drafted token, the bonus guess, is not claimed."""
        n = len(self.committed)
        new = drafted.token_ids
        chain = list(base) + new
        claim = chain[n:len(base) + min(len(new), self.k)]
        proposal = SentProposal(id=next(self._ids), start=n, token_ids=claim, chain=chain, draft_s=drafted.draft_s,
                                catch_up_s=drafted.catch_up_s,
                                ahead=parent is not None, source=drafted.source)
        if parent is not None:  # the claim repeats the parent's unverified tokens: carry their details
            same = [p for p in range(n, min(len(base), len(parent.chain))) if base[p] == parent.chain[p]]
            for mine, theirs in ((proposal.source_of, parent.source_of), (proposal.q_of_token, parent.q_of_token),
                                 (proposal.rows, parent.rows)):
                mine.update({p: theirs[p] for p in same if p in theirs})
            for p in range(n, len(base)):
                proposal.source_of.setdefault(p, drafted.source)  # a branch's root: the draft's runner-up
        for i, source in enumerate(drafted.sources()):
            position = len(base) + i
            proposal.source_of[position] = source
            if drafted.runner_ups is not None:
                proposal.runner_ups[position] = drafted.runner_ups[i]
            if not self.greedy:
                one_hot = drafted.probs is None
                proposal.q_of_token[position] = 1.0 if one_hot else drafted.probs.token_prob(i)
                proposal.rows[position] = None if one_hot else drafted.probs.row(i)
        return proposal
