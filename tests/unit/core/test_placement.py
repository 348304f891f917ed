"""Co-located CPU services take turns: one forward at a time across processes on the same CPUs."""

import multiprocessing
import os
import time

import pytest

from specdec.core.placement import CpuTurns


def _hold(cpus, ready, release) -> None:
    with CpuTurns(cpus).turn():
        ready.set()
        release.wait(10)


def test_a_process_waits_for_the_turn_another_holds_on_the_same_cpus():
    ctx = multiprocessing.get_context("spawn")
    cpus = frozenset({9990, 9991})  # a key of its own: no real service shares it
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(cpus, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        turns = CpuTurns(cpus, wait_s=0.3, skip_s=5.0)
        t0 = time.monotonic()
        with turns.turn():  # held elsewhere: waits its bound, then goes without (a stopped holder stops no one)
            waited = time.monotonic() - t0
        assert 0.3 <= waited < 2.0
        t0 = time.monotonic()
        with turns.turn():  # within skip_s: no waiting at all
            assert time.monotonic() - t0 < 0.1
        other = CpuTurns(frozenset({9992}), wait_s=0.3)
        t0 = time.monotonic()
        with other.turn():  # other CPUs: another lock
            assert time.monotonic() - t0 < 0.1
        release.set()
        holder.join(10)
        fresh = CpuTurns(cpus, wait_s=5.0)
        t0 = time.monotonic()
        with fresh.turn():  # released: taken at once
            assert time.monotonic() - t0 < 0.5
    finally:
        release.set()
        holder.join(10)


def test_a_lock_that_cannot_be_opened_means_no_turns_not_a_dead_service(monkeypatch, caplog):
    from specdec.core import placement

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(placement.os, "open", refuse)
    cpu = placement.Placement("host", cpus=frozenset({9993}))
    assert placement.compute_turns(cpu) is None
    assert "computing without turns" in caplog.text
    assert placement.compute_turns(placement.Placement("host", gpu_uuid="GPU-1")) is None


def test_turns_give_their_lock_file_back_when_closed():
    """Each CPU engine opens the lock file once; an engine that stops closes it (tests build many)."""
    turns = CpuTurns(frozenset({9994}))
    fd = turns._fd
    os.fstat(fd)
    turns.close()
    with pytest.raises(OSError):
        os.fstat(fd)
    with turns.turn():  # closed: goes without a turn instead of failing
        pass
    turns.close()  # twice is fine
