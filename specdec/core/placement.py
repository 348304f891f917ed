"""Where a model computes, so a draft can tell whether it shares its compute with its target.

Drafting ahead (overlap) only pays when the draft computes on something the target does not: on the
target's own GPU the two take turns on the device, and on the target's own CPU cores the draft's forward
takes the cores the target's verify needs. Either way drafting ahead adds draft work and hides nothing.
"""

from __future__ import annotations

import functools
import os
import pathlib
import socket
from dataclasses import dataclass

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
