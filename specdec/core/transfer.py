"""Host values copied to a device behind the work queued there, without making the host wait for it.

`torch.tensor(values, device=cuda)`, or any copy from pageable memory, stages the values through pinned memory and
synchronises the stream to do so: the host waits for the forward in flight, and the device then idles while the
host builds the next launch. From pinned memory the copy is queued like a kernel, and torch's caching host allocator
keeps the buffer until the copy is done. Every host value the decoding path copies to a device goes through here.
"""

from __future__ import annotations

from typing import Sequence

import torch


def pinned(values: Sequence | torch.Tensor, pin: bool, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """Host values (nested lists, or a CPU tensor) as a CPU tensor, in pinned memory where `pin` (a GPU's)."""
    if not isinstance(values, torch.Tensor):
        return torch.tensor(values, dtype=dtype, pin_memory=pin)
    return values.pin_memory() if pin and values.device.type == "cpu" and not values.is_pinned() else values


def to_device(values: Sequence | torch.Tensor, device: torch.device, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """Host values on `device`, copied behind the work queued there."""
    return pinned(values, device.type == "cuda", dtype).to(device, non_blocking=True)


class PinnedBuffers:
    """Pinned host buffers kept per dtype and grown rarely (a pinned allocation costs milliseconds), for a caller whose
    reads are each taken before its next copy: a reused buffer is overwritten by that copy."""

    def __init__(self) -> None:
        self._by_dtype: dict[torch.dtype, torch.Tensor] = {}

    def like(self, values: torch.Tensor) -> torch.Tensor:
        """A pinned host tensor of `values`' shape and dtype, a view of this dtype's buffer."""
        buffer = self._by_dtype.get(values.dtype)
        if buffer is None or buffer.numel() < values.numel():
            buffer = self._by_dtype[values.dtype] = torch.empty(2 * values.numel(), dtype=values.dtype, pin_memory=True)
        return buffer[:values.numel()].view(values.shape)


class OnTheWay:
    """Device values copied to the host behind an event, without waiting for the work queued after them: read (once,
    then kept) with `get`, which waits only for that copy. On a CPU, the values themselves. `buffers`: copied into
    one of these (read before their next use), else into a pinned buffer of its own (torch's host allocator caches it)."""

    def __init__(self, values: torch.Tensor, buffers: PinnedBuffers | None = None) -> None:
        self._list: list | None = None
        self._ready = None
        if values.is_cuda:
            host = (buffers.like(values) if buffers is not None
                    else torch.empty(values.shape, dtype=values.dtype, pin_memory=True))
            host.copy_(values, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record(torch.cuda.current_stream(values.device))
            values = host
        self._values = values

    def get(self) -> list:
        if self._list is None:
            if self._ready is not None:
                self._ready.synchronize()
            self._list = self._values.tolist()
        return self._list
