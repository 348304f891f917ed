"""Admission through the services: requests beyond the target's KV slots wait in a bounded FIFO queue,
finish with the same output, and report their wait; a full queue is RESOURCE_EXHAUSTED."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from specdec.serving.client import Client, build_request
from tests.conftest import PROMPTS, greedy
from tests.integration.servers import free_base_port, running_stack, scrape

pytestmark = pytest.mark.timeout(600)



@pytest.fixture(scope="module")
def one_slot():
    """A target with one KV slot and two places in line (no draft: admission is the target's alone)."""
    port = free_base_port(1)
    with running_stack(draft_model=None, target=["--max-sessions", "1", "--queue-size", "2",
                                                 "--metrics-port", str(port)]) as stack:
        yield stack, port


def at_once(stack, prompts, max_new_tokens):
    """Each prompt from its own client, released together: token ids and queue time, or the refusal."""
    start = threading.Barrier(len(prompts))

    def one(prompt):
        with Client(stack.address, timeout_s=120) as c:
            start.wait()
            try:
                r = c.generate(build_request(prompt, max_new_tokens=max_new_tokens, ignore_eos=True))
            except grpc.RpcError as exc:
                return prompt, exc.code(), exc.details()
            return prompt, r.token_ids, r.summary.latency.queue_ms

    with ThreadPoolExecutor(len(prompts)) as pool:
        return list(pool.map(one, prompts))


def test_requests_beyond_the_slots_wait_their_turn_and_all_finish(tiny_pair, one_slot):
    stack, port = one_slot
    prompts = PROMPTS[:3]
    before = scrape(port).get(("specdec_queue_seconds_count", ()), 0)
    results = at_once(stack, prompts, 24)
    assert all(ids == greedy(tiny_pair, p, 24) for p, ids, _ in results), results
    waited = [q for *_, q in results if q > 0]
    assert len(waited) >= 2, results  # three at once on one slot: two waited, and said so
    metrics = scrape(port)
    assert metrics[("specdec_queue_seconds_count", ())] - before == len(prompts)
    assert metrics[("specdec_queue_seconds_sum", ())] * 1000 >= sum(waited) * 0.99
    assert metrics[("specdec_queue_length", ())] == 0 and metrics[("specdec_free_kv_slots", ())] == 1


def test_a_full_queue_is_resource_exhausted_and_the_others_finish(tiny_pair, one_slot):
    stack, _ = one_slot
    results = at_once(stack, ["def main():"] * 5, 60)
    refused = [r for r in results if r[1] == grpc.StatusCode.RESOURCE_EXHAUSTED]
    finished = [ids for _, ids, _ in results if isinstance(ids, list)]
    assert len(finished) >= 3 and refused and len(finished) + len(refused) == 5, results  # one slot, two in line
    assert all(ids == finished[0] for ids in finished) and len(finished[0]) == 60
    assert all("already wait" in details for *_, details in refused), refused
    with Client(stack.address, timeout_s=60) as c:  # still serving, slot free again
        assert c.generate(build_request("import os", max_new_tokens=8, ignore_eos=True)).token_ids == \
            greedy(tiny_pair, "import os", 8)
