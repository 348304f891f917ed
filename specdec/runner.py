"""ModelRunner: the only place that calls a model's forward.

Each session owns one slot of a static KV cache (HF `StaticCache`, preallocated to `max_len`) and a
length pointer. Rolling back is O(1): move the pointer. Stale entries past it are overwritten by the
next write and never attended to, because attention is causal over explicit positions.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Sequence

import torch
from transformers import StaticCache

from specdec.errors import InvalidArgument, ResourceExhausted


@dataclass
class KVSession:
    """One sequence's slot in a runner's KV cache."""

    id: int
    slot: int
    tokens: list[int] = field(default_factory=list)  # ids whose keys/values the cache holds, in order

    @property
    def length(self) -> int:
        return len(self.tokens)


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix; O(1) list compares in the usual append-only case."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # invariant: a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class ModelRunner:
    """Holds a model and the KV caches of up to `max_sessions` sequences of up to `max_len` tokens."""

    def __init__(self, model: torch.nn.Module, *, max_len: int = 2048, max_sessions: int = 8) -> None:
        self.model = model.eval()
        self.config = model.config
        self.device = next(model.parameters()).device
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.max_len = max_len
        self.max_sessions = max_sessions
        self._caches: dict[int, StaticCache] = {}
        self._free_slots = list(range(max_sessions))
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # one forward at a time: the model and caches are shared state

    @property
    def free_slots(self) -> int:
        return len(self._free_slots)

    def open(self) -> KVSession:
        """Take a free cache slot for a new sequence."""
        with self._lock:
            if not self._free_slots:
                raise ResourceExhausted(f"all {self.max_sessions} KV cache slots are in use")
            slot = self._free_slots.pop()
            if slot not in self._caches:
                self._caches[slot] = StaticCache(config=self.config, max_cache_len=self.max_len)
            return KVSession(id=next(self._ids), slot=slot)

    def close(self, session: KVSession) -> None:
        """Give the slot back; safe to call twice."""
        with self._lock:
            if session.slot >= 0 and session.slot not in self._free_slots:
                self._set_length(session.slot, 0)
                self._free_slots.append(session.slot)
            session.slot = -1
            session.tokens = []

    def truncate(self, session: KVSession, length: int) -> None:
        """Roll the cache back to its first `length` tokens in O(1): only the pointer moves."""
        assert 0 <= length <= session.length, f"cannot truncate {session.length} tokens to {length}"
        del session.tokens[length:]
        self._set_length(session.slot, length)

    def extend(self, session: KVSession, ids: Sequence[int], keep: int = 1) -> torch.Tensor:
        """Make the cache hold exactly `ids` and return the logits of its last `keep` positions.

        The longest prefix of `ids` already cached is reused (always forwarding at least the last
        `keep` tokens, whose logits are wanted), so a caller can pass its whole sequence every time
        and pays only for the new tokens: one forward pass.
        Returns float32 logits [keep, V]; row j predicts the token after ids[len(ids) - keep + j].
        """
        assert 1 <= keep <= len(ids), f"keep={keep} must be in [1, {len(ids)}]"
        if len(ids) > self.max_len:
            raise InvalidArgument("prompt", f"sequence of {len(ids)} tokens exceeds the context of {self.max_len}")
        reuse = min(common_prefix_len(session.tokens, ids), len(ids) - keep)
        self.truncate(session, reuse)
        return self._forward(session, ids[reuse:], keep)

    def _forward(self, session: KVSession, new_ids: Sequence[int], keep: int) -> torch.Tensor:
        start = session.length
        input_ids = torch.tensor([list(new_ids)], dtype=torch.long, device=self.device)  # [1, n]
        position_ids = torch.arange(start, start + len(new_ids), device=self.device).unsqueeze(0)  # [1, n]
        with self._lock, torch.inference_mode():
            cache = self._caches[session.slot]
            out = self.model(input_ids=input_ids, position_ids=position_ids, past_key_values=cache,
                             use_cache=True, logits_to_keep=keep)
        session.tokens.extend(new_ids)
        return out.logits[0].float()  # [keep, V]

    def _set_length(self, slot: int, length: int) -> None:
        for layer in self._caches[slot].layers:
            if isinstance(layer.cumulative_length, torch.Tensor):
                layer.cumulative_length.fill_(length)
            else:
                layer.cumulative_length = length
