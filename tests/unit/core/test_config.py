"""Validation lives in the settings' validate(): each bad value is refused there, naming its field."""

import pytest

from specdec.core.config import (
    MAX_K,
    ChatMessage,
    EngineProcessMode,
    GenerationRequest,
    SamplingParams,
    SpeculationConfig,
    TargetRequest,
    TextRequest,
    check_token_ids,
)
from specdec.core.errors import InvalidArgument

LIMITS = dict(max_new_tokens_limit=200, context_len=50, vocab_size=1000)


def refused(field: str, call) -> None:
    with pytest.raises(InvalidArgument) as err:
        call()
    assert err.value.field == field, str(err.value)


@pytest.mark.parametrize("params, field", [
    (SamplingParams(temperature=-1), "temperature"), (SamplingParams(temperature=float("nan")), "temperature"),
    (SamplingParams(temperature=float("inf")), "temperature"), (SamplingParams(top_k=-1), "top_k"),
    (SamplingParams(temperature=1, top_p=0.0), "top_p"), (SamplingParams(temperature=1, top_p=1.01), "top_p"),
    (SamplingParams(seed=-1), "seed"), (SamplingParams(seed=2**63), "seed")])
def test_sampling_refuses(params, field):
    refused(field, params.validate)


def test_sampling_accepts_the_edges():
    for ok in (SamplingParams(), SamplingParams(temperature=1e-300, top_p=5e-324, top_k=1, seed=2**63 - 1)):
        assert ok.validate() is ok
    assert SamplingParams().greedy and not SamplingParams(temperature=1e-9).greedy


def test_speculation_names_the_callers_field():
    assert SpeculationConfig(k=0).validate() and SpeculationConfig(k=MAX_K).validate()
    refused("k", SpeculationConfig(k=MAX_K + 1).validate)
    refused("start.k", lambda: SpeculationConfig(k=-1).validate("start.k"))
    refused("max_k", SpeculationConfig(max_k=0).validate)


@pytest.mark.parametrize("request_, field", [
    (GenerationRequest(prompt_ids=[]), "prompt"),
    (GenerationRequest(prompt_ids=[1, 1000]), "prompt_ids"),
    (GenerationRequest(prompt_ids=[-1]), "prompt_ids"),
    (GenerationRequest(prompt_ids=[1], max_new_tokens=0), "max_new_tokens"),
    (GenerationRequest(prompt_ids=[1], max_new_tokens=201), "max_new_tokens"),
    (GenerationRequest(prompt_ids=[1] * 50), "prompt"),  # no room for one new token
    (GenerationRequest(prompt_ids=[1], stop=("",)), "stop"),
    (GenerationRequest(prompt_ids=[1], stop=("x" * 257,)), "stop"),
    (GenerationRequest(prompt_ids=[1], stop=("x",) * 17), "stop"),
    (GenerationRequest(prompt_ids=[1], sampling=SamplingParams(top_k=-2)), "top_k")])
def test_generation_request_refuses(request_, field):
    refused(field, lambda: request_.validate(**LIMITS))


def test_generation_request_at_the_limits_passes():
    ok = GenerationRequest(prompt_ids=[999] * 49, max_new_tokens=200, stop=("x" * 256,) * 16)
    assert ok.validate(**LIMITS) is ok


def test_text_request_checks_what_precedes_tokenizing():
    refused("prompt", TextRequest(prompt="").validate)
    refused("chat.messages", TextRequest(messages=()).validate)
    refused("chat.messages[1].role", TextRequest(messages=(ChatMessage("user", "a"), ChatMessage("robot", "b"))).validate)
    refused("k", TextRequest(prompt="x", k=MAX_K + 1).validate)
    assert TextRequest(messages=(ChatMessage("system", "s"), ChatMessage("user", "u"))).validate().texts == ["s", "u"]


def test_target_request_checks_its_session_and_generation():
    generation = GenerationRequest(prompt_ids=[1, 2])
    refused("session_id", lambda: TargetRequest("", generation, seed=0).validate(**LIMITS))
    refused("k", lambda: TargetRequest("s", generation, 0, SpeculationConfig(k=99)).validate(**LIMITS))
    refused("prompt_ids", lambda: TargetRequest("s", GenerationRequest(prompt_ids=[5000]), 0).validate(**LIMITS))
    refused("own_draft", lambda: TargetRequest("s", generation, 0, SpeculationConfig(k=2), "d:1",
                                               own_draft=True).validate(**LIMITS))
    assert TargetRequest("s", generation, 0).validate(**LIMITS)


def test_token_ids_without_a_vocabulary_need_only_be_non_negative():
    check_token_ids("ids", [0, 10**9], None)
    refused("ids", lambda: check_token_ids("ids", [3, -1], None))


def test_engine_process_auto_splits_a_cuda_target_only():
    apart = {(mode, device): mode.apart(device) for mode in EngineProcessMode for device in ("cpu", "cuda", "cuda:1")}
    assert apart == {(EngineProcessMode.AUTO, "cpu"): False, (EngineProcessMode.AUTO, "cuda"): True,
                     (EngineProcessMode.AUTO, "cuda:1"): True, (EngineProcessMode.ON, "cpu"): True,
                     (EngineProcessMode.ON, "cuda"): True, (EngineProcessMode.ON, "cuda:1"): True,
                     (EngineProcessMode.OFF, "cpu"): False, (EngineProcessMode.OFF, "cuda"): False,
                     (EngineProcessMode.OFF, "cuda:1"): False}


@pytest.mark.parametrize("flags, mode", [([], "auto"), (["--engine-process"], "on"),
                                         (["--engine-process", "off"], "off"), (["--engine-process", "on"], "on")])
def test_engine_process_flag(flags, mode):
    from specdec.cli import build_parser

    assert build_parser()[0].parse_args(["serve", "target", *flags]).engine_process == mode
    assert build_parser()[0].parse_args(["up", *flags]).engine_process == mode
