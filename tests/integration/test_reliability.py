"""Load, faults, hostile input: the system keeps serving, loses nothing, answers precisely."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specdec.serving.client import Client, build_request
from specdec.tools import loadtest
from specdec.tools.launcher import Stack, free_base_port
from specdec.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from tests.conftest import greedy
from tests.integration.servers import running_stack

pytestmark = pytest.mark.timeout(900)


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")



@pytest.mark.slow
def test_load_64_concurrent_sessions_times_10_requests(tiny_pair):
    # `specdec up`'s defaults: the target runs the draft itself, 16 KV slots, so 48 of the 64 wait in its queue.
    # The target and the orchestrator share the same few cores: OpenMP workers spinning between parallel regions
    # take the cores the other process needs (with two CPU services the default made this test 2.3x slower with 4x
    # the CPU time). PASSIVE is what README advises for co-located services.
    with running_stack(draft_model=None, env={"OMP_WAIT_POLICY": "PASSIVE"}, target=["--own-draft", "tiny"]) as stack:
        pids = {role: p.pid for role, p in stack.procs.items()}
        warm = loadtest.run(stack.address, 8, 2, ["x = 1"], 8, deadline_s=120)  # warm up allocators and caches
        assert not warm.errors
        before = {role: rss_mb(pid) for role, pid in pids.items()}
        prompts = ["def fibonacci(n):", "import os\nimport sys\n", "class Config:", "for i in range("]
        result = loadtest.run(stack.address, concurrency=64, requests=10, prompts=prompts, max_new_tokens=8,
                              deadline_s=600)
        after = {role: rss_mb(pid) for role, pid in pids.items()}
        assert not result.errors and len(result.latencies_s) == 640, result.summary()
        assert result.summary()["drafted_cycles"] > 0  # it speculated, through the target's own draft
        expected = [greedy(tiny_pair, p, 8) for p in prompts]
        assert all(out[1:] == expected[out[0]] for out in result.outputs)
        with Client(stack.address) as c:
            info = c.server_info()
        for i in [*info.targets.values(), *info.drafts.values()]:
            assert i.active_sessions == 0 and i.free_kv_slots == i.max_sessions
        growth = {role: after[role] - before[role] for role in pids}
        print("load:", result.summary(), "RSS growth MB:", growth)
        assert all(g < 250 for g in growth.values()), growth  # bounded: KV caches are preallocated per slot


def test_target_killed_gives_unavailable_fast_and_other_targets_keep_serving(tiny_pair):
    base = free_base_port(4)
    stack = Stack(port=base, extra={"orchestrator": ["--targets", f"127.0.0.1:{base + 1}", f"127.0.0.1:{base + 3}"]})
    second = subprocess.Popen([sys.executable, "-m", "specdec", "serve", "target", "--port", str(base + 3),
                               "--log-level", "warning"])
    try:
        stack.start()
        from specdec.serving.server import wait_healthy
        wait_healthy(f"127.0.0.1:{base + 3}", 60)
        time.sleep(1.0)  # the orchestrator's monitor sees the second target
        with Client(stack.address, timeout_s=60) as client:
            stream = client.stream(build_request("def f():", max_new_tokens=4000, ignore_eos=True))
            next(stream)
            busy = [a for a, i in client.server_info().targets.items() if i.active_sessions]
            assert len(busy) == 1
            victim = stack.procs["target"] if busy[0].endswith(str(base + 1)) else second
            victim.send_signal(signal.SIGKILL)
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                for _ in stream:
                    pass
            assert time.monotonic() - t0 < 1.0
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "target" in err.value.details()
            out = client.generate(build_request("def f():", max_new_tokens=12, ignore_eos=True))
            assert out.token_ids == greedy(tiny_pair, "def f():", 12)
    finally:
        second.kill()
        stack.stop()


def test_stalled_draft_is_abandoned_after_the_timeout(tiny_pair):
    with running_stack(target=["--draft-timeout", "1.0"]) as stack, Client(stack.address, timeout_s=60) as client:
        client.generate(build_request("x", max_new_tokens=4))  # connections up
        draft = stack.procs["draft"]
        stream = client.stream(build_request("class Config:", max_new_tokens=120, ignore_eos=True, k=4))
        tokens = list(next(stream).token_ids)
        draft.send_signal(signal.SIGSTOP)  # the draft stalls mid-request
        try:
            t0 = time.monotonic()
            for msg in stream:
                tokens.extend(msg.token_ids)
                if msg.HasField("summary"):
                    summary = msg.summary
            elapsed = time.monotonic() - t0
        finally:
            draft.send_signal(signal.SIGCONT)
        assert tokens == greedy(tiny_pair, "class Config:", 120)
        assert summary.draft_failed and elapsed < 10


def test_graceful_shutdown_drains_running_requests_and_a_restart_serves(tiny_pair):
    # A grace period no 2-core machine shared with other tests outlasts: the 300 tokens take ~10 s alone.
    with running_stack(orchestrator=["--grace-period", "120"]) as stack, Client(stack.address, timeout_s=150) as client:
        stream = client.stream(build_request("def main():", max_new_tokens=300, ignore_eos=True))
        tokens = list(next(stream).token_ids)
        orchestrator = stack.procs["orchestrator"]
        orchestrator.send_signal(signal.SIGTERM)
        for msg in stream:
            tokens.extend(msg.token_ids)
        assert tokens == greedy(tiny_pair, "def main():", 300)  # the running request finished
        assert orchestrator.wait(130) == 0  # a graceful exit
        with pytest.raises(grpc.RpcError) as err:  # and new ones are refused
            client.generate(build_request("x", max_new_tokens=2))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        stack.start_role("orchestrator")  # a new orchestrator finds the same target and draft
        stack._wait("orchestrator", 60)
        with Client(stack.address, timeout_s=60) as again:
            out = again.generate(build_request("import os", max_new_tokens=12, ignore_eos=True))
        assert out.token_ids == greedy(tiny_pair, "import os", 12)


# ---- hostile input ---------------------------------------------------------------------------------

ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
           grpc.StatusCode.FAILED_PRECONDITION}
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 0.5, 1.0, -1.0, 2.0]))
int32 = st.integers(min_value=-2**31, max_value=2**31 - 1)
text = st.one_of(st.text(max_size=200), st.sampled_from(["", "def f():", "x" * 70_000]))


@st.composite
def generate_requests(draw) -> bytes:
    r = orchestrator_pb2.GenerateRequest()
    if draw(st.booleans()):
        r.prompt = draw(text)
    elif draw(st.booleans()):
        for _ in range(draw(st.integers(0, 3))):
            r.chat.messages.add(role=draw(st.sampled_from(["user", "system", "assistant", "", "robot"])),
                                content=draw(text))
    r.sampling.temperature = draw(floats)
    r.sampling.top_k = draw(int32)
    if draw(st.booleans()):
        r.sampling.top_p = draw(floats)
    if draw(st.booleans()):
        r.sampling.seed = draw(st.integers(0, 2**64 - 1))
    if draw(st.booleans()):
        r.max_new_tokens = draw(st.one_of(int32, st.integers(1, 6)))
    if draw(st.booleans()):
        r.k = draw(st.one_of(int32, st.integers(0, 16)))
    r.stop.extend(draw(st.lists(text, max_size=3)))
    r.ignore_eos = draw(st.booleans())
    r.proposer = draw(st.one_of(st.integers(0, 3), int32))  # unknown enum values included
    data = r.SerializeToString()
    if draw(st.booleans()):  # invalid UTF-8 in a stop string, written at the wire level (field 5)
        data += bytes([0x2A, 3, 0xFF, 0xFE, 0xC0])
    if draw(st.integers(0, 5)) == 0:
        data = draw(st.binary(max_size=64))  # arbitrary bytes
    return data


@pytest.fixture(scope="module")
def hostile_stack():
    limit = ["--max-new-tokens-limit", "6"]
    with running_stack(orchestrator=limit, target=limit) as stack:
        yield stack


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=generate_requests())
def test_hostile_generate_requests_get_precise_codes(hostile_stack, payload):
    with grpc.insecure_channel(hostile_stack.address) as ch:
        call = ch.unary_stream("/specdec.v1.Orchestrator/Generate", request_serializer=lambda b: b,
                               response_deserializer=orchestrator_pb2.GenerateResponse.FromString)
        try:
            for _ in call(payload, timeout=30):
                pass
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
            assert code in ALLOWED, (code, exc.details())
            assert exc.details(), "every error says why"
        stub = orchestrator_pb2_grpc.OrchestratorStub(ch)
        ok = list(stub.Generate(build_request("x = 1", max_new_tokens=2), timeout=30))
        assert sum(len(m.token_ids) for m in ok) == 2


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=64))
def test_hostile_server_info_requests(hostile_stack, payload):
    with grpc.insecure_channel(hostile_stack.address) as ch:
        call = ch.unary_unary("/specdec.v1.Orchestrator/GetServerInfo", request_serializer=lambda b: b,
                              response_deserializer=orchestrator_pb2.GetServerInfoResponse.FromString)
        try:
            call(payload, timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() in ALLOWED, (exc.code(), exc.details())
