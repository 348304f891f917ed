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
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import torch

from specdec.errors import InvalidArgument, NotFound
from specdec.proposers import Proposer


@dataclass
class SentProposal:
    id: int
    start: int  # absolute position of token_ids[0]: the committed length when it was drafted
    token_ids: list[int]  # the claim: assumed-but-uncommitted tokens + new drafts
    chain: list[int]  # full sequence the next block builds on: committed + claim + bonus guess
    draft_s: float
    ahead: bool  # drafted on top of an earlier proposal, before its verdict
    source: str
    q_of_token: dict[int, float] = field(default_factory=dict)  # position -> q(token) (sampling)
    rows: dict[int, torch.Tensor] = field(default_factory=dict)  # position -> q row [V] (sampling)

    def token_probs(self) -> list[float]:
        return [self.q_of_token[self.start + i] for i in range(len(self.token_ids))] if self.q_of_token else []


class DraftSession:
    def __init__(self, proposer: Proposer, prompt_ids: Sequence[int], k: int, overlap: bool,
                 keep_recent: int = 8) -> None:
        self.proposer = proposer
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

    def on_verdict(self, start: int, token_ids: Sequence[int], next_k: int = 0) -> list[SentProposal]:
        """The target committed `token_ids` at `start`: update, drop broken assumptions, draft on."""
        if start != len(self.committed):
            raise InvalidArgument("verdict.start", f"is {start} but the draft has {len(self.committed)} committed tokens")
        if not token_ids:
            raise InvalidArgument("verdict.token_ids", "a cycle commits at least one token")
        self.committed.extend(token_ids)
        if next_k:
            self.k = next_k
        self.pending = [p for p in self.pending if self._extends_committed(p)]
        return self._fill()

    def row(self, proposal_id: int, index: int) -> torch.Tensor:
        """q at token `index` of a recent proposal (the target asks after a rejection)."""
        for p in self.recent:
            if p.id == proposal_id:
                position = p.start + index
                if position not in p.rows:
                    raise InvalidArgument("row_request.index", f"proposal {proposal_id} has no row {index}")
                return p.rows[position]
        raise NotFound(f"proposal {proposal_id} is no longer kept by the draft")

    def _extends_committed(self, p: SentProposal) -> bool:
        n = len(self.committed)
        agrees = p.token_ids[:n - p.start] == self.committed[p.start:n]
        return agrees and p.start + len(p.token_ids) > n

    def _fill(self) -> list[SentProposal]:
        sent = []
        while len(self.pending) < self.depth and self.k > 0:
            parent = self.pending[-1] if self.pending else None
            proposal = self._draft(parent)
            self.pending.append(proposal)
            self.recent.append(proposal)
            sent.append(proposal)
            if len(proposal.chain) == len(parent.chain if parent else self.committed):
                break  # nothing new to propose (e.g. no n-gram match): don't spin
        return sent

    def _draft(self, parent: SentProposal | None) -> SentProposal:
        n = len(self.committed)
        base = parent.chain if parent else self.committed
        t0 = time.perf_counter()
        drafted = self.proposer.propose(base, self.k + 1 if self.overlap else self.k)
        draft_s = time.perf_counter() - t0
        new = drafted.token_ids
        chain = list(base) + new
        claim = chain[n:len(base) + min(len(new), self.k)]  # the bonus guess (k+1-th token) is not claimed
        proposal = SentProposal(id=next(self._ids), start=n, token_ids=claim, chain=chain, draft_s=draft_s,
                                ahead=parent is not None, source=drafted.source)
        if drafted.probs is not None:
            if parent is not None:
                proposal.q_of_token.update({p: q for p, q in parent.q_of_token.items() if p >= n})
                proposal.rows.update({p: r for p, r in parent.rows.items() if p >= n})
            for i in range(len(new)):
                proposal.q_of_token[len(base) + i] = drafted.probs.token_prob(i)
                proposal.rows[len(base) + i] = drafted.probs.row(i)
        return proposal
