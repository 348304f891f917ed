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
