"""A target whose engine runs in a process of its own (`serve target --engine-process`), through the services:
the same outputs, admission, cancellation and errors as in one process; an engine that dies is reported, not hidden."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from specdec.core.config import SamplingParams
from specdec.serving.client import Client, build_request
from specdec.v1 import target_pb2, target_pb2_grpc
from tests.conftest import PROMPTS, greedy
from tests.integration.servers import running_stack
from tests.integration.test_services import in_process

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def stack():
    """Two KV slots and one place in line, so that admission is exercised; a draft, so that the engine process
    opens its sessions' draft links."""
    with running_stack(orchestrator=["--k", "4"],
                       target=["--engine-process", "--max-sessions", "2", "--queue-size", "1"],
                       draft=["--dtype", "float32"]) as s:
        yield s


def describe(stack) -> target_pb2.DescribeTargetResponse:
    with grpc.insecure_channel(stack.addresses()["target"]) as ch:
        return target_pb2_grpc.TargetServiceStub(ch).DescribeTarget(target_pb2.DescribeTargetRequest()).info


def engine_pid(target_pid: int) -> int:
    """The target's engine process: its child that multiprocessing spawned (not its resource tracker)."""
    with open(f"/proc/{target_pid}/task/{target_pid}/children") as f:
        children = [int(p) for p in f.read().split()]
    spawned = []
    for pid in children:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"spawn_main" in f.read():
                spawned.append(pid)
    assert len(spawned) == 1, children
    return spawned[0]


def test_outputs_equal_target_only_greedy_and_seeded_sampling_equals_in_process(stack, tiny_pair, tiny_pair_fp32):
    with Client(stack.address, timeout_s=120) as client:
        for prompt in PROMPTS[:3]:
            result = client.generate(build_request(prompt, max_new_tokens=30, k=4, ignore_eos=True))
            assert result.token_ids == greedy(tiny_pair, prompt, 30), prompt
            assert result.summary.speculation.drafts > 0
        sampling = SamplingParams(temperature=0.9, top_k=40, top_p=0.95, seed=1234)
        expected = in_process(tiny_pair_fp32, PROMPTS[0], k=4, sampling=sampling).token_ids
        result = client.generate(build_request(PROMPTS[0], max_new_tokens=40, k=4, ignore_eos=True, sampling=sampling))
        assert result.token_ids == expected


def test_beyond_its_slots_and_queue_a_request_is_refused_and_the_others_finish(stack, tiny_pair):
    start = threading.Barrier(5)

    def one(prompt):
        with Client(stack.address, timeout_s=120) as c:
            start.wait()
            try:
                return prompt, c.generate(build_request(prompt, max_new_tokens=40, ignore_eos=True)).token_ids
            except grpc.RpcError as exc:
                return prompt, (exc.code(), exc.details())

    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(one, PROMPTS[:5]))
    refused = [r for _, r in results if isinstance(r, tuple)]
    assert refused and all(code == grpc.StatusCode.RESOURCE_EXHAUSTED and "already wait" in details
                           for code, details in refused), results
    assert all(ids == greedy(tiny_pair, p, 40) for p, ids in results if isinstance(ids, list))
    assert len(results) - len(refused) >= 3  # two slots and one place in line


def test_bad_input_is_refused_by_the_engine_with_the_field_named(stack):
    with grpc.insecure_channel(stack.addresses()["target"]) as ch:
        stub = target_pb2_grpc.TargetServiceStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Generate(target_pb2.TargetGenerateRequest(session_id="s", prompt_ids=[1], max_new_tokens=10**9)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("max_new_tokens:"), err.value.details()


def test_a_cancelled_request_frees_its_slot_in_the_engine(stack):
    with Client(stack.address, timeout_s=120) as client:
        stream = client.stream(build_request(PROMPTS[3], max_new_tokens=2000, ignore_eos=True))
        next(stream)
        assert describe(stack).active_sessions == 1
        stream.cancel()
    deadline = time.monotonic() + 5
    while (info := describe(stack)).free_kv_slots != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert info.active_sessions == 0 and info.free_kv_slots == 2, info


def test_an_engine_that_dies_fails_its_requests_with_unavailable_and_the_target_reports_not_serving():
    with running_stack(draft_model=None, target=["--engine-process"]) as stack:
        target = stack.procs["target"]
        engine = engine_pid(target.pid)
        with Client(stack.address, timeout_s=120) as client:
            stream = client.stream(build_request(PROMPTS[0], max_new_tokens=4000, ignore_eos=True))
            next(stream)
            os.kill(engine, signal.SIGKILL)
            with pytest.raises(grpc.RpcError) as err:
                list(stream)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
        with grpc.insecure_channel(stack.addresses()["target"]) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            deadline = time.monotonic() + 10
            while (status := health.Check(health_pb2.HealthCheckRequest(), timeout=5).status) == \
                    health_pb2.HealthCheckResponse.SERVING and time.monotonic() < deadline:
                time.sleep(0.05)
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as err:
                list(target_pb2_grpc.TargetServiceStub(ch).Generate(
                    target_pb2.TargetGenerateRequest(session_id="after", prompt_ids=[1, 2], max_new_tokens=4)))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert target.poll() is None  # the front end still answers (its probes say why), it did not crash


def test_an_engine_whose_front_end_is_killed_ends_too():
    """No orphan keeps the model (and a GPU's memory): the engine sees its pipe close and exits."""
    with running_stack(draft_model=None, target=["--engine-process"]) as stack:
        target = stack.procs["target"]
        engine = engine_pid(target.pid)
        os.kill(target.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while alive(engine) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(engine)


def alive(pid: int) -> bool:
    """Running: neither gone nor a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# Loaded by the engine process's fresh interpreter (site imports `sitecustomize` from PYTHONPATH at start): once the
# file FAULT_FILE names exists, the engine's loop raises on its next step.
PLANTED_FAULT = """
import os
from specdec.core.batching import BatchedRunner

split = BatchedRunner._split_pending

def crashing(self, *args, **kwargs):
    if os.path.exists(os.environ["FAULT_FILE"]):
        raise RuntimeError("planted fault")
    return split(self, *args, **kwargs)

BatchedRunner._split_pending = crashing
"""


def test_an_engine_process_whose_loop_stops_on_an_error_exits_and_its_target_fails_the_streams(tmp_path):
    """An engine in its own process whose loop stops on an error exits (`on_failure`), so that its front end fails
    the streams in flight with UNAVAILABLE and reports NOT_SERVING, as for an engine that dies otherwise; without
    the exit the process would sit there with the model loaded, serving no one. The fault is planted in the child's
    interpreter through a `sitecustomize` on its PYTHONPATH."""
    (tmp_path / "sitecustomize.py").write_text(PLANTED_FAULT)
    armed = tmp_path / "armed"
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
           "FAULT_FILE": str(armed)}
    with running_stack(draft_model=None, target=["--engine-process"], env=env) as stack:
        target = stack.procs["target"]
        engine = engine_pid(target.pid)
        with Client(stack.address, timeout_s=120) as client:
            stream = client.stream(build_request(PROMPTS[0], max_new_tokens=4000, ignore_eos=True))
            next(stream)
            armed.touch()
            with pytest.raises(grpc.RpcError) as err:
                list(stream)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
        deadline = time.monotonic() + 10
        while alive(engine) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(engine)
        with grpc.insecure_channel(stack.addresses()["target"]) as ch:
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert target.poll() is None


def test_a_target_whose_engine_loop_stops_on_an_error_fails_its_streams_and_reports_not_serving(monkeypatch):
    """The engine in the server's own process (a CPU target's default): a bug that stops its loop fails the streams
    in flight with UNAVAILABLE naming the error and turns health NOT_SERVING (a pod's probes restart it), instead of
    leaving every client waiting while the server says it serves. A real target server on loopback, built in this
    process so that the fault can be planted in its engine."""
    from specdec.core.batching import BatchedRunner
    from specdec.serving.server import ServerSettings
    from target_service.server import TargetServerSettings, build

    armed = threading.Event()
    split = BatchedRunner._split_pending

    def crashing(self, *args, **kwargs):
        if armed.is_set():
            raise RuntimeError("planted fault")
        return split(self, *args, **kwargs)
    monkeypatch.setattr(BatchedRunner, "_split_pending", crashing)
    server = build(TargetServerSettings(server=ServerSettings(), max_sessions=2, compile=False))
    server.start()
    try:
        with grpc.insecure_channel(server.address) as ch:
            stream = target_pb2_grpc.TargetServiceStub(ch).Generate(target_pb2.TargetGenerateRequest(
                session_id="s", prompt_ids=[1, 2, 3], max_new_tokens=2000, ignore_eos=True), timeout=60)
            next(stream)
            armed.set()
            with pytest.raises(grpc.RpcError) as err:
                list(stream)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
            assert "unexpected error: RuntimeError: planted fault" in err.value.details()
            health = health_pb2_grpc.HealthStub(ch)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
                health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as err:
                list(target_pb2_grpc.TargetServiceStub(ch).Generate(target_pb2.TargetGenerateRequest(
                    session_id="after", prompt_ids=[1, 2], max_new_tokens=4), timeout=30))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(grace=0)
