"""Long start-up work (compiling a model's shape classes, capturing its CUDA graphs: minutes on an empty kernel cache)
logged as it goes, so that a server's log does not go quiet for minutes between two lines."""

from __future__ import annotations

import logging
import time
from typing import Callable

PROGRESS_EVERY_S = 15.0  # at most one progress line this often


class LogProgress:
    """Counts the items of one piece of work and logs "what: i of n (item), s elapsed" when an item starts at least
    `every_s` after the last line (or the start): nothing for work shorter than that."""

    def __init__(self, log: logging.Logger, what: str, total: int, every_s: float = PROGRESS_EVERY_S,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.log, self.what, self.total, self.every_s, self.clock = log, what, total, every_s, clock
        self.started = self.logged = clock()
        self.done = 0

    def item(self, label: str) -> None:
        """Item `label` starts (the `done + 1`-th of `total`)."""
        now = self.clock()
        if now - self.logged >= self.every_s:
            self.log.info("%s: %d of %d (%s), %.0f s so far", self.what, self.done + 1, self.total, label,
                          now - self.started)
            self.logged = now
        self.done += 1
