"""The draft's side of one session: verdicts in, proposals out, optionally one block ahead.

Overlap (design.md §2): with `overlap`, the draft does not wait for the verdict on its last proposal.
It assumes every token it sent will be accepted, guesses the bonus token (it drafts k+1 tokens and
keeps the last as the guess) and drafts the next block on top. Each proposal is a claim "from position
`start` the sequence is ...", covering every token it assumed beyond what is committed, so the target
can check the whole assumption and drop a proposal built on a wrong guess. A wrong guess wastes draft
work; it never changes the output.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from specdec.errors import InvalidArgument, NotFound
from specdec.proposers import Feedback, Proposer


@dataclass
class SentProposal:
    id: int
    start: int  # absolute position of token_ids[0]: the committed length when it was drafted
    token_ids: list[int]  # the claim: assumed-but-uncommitted tokens + new drafts
    chain: list[int]  # full sequence the next block builds on: committed + claim + bonus guess
    draft_s: float  # the proposer's own drafting time (Proposal.draft_s)
    ahead: bool  # drafted on top of an earlier proposal, before its verdict
    source: str
    source_of: dict[int, str] = field(default_factory=dict)  # position -> proposer of that token
    q_of_token: dict[int, float] = field(default_factory=dict)  # position -> q(token) (sampling)
    rows: dict[int, torch.Tensor | None] = field(default_factory=dict)  # position -> q row [V]; None = one-hot

    def positions(self) -> range:
        return range(self.start, self.start + len(self.token_ids))

    def token_probs(self) -> list[float]:
        return [self.q_of_token[p] for p in self.positions()] if self.q_of_token else []

    def token_sources(self) -> list[str]:
        return [self.source_of[p] for p in self.positions()]


class DraftSession:
    def __init__(self, proposer: Proposer, prompt_ids: Sequence[int], k: int, overlap: bool,
                 greedy: bool = True, keep_recent: int = 8) -> None:
        self.proposer = proposer
        self.greedy = greedy  # sampling needs q for every claimed token (1.0 for one-hot proposers)
        self.committed: list[int] = list(prompt_ids)
        self.k = k
        self.overlap = overlap
        self.pending: list[SentProposal] = []  # sent and still consistent with `committed`
        self.recent: deque[SentProposal] = deque(maxlen=keep_recent)  # for row requests
        self._ids = itertools.count(1)

    @property
    def depth(self) -> int:
        """Proposals kept in flight: the one being verified, plus one drafted ahead with overlap."""
        return 2 if self.overlap else 1

    def start(self) -> list[SentProposal]:
        """Right after the prompt arrives: prefill while the target prefills, and wait for its first
        token. Drafting from the prompt alone would offer the target a shorter block than k on its first
        cycle, and then which block it verifies would depend on timing; waiting keeps every block
        exactly k tokens long, so a seeded request is reproducible, overlap on or off."""
        self.proposer.prefill(self.committed)
        return []

    def on_verdict(self, start: int, token_ids: Sequence[int], next_k: int = 0,
                   feedback: Feedback | None = None) -> Iterator[SentProposal]:
        """The target committed `token_ids` at `start`: update and drop broken assumptions now, then draft
        on lazily: each proposal is yielded as soon as it exists, so after a miss the target gets the
        block it needs without waiting for the one drafted ahead of it."""
        if start != len(self.committed):
            raise InvalidArgument("verdict.start", f"is {start} but the draft has {len(self.committed)} committed tokens")
        if not token_ids:
            raise InvalidArgument("verdict.token_ids", "a cycle commits at least one token")
        self.committed.extend(token_ids)
        if feedback is not None:
            self.proposer.observe(feedback)
        if next_k:
            self.k = max(0, next_k)  # -1: pause drafting
        self.pending = [p for p in self.pending if self._extends_committed(p)]
        return self._fill()

    def row(self, proposal_id: int, index: int) -> tuple[list[int], list[float]]:
        """q at token `index` of a recent proposal, as its exact support (ids, probabilities)."""
        for p in self.recent:
            if p.id == proposal_id:
                position = p.start + index
                if position not in p.rows:
                    raise InvalidArgument("row_request.index", f"proposal {proposal_id} has no row {index}")
                row = p.rows[position]
                if row is None:  # one-hot (n-gram token)
                    return [p.chain[position]], [1.0]
                support = row.nonzero().flatten()  # only the exact zeros top-k/top-p left are dropped
                return support.tolist(), row[support].tolist()
        raise NotFound(f"proposal {proposal_id} is no longer kept by the draft")

    def _extends_committed(self, p: SentProposal) -> bool:
        n = len(self.committed)
        agrees = p.token_ids[:n - p.start] == self.committed[p.start:n]
        return agrees and p.start + len(p.token_ids) > n

    def _fill(self) -> Iterator[SentProposal]:
        while len(self.pending) < self.depth and self.k > 0:
            parent = self.pending[-1] if self.pending else None
            proposal = self._draft(parent)
            self.pending.append(proposal)
            self.recent.append(proposal)
            yield proposal
            if len(proposal.chain) == len(parent.chain if parent else self.committed):
                break  # nothing new to propose (e.g. no n-gram match): don't spin

    def _draft(self, parent: SentProposal | None) -> SentProposal:
        n = len(self.committed)
        base = parent.chain if parent else self.committed
        drafted = self.proposer.propose(base, self.k + 1 if self.overlap else self.k)
        new = drafted.token_ids
        chain = list(base) + new
        claim = chain[n:len(base) + min(len(new), self.k)]  # the bonus guess (k+1-th token) is not claimed
        proposal = SentProposal(id=next(self._ids), start=n, token_ids=claim, chain=chain, draft_s=drafted.draft_s,
                                ahead=parent is not None, source=drafted.source)
        if parent is not None:  # the claim repeats the parent's unverified tokens: carry their details
            for mine, theirs in ((proposal.source_of, parent.source_of), (proposal.q_of_token, parent.q_of_token),
                                 (proposal.rows, parent.rows)):
                mine.update({p: v for p, v in theirs.items() if p >= n})
        for i, source in enumerate(drafted.sources()):
            position = len(base) + i
            proposal.source_of[position] = source
            if not self.greedy:
                one_hot = drafted.probs is None
                proposal.q_of_token[position] = 1.0 if one_hot else drafted.probs.token_prob(i)
                proposal.rows[position] = None if one_hot else drafted.probs.row(i)
        return proposal
