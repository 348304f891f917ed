"""Where a model computes, so a draft can tell whether it shares its compute with its target.

Drafting ahead (overlap) only pays when the draft computes on something the target does not: on the
target's own GPU the two take turns on the device, and on the target's own CPU cores the draft's forward
takes the cores the target's verify needs. Either way drafting ahead adds draft work and hides nothing.
And processes computing on the same CPUs take turns (`CpuTurns`) rather than compute at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import pathlib
import socket
import tempfile
import time
from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass(frozen=True)
class Placement:
    host_id: str  # equal for two processes on one machine (its boot id)
    gpu_uuid: str = ""  # the GPU it computes on; "" on a CPU
    cpus: frozenset[int] = frozenset()  # CPUs a CPU model may run on (its affinity); empty on a GPU

    def shares_compute_with(self, other: "Placement | None") -> bool:
        """Whether the two compute on the same GPU, or on overlapping CPUs of one machine."""
        if other is None or self.host_id != other.host_id:
            return False
        if self.gpu_uuid or other.gpu_uuid:
            return self.gpu_uuid == other.gpu_uuid
        return bool(self.cpus & other.cpus)


@functools.cache
def host_id() -> str:
    """The kernel's boot id (containers on one machine share it), else the host name."""
    try:
        return pathlib.Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return socket.gethostname()


def placement_of(device: torch.device | str) -> Placement:
    device = torch.device(device)
    if device.type == "cuda":
        return Placement(host_id(), gpu_uuid=str(torch.cuda.get_device_properties(device).uuid))
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    return Placement(host_id(), cpus=frozenset(cpus))


log = logging.getLogger("specdec.placement")
POLL_S = 0.0005  # how often a forward waiting for its turn looks again (CPU forwards take milliseconds or more)


class CpuTurns:
    """Processes computing on the same CPUs take turns, one forward at a time, through an exclusive file lock
    named after the CPU set.

    Two co-located CPU services (a target and its draft on one laptop) otherwise run their forwards at the
    same time under load, each with a thread per core: every OpenMP barrier then waits for a thread the
    kernel has descheduled in favour of the other process, and both run several times slower than in turn.
    A forward holds its turn only while it computes (never while it waits for anything else). A process that
    stops while it holds the turn (SIGSTOP, a debugger) must not stop the others: past `wait_s` a forward
    goes without its turn, and the turns are skipped for `skip_s` before they are tried again."""

    def __init__(self, cpus: frozenset[int], wait_s: float = 2.0, skip_s: float = 10.0) -> None:
        key = hashlib.sha1(",".join(map(str, sorted(cpus))).encode()).hexdigest()[:16]
        self.path = pathlib.Path(tempfile.gettempdir()) / f"specdec-cpus-{os.getuid()}-{key}.lock"  # one user's
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self.wait_s, self.skip_s = wait_s, skip_s
        self._skip_until = 0.0

    def close(self) -> None:
        """Give the lock file back (the engine that took turns has ended): a turn held now is released."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        held = self._acquire()
        try:
            yield
        finally:
            if held:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _acquire(self) -> bool:
        now = time.monotonic()
        if now < self._skip_until or self._fd < 0:
            return False
        deadline = now + self.wait_s
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    log.warning("another process has held the turn on these CPUs for %.1f s: computing without "
                                "turns for %.0f s", self.wait_s, self.skip_s)
                    self._skip_until = time.monotonic() + self.skip_s
                    return False
                time.sleep(POLL_S)


def compute_turns(placement: Placement) -> CpuTurns | None:
    """The turns of a CPU model's forwards (None on a GPU, where the device itself time-slices, or where the
    lock file cannot be opened: then this process computes without turns, and says so)."""
    if placement.gpu_uuid or not placement.cpus:
        return None
    try:
        return CpuTurns(placement.cpus)
    except OSError as exc:
        log.warning("cannot open the lock that co-located CPU services take turns with (%s): computing without turns",
                    exc)
        return None
