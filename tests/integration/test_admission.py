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



def test_requests_beyond_the_slots_wait_their_turn_and_all_finish(tiny_pair):
    port = free_base_port(1)
    with running_stack(target=["--max-sessions", "2", "--metrics-port", str(port)]) as stack:
        prompts = PROMPTS[:6]
        expected = {p: greedy(tiny_pair, p, 24) for p in prompts}
        start = threading.Barrier(len(prompts))

        def one(prompt):
            with Client(stack.address, timeout_s=120) as c:
                start.wait()
                r = c.generate(build_request(prompt, max_new_tokens=24, ignore_eos=True))
                return prompt, r.token_ids, r.summary.latency.queue_ms

        with ThreadPoolExecutor(len(prompts)) as pool:
            results = list(pool.map(one, prompts))
        assert all(ids == expected[p] for p, ids, _ in results)
        waited = [q for *_, q in results if q > 0]
        assert len(waited) >= 2, results  # six at once on two slots: some waited, and said so
        metrics = scrape(port)
        assert metrics[("specdec_queue_seconds_count", ())] == len(prompts)
        assert metrics[("specdec_queue_seconds_sum", ())] * 1000 >= sum(waited) * 0.99
        assert metrics[("specdec_queue_length", ())] == 0 and metrics[("specdec_free_kv_slots", ())] == 2


def test_a_full_queue_is_resource_exhausted_and_the_others_finish(tiny_pair):
    with running_stack(target=["--max-sessions", "1", "--queue-size", "1"]) as stack:
        start = threading.Barrier(4)

        def one(_):
            with Client(stack.address, timeout_s=120) as c:
                start.wait()
                try:
                    return len(c.generate(build_request("def main():", max_new_tokens=120, ignore_eos=True)).token_ids)
                except grpc.RpcError as exc:
                    return exc.code(), exc.details()

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(one, range(4)))
        refused = [r for r in results if isinstance(r, tuple)]
        assert results.count(120) >= 2 and refused, results  # one slot, one place in line: at least 2 refused
        assert all(code == grpc.StatusCode.RESOURCE_EXHAUSTED and "already wait" in details
                   for code, details in refused), refused
        with Client(stack.address, timeout_s=60) as c:  # still serving, slot free again
            assert c.generate(build_request("import os", max_new_tokens=8, ignore_eos=True)).token_ids == \
                greedy(tiny_pair, "import os", 8)
