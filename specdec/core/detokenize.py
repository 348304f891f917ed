"""Incremental detokenization with stop strings, shared by `specdec generate` and the orchestrator."""

from __future__ import annotations

from dataclasses import dataclass

REPLACEMENT_CHAR = "\ufffd"  # what a decoder emits for an incomplete UTF-8 sequence


class TextStream:
    """Turns token ids, pushed one at a time, into text deltas; stops at the first stop string.

    Text that could still grow into a stop string is held back, so a client never receives text that
    would later have to be taken back. Decoding reuses a short window of previous tokens
    (prefix/read offsets, as TGI and vLLM do) so each push costs O(1), not O(length).
    """

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()) -> None:
        self.tokenizer = tokenizer
        # A fast tokenizer's own decoder gives the same text (no clean-up asked for) at a fifth of the cost of
        # transformers' decode(), which the orchestrator pays twice per token of every session.
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self.stop = tuple(stop)
        self._holdback = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self.text = ""  # all text decoded so far (up to the stop string, once stopped)
        self._emitted = 0  # how much of self.text has been returned
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is now safe to show."""
        assert not self.stopped, "push after a stop string was found"
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self._prefix_offset:self._read_offset])
        full = self._decode(self.ids[self._prefix_offset:])
        if len(full) > len(prefix) and not full.endswith(REPLACEMENT_CHAR):
            self.text += full[len(prefix):]
            self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
        self._check_stop()
        safe = len(self.text) if self.stopped else max(self._emitted, len(self.text) - self._holdback)
        delta, self._emitted = self.text[self._emitted:safe], safe
        return delta

    def flush(self) -> str:
        """At the end of generation: release any held-back text."""
        delta, self._emitted = self.text[self._emitted:], len(self.text)
        return delta

    def _check_stop(self) -> None:
        if not self.stop:
            return
        window_start = max(0, self._emitted - self._holdback)
        hits = [i for s in self.stop if (i := self.text.find(s, window_start)) >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.stopped = True

    def _decode(self, ids: list[int]) -> str:
        if self._backend is not None:
            return self._backend.decode(ids, skip_special_tokens=True)
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


@dataclass
class TextEvent:
    """Text that became safe to show, and the token ids committed with it."""

    text: str
    token_ids: list[int]
