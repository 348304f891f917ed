"""Prompt lookup (n-gram): propose what followed the latest earlier occurrence of the current suffix."""

from __future__ import annotations

import time
from typing import NamedTuple, Sequence

from specdec.core.config import ProposerKind, SamplingParams
from specdec.core.proposal import Feedback, Proposal


class Score(NamedTuple):
    """A match length's hit counts before one prediction was scored (restored when its token is popped)."""

    n: int
    hits: float
    trials: float


class Undo(NamedTuple):
    """How to take one appended token back out of the index."""

    indexed: list[tuple[tuple[int, ...], int | None]]  # (n-gram, the end it had before; None: new)
    scored: Score | None  # the prediction scored when it was appended, if any


class Match(NamedTuple):
    tokens: list[int]  # what followed the earlier occurrence
    n: int  # the matched suffix's length (0: no match)


class NgramIndex:
    """Where each n-gram (n in [min_n, max_n]) of a token sequence last ended, kept incrementally.

    Appending a token costs O(max_n); rolling back costs O(max_n) per removed token (an undo log), so a
    lookup never rescans the sequence: per-step cost is flat in the sequence length.

    The index also scores itself: before each token is appended it checks what lookup would have
    predicted there, and keeps a decayed hit rate per match length n. That says how far lookup can be
    trusted on *this* text (code that repeats, a document being copied) without any feedback from the
    verifier, so it works the same with overlap, where the sequence holds an unverified tail.
    """

    TAIL = 64  # speculative decoding only ever rewrites the unverified tail (<= 2 * (MAX_K + 1) tokens)
    DECAY = 0.95  # hit-rate memory: about the last 20 predictions per match length

    def __init__(self, min_n: int = 1, max_n: int = 4) -> None:
        assert 1 <= min_n <= max_n, "need 1 <= min_n <= max_n"
        self.min_n, self.max_n = min_n, max_n
        self.tokens: list[int] = []
        self._last_end: dict[tuple[int, ...], int] = {}  # n-gram -> position just after its latest occurrence
        self._undo: list[Undo] = []
        self._hits = [0.0] * (max_n + 1)  # per match length: decayed count of correct predictions
        self._trials = [0.0] * (max_n + 1)  # per match length: decayed count of predictions
        self.operations = 0  # dictionary operations, for cost tests

    def sync(self, sequence: Sequence[int]) -> None:
        """Make the index describe `sequence`: roll back what differs, append what is new.

        Only the last TAIL tokens are compared (O(1) per step): callers pass committed tokens plus at
        most a short unverified tail, so anything earlier is known to agree.
        """
        limit = min(len(self.tokens), len(sequence))
        keep = max(0, limit - self.TAIL)
        while keep < limit and self.tokens[keep] == sequence[keep]:
            keep += 1
        while len(self.tokens) > keep:
            self._pop()
        for token in sequence[keep:]:
            self._push(token)

    def lookup(self, k: int) -> Match:
        """Up to k tokens that followed the most recent earlier occurrence of the longest matching
        suffix, and that suffix's length n (0 and [] when nothing matches)."""
        end = len(self.tokens)
        for n in range(min(self.max_n, end - 1), self.min_n - 1, -1):
            self.operations += 1
            start = self._last_end.get(tuple(self.tokens[end - n:]))
            if start is not None:
                return Match(self.tokens[start:start + k], n)
        return Match([], 0)

    def hit_rate(self, n: int) -> float:
        """How often a length-n match predicted the next token on this sequence lately (Beta(1,1) prior)."""
        return (self._hits[n] + 1.0) / (self._trials[n] + 2.0)

    def _push(self, token: int) -> None:
        predicted, n = self.lookup(1)
        scored = None
        if n:
            scored = Score(n, self._hits[n], self._trials[n])
            self._hits[n] = self._hits[n] * self.DECAY + (predicted[0] == token)
            self._trials[n] = self._trials[n] * self.DECAY + 1.0
        # Index the n-grams ending at the *previous* token, so the suffix never matches itself.
        end = len(self.tokens)
        undo = []
        for n in range(self.min_n, min(self.max_n, end) + 1):
            key = tuple(self.tokens[end - n:end])
            undo.append((key, self._last_end.get(key)))
            self._last_end[key] = end
            self.operations += 1
        self._undo.append(Undo(undo, scored))
        self.tokens.append(token)

    def _pop(self) -> None:
        self.tokens.pop()
        undo, scored = self._undo.pop()
        for key, previous in reversed(undo):
            if previous is None:
                del self._last_end[key]
            else:
                self._last_end[key] = previous
            self.operations += 1
        if scored is not None:
            n, self._hits[n], self._trials[n] = scored


class NgramProposer:
    """Prompt lookup: propose the tokens that followed the latest earlier occurrence of the current
    suffix (longest n first), in the prompt and the output. No model, no GPU; nothing when no match.
    Verified as a one-hot q, so sampling stays exact."""

    source = ProposerKind.NGRAM

    def __init__(self, min_n: int = 1, max_n: int = 4) -> None:
        self.index = NgramIndex(min_n, max_n)

    def propose(self, committed: Sequence[int], k: int) -> Proposal:
        self.index.sync(committed)  # catching up on the committed tokens is not drafting
        t0 = time.perf_counter()
        tokens = self.index.lookup(k).tokens
        return Proposal(start=len(committed), token_ids=tokens, probs=None, source=self.source,
                        draft_s=time.perf_counter() - t0)

    def prefill(self, prompt: Sequence[int]) -> None:
        self.index.sync(prompt)

    def close(self) -> None:
        pass

    def observe(self, feedback: Feedback) -> None:
        pass  # nothing to weigh: it always drafts the same way


class NgramFactory:
    def __init__(self, min_n: int = 1, max_n: int = 4) -> None:
        self.min_n, self.max_n = min_n, max_n

    def open(self, sampling: SamplingParams, seed: int) -> NgramProposer:
        return NgramProposer(self.min_n, self.max_n)
