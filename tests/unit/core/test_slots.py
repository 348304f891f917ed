"""SlotQueue: sessions beyond the KV slots wait in arrival order, boundedly in number and in time."""

import threading
import time

import pytest

from specdec.core.errors import ResourceExhausted, Unavailable
from specdec.core.slots import SlotQueue


def test_a_free_slot_is_taken_at_once_and_refused_without_a_queue():
    slots = SlotQueue(2)
    assert {slots.acquire().index, slots.acquire().index} == {0, 1} and slots.free == 0
    with pytest.raises(ResourceExhausted, match="all 2 KV cache slots are in use"):
        slots.acquire()
    slots.release(1)
    slots.release(1)  # twice is harmless
    assert slots.acquire() == (1, 0.0)


def test_waiters_get_slots_in_arrival_order_and_know_how_long_they_waited():
    slots = SlotQueue(1, queue_size=3, wait_s=10.0)
    held = slots.acquire().index
    order, queued = [], []

    def wait(name):
        admitted = slots.acquire()
        order.append(name)
        queued.append(admitted.queued_s)
        time.sleep(0.02)
        slots.release(admitted.index)

    threads = []
    for name in "abc":
        threads.append(threading.Thread(target=wait, args=(name,)))
        threads[-1].start()
        while slots.waiting < len(threads):  # each is in line before the next arrives
            time.sleep(0.005)
    time.sleep(0.1)
    slots.release(held)
    for t in threads:
        t.join(5)
    assert order == ["a", "b", "c"]
    assert min(queued) >= 0.1 and slots.free == 1 and slots.waiting == 0


def test_a_full_queue_and_a_long_wait_are_refused():
    slots = SlotQueue(1, queue_size=1, wait_s=0.3)
    slots.acquire()
    waiter = threading.Thread(target=lambda: pytest.raises(ResourceExhausted, slots.acquire))
    waiter.start()
    while slots.waiting < 1:
        time.sleep(0.005)
    with pytest.raises(ResourceExhausted, match="1 requests already wait"):
        slots.acquire()  # the queue is full
    waiter.join(5)
    t0 = time.monotonic()
    with pytest.raises(ResourceExhausted, match="within 0.3s"):
        slots.acquire()
    assert 0.25 < time.monotonic() - t0 < 2.0 and slots.waiting == 0


def test_a_cancelled_waiter_leaves_the_queue_promptly():
    slots = SlotQueue(1, queue_size=4, wait_s=30.0)
    slots.acquire()
    cancelled = threading.Event()
    threading.Timer(0.1, cancelled.set).start()
    t0 = time.monotonic()
    with pytest.raises(Unavailable, match="cancelled"):
        slots.acquire(cancelled)
    assert time.monotonic() - t0 < 1.0 and slots.waiting == 0
