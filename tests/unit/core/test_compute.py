"""The compute thread: a CPU service loads and runs its model on one thread (specdec/compute.py says why)."""

import queue
import threading

import pytest

from draft_service.service import END, DraftService
from specdec.core.adaptive import FixedK
from specdec.core.compute import Compute
from specdec.core.config import GenerationRequest, SamplingParams
from specdec.core.drafting import DraftStart, Verdict
from specdec.core.sequence import TargetSequence
from specdec.core.target_loop import TargetLoop
from specdec.proposers.draft_model import DraftModelFactory


def test_cpu_work_runs_on_one_thread_that_is_not_the_callers():
    compute = Compute.for_device("cpu")
    assert compute.dedicated
    seen = {compute.run(threading.get_ident) for _ in range(5)}
    callers = []  # calls from other threads (a gRPC server's pool) land on the same thread
    workers = [threading.Thread(target=lambda: callers.append(compute.run(threading.get_ident))) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(seen | set(callers)) == 1 and threading.get_ident() not in seen


def test_cuda_and_no_model_run_inline():
    for device in ("cuda:0", None):
        compute = Compute.for_device(device)
        assert not compute.dedicated and compute.run(threading.get_ident) == threading.get_ident()


def test_errors_reach_the_caller():
    with pytest.raises(ZeroDivisionError):
        Compute.for_device("cpu").run(lambda: 1 / 0)


def test_iterate_steps_a_generator_on_the_compute_thread_and_hands_items_over_as_they_exist():
    compute, log = Compute.for_device("cpu"), []

    def produce():
        for i in range(3):
            log.append(("made", i, threading.get_ident()))
            yield i

    for item in compute.iterate(produce()):
        log.append(("got", item, threading.get_ident()))
    assert [(what, i) for what, i, _ in log] == [("made", 0), ("got", 0), ("made", 1), ("got", 1), ("made", 2),
                                                  ("got", 2)]
    made, got = {t for what, _, t in log if what == "made"}, {t for what, _, t in log if what == "got"}
    assert len(made) == 1 and got == {threading.get_ident()} and made != got


def test_the_target_verifies_and_the_draft_drafts_on_the_compute_thread(tiny_pair):
    compute = Compute.for_device("cpu")
    worker = compute.run(threading.get_ident)
    runner = tiny_pair.target_runner
    threads = set()
    forward = runner._forward
    runner._forward = lambda *a, **kw: threads.add(threading.get_ident()) or forward(*a, **kw)
    try:
        prompt = tiny_pair.encode("def main():")
        sequence = TargetSequence(runner, GenerationRequest(prompt_ids=prompt, max_new_tokens=6), tiny_pair.eos_ids)
        try:
            assert len([*TargetLoop(sequence, None, FixedK(0), threading.Event(), compute).run()]) >= 1
        finally:
            sequence.close()
    finally:
        del runner._forward
    assert threads == {worker}

    draft = tiny_pair.draft_runner
    threads.clear()
    forward = draft._forward
    draft._forward = lambda *a, **kw: threads.add(threading.get_ident()) or forward(*a, **kw)

    try:
        service = DraftService(DraftModelFactory(draft, runner.vocab_size), idle_timeout_s=5, compute=compute)
        inbox: queue.Queue = queue.Queue()
        for msg in (DraftStart("s", prompt, SamplingParams(), 0, 3, True), Verdict(len(prompt), [5]), END):
            inbox.put(msg)
        replies = [*service.serve(inbox, lambda fn: None)]
    finally:
        del draft._forward
    assert len(replies) == 2 and threads == {worker}
