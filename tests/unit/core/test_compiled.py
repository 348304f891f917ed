"""Compiled decoder layers (core.compiled): what is compiled, and a clear error where nothing can be. Compiling
itself runs on a GPU (tests/gpu: the engines there compile by default and must compile nothing once serving);
on this CI's two cores tracing the tiny model takes about a minute."""

import pytest
import torch

from specdec.core.batching import BatchedRunner
from specdec.core.compiled import compile_layers, decoder_layers
from specdec.core.errors import InvalidArgument


def test_the_decoder_layers_are_what_gets_compiled(tiny_pair):
    model = tiny_pair.target.model
    assert len(decoder_layers(model)) == model.config.num_hidden_layers


def test_a_model_without_decoder_layers_is_refused_not_run_uncompiled():
    with pytest.raises(InvalidArgument, match="compile: Linear has no \\*DecoderLayer modules.*--no-compile"):
        compile_layers(torch.nn.Linear(2, 2))


def test_a_cpu_runner_does_not_compile(tiny_pair_fp32):
    runner = BatchedRunner(tiny_pair_fp32.target.model, launch=None, max_len=64, max_sessions=2, compile=True)
    assert not runner.cuda_graphs and not runner.compiled


def test_compiling_raises_the_recompile_limit_and_never_falls_back_to_eager(monkeypatch):
    """Past dynamo's limit of programs per frame a new shape would run uncompiled, silently: compile_layers raises
    the limit past the engine's shape classes and makes reaching it an error. (A fresh one-layer model: nothing
    is traced until it runs, so this costs no compile; the process-wide changes are undone after.)"""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.cache_utils import Cache

    from specdec.core.compiled import RECOMPILE_LIMIT

    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=1, intermediate_size=32))
    monkeypatch.setattr(Cache, "update", Cache.update)  # put back at the end
    with torch._dynamo.config.patch(recompile_limit=8, fail_on_recompile_limit_hit=False,
                                    allow_unspec_int_on_nn_module=torch._dynamo.config.allow_unspec_int_on_nn_module):
        assert compile_layers(model) == 1
        assert torch._dynamo.config.recompile_limit == RECOMPILE_LIMIT
        assert torch._dynamo.config.fail_on_recompile_limit_hit
