"""Where a serving process runs its torch work: CPU models on one dedicated thread.

Why one thread: PyTorch's OpenMP runtime on Linux (libgomp) keeps a team of worker threads for every
thread that has ever run a parallel region, and once it manages more threads than there are CPUs it
stops spinning between regions (a throttled spin count), so every one of the
thousands of small parallel regions in a CPU forward pays a futex wake-up. A gRPC server runs each
stream on whichever pool thread is free, and models load on the main thread, so a CPU service used to
have a team per thread that ever computed, and its forwards ran measurably slower than the same forwards
in one thread (docs/benchmarks.md, "CPU: services vs in-process"). Loading and every forward on one
thread keep a single team.

On CUDA the forwards launch GPU work and run no CPU parallel regions, so work runs on the caller's
thread there: a hop to another thread would only add latency to every cycle.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, TypeVar

import torch

T = TypeVar("T")
_DONE = object()


class Compute:
    """Runs callables on this process's compute thread (CPU), or inline (CUDA, or `dedicated=False`)."""

    def __init__(self, dedicated: bool) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="compute") if dedicated else None

    @classmethod
    def for_device(cls, device: str | torch.device | None) -> "Compute":
        """A dedicated thread for a CPU model; inline for CUDA or for no model at all (prompt lookup)."""
        return cls(dedicated=device is not None and torch.device(device).type == "cpu")

    @property
    def dedicated(self) -> bool:
        return self._pool is not None

    def run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """fn(*args, **kwargs) on the compute thread; its exception is raised here."""
        if self._pool is None:
            return fn(*args, **kwargs)
        return self._pool.submit(fn, *args, **kwargs).result()

    def hand_over(self, fn: Callable[[], None]) -> None:
        """Run fn (a loop that owns the model for good, like the batching engine) where forwards belong: on
        the compute thread, which runs nothing else afterwards, or on a new thread when inline."""
        if self._pool is None:
            threading.Thread(target=fn, daemon=True, name="engine").start()
        else:
            self._pool.submit(fn)

    def iterate(self, items: Iterator[T]) -> Iterator[T]:
        """Each step of a lazy iterator on the compute thread, yielded here as soon as it exists: the
        caller sends a drafted block before the blocks drafted after it are computed."""
        if self._pool is None:
            yield from items
            return
        while (item := self.run(next, items, _DONE)) is not _DONE:
            yield item


INLINE = Compute(dedicated=False)  # the default where no model is loaded by the caller (tests, in-process bench)
