"""Admission to a runner's KV-cache slots: a bounded FIFO queue in front of a fixed number of slots.

A request beyond the slots waits its turn instead of being refused at once (many clients at once must
all be served), but the wait is bounded twice: in length (`queue_size` waiting at most) and in time
(`wait_s`). Beyond either it is refused with RESOURCE_EXHAUSTED, never queued without limit.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import NamedTuple

from specdec.core.errors import ResourceExhausted, Unavailable

POLL_S = 0.05  # how often a waiter whose caller may go away looks at its cancellation


class Admitted(NamedTuple):
    index: int  # the slot
    queued_s: float  # how long the caller waited for it


class SlotQueue:
    """Hands out slot indices in arrival order."""

    def __init__(self, count: int, queue_size: int = 0, wait_s: float = 0.0) -> None:
        if count < 1 or queue_size < 0 or wait_s < 0:
            raise ValueError(f"count={count} must be >= 1, queue_size={queue_size} and wait_s={wait_s} >= 0")
        self.count, self.queue_size, self.wait_s = count, queue_size, wait_s
        self._free = list(range(count - 1, -1, -1))  # pop() gives the lowest index first
        self._waiting: deque[object] = deque()
        self._cond = threading.Condition()

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def acquire(self, cancelled: threading.Event | None = None) -> Admitted:
        """A free slot: at once if one is free and nobody waits, else after those ahead in the queue."""
        t0 = time.monotonic()
        with self._cond:
            if self._free and not self._waiting:
                return Admitted(self._free.pop(), 0.0)
            if len(self._waiting) >= self.queue_size:
                raise ResourceExhausted(f"all {self.count} KV cache slots are in use and "
                                        f"{len(self._waiting)} requests already wait for one (queue size {self.queue_size})")
            ticket = object()
            self._waiting.append(ticket)
            try:
                deadline = t0 + self.wait_s
                while not (self._free and self._waiting[0] is ticket):
                    if cancelled is not None and cancelled.is_set():
                        raise Unavailable("cancelled while waiting for a KV cache slot")
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise ResourceExhausted(f"no KV cache slot of {self.count} became free within "
                                                f"{self.wait_s:g}s (queue timeout)")
                    self._cond.wait(remaining if cancelled is None else min(remaining, POLL_S))
                index = self._free.pop()
            finally:
                self._waiting.remove(ticket)
                self._cond.notify_all()  # the next in line may take a slot that is still free
            return Admitted(index, time.monotonic() - t0)

    def release(self, index: int) -> None:
        """Give a slot back; safe to call twice."""
        with self._cond:
            if index not in self._free:
                self._free.append(index)
                self._free.sort(reverse=True)  # still lowest first: a batched runner's rows stay a short prefix
                self._cond.notify_all()
