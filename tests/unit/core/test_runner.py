"""ModelRunner: O(1) rollback that gives the same logits as a fresh computation."""

import time

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from specdec.core.errors import ResourceExhausted
from specdec.core.runner import ModelRunner, common_prefix_len


@pytest.fixture(scope="module")
def runner() -> ModelRunner:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, max_position_embeddings=2048)
    return ModelRunner(LlamaForCausalLM(cfg), max_len=2048, max_sessions=3)


def ids(n: int, seed: int = 0) -> list[int]:
    return torch.randint(0, 300, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_prefill_forward_truncate_forward_equals_fresh(runner):
    seq = ids(60)
    s, fresh = runner.open(), runner.open()
    try:
        runner.extend(s, seq[:40])
        runner.extend(s, seq[:40] + ids(5, seed=9), keep=5)  # K rejected draft tokens
        runner.truncate(s, 40)
        after = runner.extend(s, seq[:48], keep=8)
        reference = runner.extend(fresh, seq[:48], keep=8)
        assert torch.allclose(after, reference, atol=1e-4)
        with torch.no_grad():  # and against the model without any cache
            plain = runner.model(torch.tensor([seq[:48]])).logits[0, -8:]
        assert torch.allclose(after, plain, atol=1e-4)
    finally:
        runner.close(s)
        runner.close(fresh)


def test_extend_reuses_the_common_prefix(runner):
    s = runner.open()
    try:
        runner.extend(s, ids(30))
        other = ids(30)[:20] + ids(10, seed=5)
        calls = []
        original = runner._forward
        runner._forward = lambda sess, new, keep: calls.append(len(new)) or original(sess, new, keep)
        try:
            runner.extend(s, other, keep=1)
        finally:
            runner._forward = original
        assert calls == [10] and s.tokens == other
    finally:
        runner.close(s)


def test_truncation_cost_does_not_grow_with_tokens_removed(runner):
    s = runner.open()
    try:
        runner.extend(s, ids(2000))
        keys = runner._caches[s.index].layers[0].keys
        pointer, snapshot = keys.data_ptr(), keys[0, 0, :2000].clone()

        def cost(remove: int) -> float:
            best = float("inf")
            for _ in range(30):
                s.tokens = list(range(2000))
                t0 = time.perf_counter()
                runner.truncate(s, 2000 - remove)
                best = min(best, time.perf_counter() - t0)
            return best

        few, many = cost(1), cost(1999)
        assert many < 3 * few + 20e-6, (few, many)
        assert keys.data_ptr() == pointer and torch.equal(keys[0, 0, :2000], snapshot)  # nothing copied or cleared
    finally:
        runner.close(s)


def test_slots_run_out_with_resource_exhausted_and_come_back(runner):
    sessions = [runner.open() for _ in range(runner.free_slots)]
    with pytest.raises(ResourceExhausted):
        runner.open()
    for s in sessions:
        runner.close(s)
    assert runner.free_slots == runner.max_sessions


def test_open_waits_its_turn_for_a_slot_being_given_back(runner):
    import threading

    sessions = [runner.open() for _ in range(runner.free_slots)]
    runner.slots.queue_size, runner.slots.wait_s = 1, 5.0
    try:
        threading.Timer(0.3, runner.close, args=(sessions[0],)).start()
        t0 = time.monotonic()
        late = runner.open()  # refused at once without a queue (test above); here it gets the freed slot
        assert 0.2 < time.monotonic() - t0 < 4.0 and 0.2 < late.queued_s < 4.0
        assert late.index >= 0 and runner.free_slots == 0
        runner.slots.wait_s = 0.2
        with pytest.raises(ResourceExhausted):  # nothing given back within the wait: still refused
            runner.open()
        sessions[0] = late
    finally:
        runner.slots.queue_size, runner.slots.wait_s = 0, 0.0
        for s in sessions:
            runner.close(s)
    assert runner.free_slots == runner.max_sessions


def test_common_prefix_len():
    assert common_prefix_len([1, 2, 3], [1, 2, 3, 4]) == 3
    assert common_prefix_len([1, 2, 3], [1, 9, 3]) == 1
    assert common_prefix_len([], [1]) == 0
    assert common_prefix_len(list(range(100)), list(range(57)) + [0]) == 57


@pytest.mark.parametrize("kernels", ["onednn", "stock"])
def test_cpu_kernels_choice_keeps_the_logits(kernels):
    """The oneDNN repacking (the CPU default) replaces every fp32 nn.Linear and computes the same
    function; `stock` leaves the model alone."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256)
    model = LlamaForCausalLM(cfg).eval()
    prompt = ids(12, seed=3)
    with torch.inference_mode():
        expected = model(torch.tensor([prompt])).logits[0, -4:]
    r = ModelRunner(model, max_len=256, max_sessions=1, cpu_kernels=kernels)
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    assert (linears == []) if kernels == "onednn" else len(linears) == 2 * 7 + 1
    got = r.extend(r.open(), prompt, keep=4)
    torch.testing.assert_close(got.reshape(expected.shape).float(), expected, atol=1e-4, rtol=1e-4)


def test_branches_in_one_pass_equal_each_branch_drafted_alone(runner):
    """forward_branches: every row gets the logits its own sequence would, whatever the other rows hold."""
    chain = ids(30, seed=3)
    roots = [(24, 7), (26, 11), (29, 13), (29, chain[29])]  # fork after 24, 26, 29 tokens (twice at 29)
    steps = [ids(len(roots), seed=10 + s) for s in range(3)]  # tokens fed at steps 1, 2
    s, alone = runner.open(), runner.open()
    try:
        runner.hold(s, chain[:29])
        got = [runner.forward_branches(s, 0, [t for _, t in roots], [j for j, _ in roots], [j for j, _ in roots])]
        for step in (1, 2):
            got.append(runner.forward_branches(s, step, steps[step], [j + step for j, _ in roots],
                                               [j for j, _ in roots]))
        assert s.tokens == chain[:29]  # branch tokens are never part of the session's sequence
        for b, (j, root) in enumerate(roots):
            branch = chain[:j] + [root] + [steps[1][b], steps[2][b]]
            want = runner.extend(alone, branch, keep=3)
            for step in range(3):
                assert torch.allclose(got[step][b], want[step], atol=1e-4), (b, step)
        after = runner.extend(s, chain, keep=1)  # the cache still serves the plain sequence
        assert torch.allclose(after, runner.extend(alone, chain, keep=1), atol=1e-4)
        runner.hold(s, chain[:29])
        assert runner.forward_branches(s, 0, [1] * 2, [3000, 3000], [2030, 5]) is None  # limit past the cache
        runner.hold(s, ids(2047, seed=4))
        assert runner.forward_branches(s, 0, [1] * 2, [2047, 2047], [2047, 2047]) is None  # no room left
    finally:
        runner.close(s)
        runner.close(alone)


def test_host_values_reach_the_device_as_token_ids(runner):
    """The one way host values reach a runner's device (`_on_device`): token ids and row indices as int64, an empty
    list too (torch would make it float, which no index accepts); a tensor already there is used as it is."""
    assert runner._on_device([[3, 4], [5, 6]]).tolist() == [[3, 4], [5, 6]]
    assert runner._on_device([]).dtype == torch.long
    on = runner._on_device([7])
    assert on.device == runner.device and runner._on_device(on) is on


@pytest.mark.parametrize("enabled", [True, False])
def test_a_graph_capture_holds_the_garbage_collector_off_and_gives_it_back(monkeypatch, enabled):
    """A collection during a CUDA graph capture frees dead cycles' CUDA and pinned memory there, which invalidates
    the capture (a GPU test built a runner after another left in a cycle: its capture failed). The capture itself
    needs a GPU; torch.cuda.graph is replaced by a recorder of the collector's state inside it."""
    import contextlib
    import gc

    from specdec.core import runner as runner_module

    seen = []

    @contextlib.contextmanager
    def fake_graph(graph, pool=None, stream=None, capture_error_mode="global"):
        seen.append((gc.isenabled(), capture_error_mode))
        yield

    monkeypatch.setattr(torch.cuda, "graph", fake_graph)
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        with runner_module.graph_capture(object(), None, None):
            assert not gc.isenabled()
        assert gc.isenabled() == enabled
        with pytest.raises(RuntimeError), runner_module.graph_capture(object(), None, None):
            raise RuntimeError("capture failed")
        assert gc.isenabled() == enabled
    finally:
        (gc.enable if was else gc.disable)()
    assert seen == [(False, "thread_local")] * 2
