"""The three services over real gRPC on loopback: equality, failover, sessions, bad input."""

from __future__ import annotations

import concurrent.futures
import shutil
import signal
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tokenizers import Tokenizer

from specdec.core.config import GenerationRequest, SamplingParams, SpeculationConfig
from specdec.core.decoder import SpeculativeDecoder
from specdec.core.models import ASSETS
from specdec.serving.client import Client, build_request
from specdec.v1 import common_pb2, orchestrator_pb2, target_pb2, target_pb2_grpc
from tests.conftest import PROMPTS
from tests.integration.servers import apart, running_stack

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def stack():
    # target and draft on disjoint CPUs: co-located, the draft would not draft ahead (test_overlap_...);
    # an fp32 draft, so that seeded sampling can be compared with the same draft in process (tiny_pair_fp32);
    # the target streams 3 cycles at a time, so every test here also checks that nothing is lost or reordered
    with running_stack(orchestrator=["--k", "4"], target=["--max-sessions", "16", "--stream-interval", "3",
                                                          *apart("target")],
                       draft=["--max-sessions", "16", "--dtype", "float32", *apart("draft")]) as s:
        yield s


@pytest.fixture(scope="module")
def client(stack):
    with Client(stack.address, timeout_s=120) as c:
        yield c


def in_process(engine, prompt: str, k: int, max_new: int = 40, sampling: SamplingParams = SamplingParams()):
    decoder = SpeculativeDecoder(engine.target_runner, engine.tokenizer, engine.eos_ids, engine.decoder.proposers,
                                 SpeculationConfig(k=k))
    request = GenerationRequest(prompt_ids=engine.encode(prompt), max_new_tokens=max_new, sampling=sampling,
                                ignore_eos=True)
    return decoder.generate(request)


def target_sessions(stack) -> int:
    with grpc.insecure_channel(stack.addresses()["target"]) as ch:
        return target_pb2_grpc.TargetServiceStub(ch).DescribeTarget(target_pb2.DescribeTargetRequest()).info


@pytest.mark.parametrize("k", [1, 4, 8])
def test_greedy_through_orchestrator_equals_target_only(client, tiny_pair, k):
    for prompt in PROMPTS[:6]:
        expected = in_process(tiny_pair, prompt, k=0).token_ids
        result = client.generate(build_request(prompt, max_new_tokens=40, k=k, ignore_eos=True))
        assert result.token_ids == expected, prompt
        assert result.text == tiny_pair.tokenizer.decode(expected)
        spec = result.summary.speculation
        assert spec.drafts > 0 and spec.draft_tokens <= k * spec.drafts


def test_overlap_drafts_ahead_and_hits(client):
    result = client.generate(build_request(PROMPTS[0], max_new_tokens=120, k=4, ignore_eos=True))
    spec = result.summary.speculation
    assert spec.overlap_hits > 0, spec
    assert spec.overlap_hits + spec.overlap_misses == spec.drafts


def test_seeded_sampling_equals_in_process_speculative_run(client, tiny_pair_fp32):
    sampling = SamplingParams(temperature=0.9, top_k=40, top_p=0.95, seed=1234)
    for prompt in PROMPTS[:4]:
        expected = in_process(tiny_pair_fp32, prompt, k=4, sampling=sampling).token_ids
        result = client.generate(build_request(prompt, max_new_tokens=40, k=4, ignore_eos=True, sampling=sampling))
        assert result.token_ids == expected, prompt


def test_concurrent_clients_get_correct_outputs(stack, tiny_pair):
    prompts = PROMPTS[:8]
    expected = {p: in_process(tiny_pair, p, k=0, max_new=30).token_ids for p in prompts}

    def one(prompt):
        with Client(stack.address, timeout_s=120) as c:
            return prompt, c.generate(build_request(prompt, max_new_tokens=30, ignore_eos=True)).token_ids

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = dict(pool.map(one, prompts))
    assert results == expected


def test_cancelling_a_request_frees_its_sessions(stack, client):
    stream = client.stream(build_request(PROMPTS[3], max_new_tokens=2000, ignore_eos=True))
    next(stream)
    next(stream)
    stream.cancel()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        response = client.stub.GetServerInfo(orchestrator_pb2.GetServerInfoRequest())
        infos = [*response.targets.values(), *response.drafts.values()]
        if all(i.active_sessions == 0 and i.free_kv_slots == i.max_sessions for i in infos):
            break
        time.sleep(0.1)
    assert len(infos) == 2 and all(i.active_sessions == 0 and i.free_kv_slots == i.max_sessions for i in infos), infos


def test_stop_strings_end_generation(client):
    full = client.generate(build_request(PROMPTS[5], max_new_tokens=40, ignore_eos=True))
    stop = full.text[6:9]
    result = client.generate(build_request(PROMPTS[5], max_new_tokens=40, ignore_eos=True, stop=(stop,)))
    assert result.text == full.text[:full.text.index(stop)]
    assert result.summary.finish_reason == common_pb2.FINISH_REASON_STOP


BAD_REQUESTS = [
    (build_request(""), "prompt"),
    (orchestrator_pb2.GenerateRequest(), "input"),
    (build_request("x", max_new_tokens=0), "max_new_tokens"),
    (build_request("x", max_new_tokens=-5), "max_new_tokens"),
    (build_request("x", max_new_tokens=10**9), "max_new_tokens"),
    (build_request("x", k=17), "k"),
    (build_request("x", k=-1), "k"),
    (build_request("x", sampling=SamplingParams(temperature=-0.5)), "temperature"),
    (build_request("x", sampling=SamplingParams(temperature=1.0, top_p=1.5)), "top_p"),
    (build_request("x", sampling=SamplingParams(temperature=1.0, top_p=0.0)), "top_p"),
    (build_request("x", sampling=SamplingParams(temperature=1.0, top_k=-3)), "top_k"),
    (build_request("x", stop=("",)), "stop"),
    (build_request("def f():\n    pass\n" * 400), "prompt"),
    (build_request(messages=[]), "chat.messages"),
    (build_request(messages=[{"role": "robot", "content": "hi"}]), "chat.messages[0].role"),
]


@pytest.mark.parametrize("request_pb, field", BAD_REQUESTS, ids=[f for _, f in BAD_REQUESTS])
def test_bad_input_gets_invalid_argument_naming_the_field(client, request_pb, field):
    with pytest.raises(grpc.RpcError) as err:
        client.generate(request_pb)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert err.value.details().startswith(f"{field}:"), err.value.details()
    assert client.generate(build_request("x = 1", max_new_tokens=4)).summary.completion_tokens == 4


def test_oversized_message_is_rejected_and_server_keeps_serving(client):
    with pytest.raises(grpc.RpcError) as err:
        client.generate(build_request("a" * (20 * 1024 * 1024)))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.generate(build_request("x = 1", max_new_tokens=4)).summary.completion_tokens == 4


def test_unknown_session_and_bad_internal_calls(stack):
    with grpc.insecure_channel(stack.addresses()["target"]) as ch:
        stub = target_pb2_grpc.TargetServiceStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Generate(target_pb2.TargetGenerateRequest(session_id="", prompt_ids=[1])))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "session_id" in err.value.details()


def test_health_and_reflection_on_every_service(stack):
    expected = {"orchestrator": "specdec.v1.Orchestrator", "target": "specdec.v1.TargetService",
                "draft": "specdec.v1.DraftService"}
    for role, address in stack.addresses().items():
        with grpc.insecure_channel(address) as ch:
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(ch)
            answers = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            names = {s.name for s in next(answers).list_services_response.service}
            assert expected[role] in names and "grpc.health.v1.Health" in names


def test_draft_killed_mid_request_then_restarted(tiny_pair):
    prompt = PROMPTS[0]
    expected = in_process(tiny_pair, prompt, k=0, max_new=100).token_ids
    with running_stack(target=["--draft-timeout", "3.0"]) as stack, Client(stack.address, timeout_s=120) as c:
        tokens, chunks = [], 0
        for msg in c.stream(build_request(prompt, max_new_tokens=100, ignore_eos=True)):
            tokens.extend(msg.token_ids)
            chunks += 1
            if chunks == 3:
                stack.procs["draft"].send_signal(signal.SIGKILL)
            if msg.HasField("summary"):
                summary = msg.summary
        assert tokens == expected
        assert summary.draft_failed
        after = c.generate(build_request(prompt, max_new_tokens=100, ignore_eos=True))  # draft still down
        assert after.token_ids == expected and after.summary.speculation.drafts == 0
        stack.start_role("draft")
        stack._wait("draft", 60)
        stack._wait("orchestrator", 10)  # its health monitor has seen the draft healthy again
        resumed = c.generate(build_request(prompt, max_new_tokens=100, ignore_eos=True))
        assert resumed.token_ids == expected and resumed.summary.speculation.drafts > 0


def test_mismatched_tokenizers_are_refused(tmp_path):
    other = tmp_path / "other-draft"
    shutil.copytree(ASSETS / "draft", other)
    vocab = Tokenizer.from_file(str(other / "tokenizer.json")).get_vocab()
    a, b = vocab["def"], vocab["class"]
    raw = (other / "tokenizer.json").read_text()
    (other / "tokenizer.json").write_text(raw.replace(f'"def": {a},', f'"def": {b},', 1)
                                          .replace(f'"class": {b},', f'"class": {a},', 1))
    with running_stack(draft_model=str(other)) as stack, Client(stack.address, timeout_s=60) as c:
        with pytest.raises(grpc.RpcError) as err:
            c.generate(build_request("def f():", max_new_tokens=4))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert str(other) in err.value.details() and "'tiny'" in err.value.details()
