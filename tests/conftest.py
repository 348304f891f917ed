"""Shared fixtures: the built-in tiny pair, loaded once per test session."""

from __future__ import annotations

import pathlib

import pytest
import torch

from specdec.core.config import GenerationRequest
from specdec.core.pair import ModelPair, PairConfig
from specdec.proposers import make_factory

# Prompts in the style of the corpus the tiny pair was trained on (Python source) plus a few others.
PROMPTS = [
    "def __init__(self", "import os\nimport sys\n", "class Error(Exception):", "    def __repr__(self):",
    "for i in range(", "if __name__ == '__main__':", "    return self.", "def main():\n    ",
    "try:\n    import", "# Copyright", "    raise ValueError(", "with open(", "def _check(", "from . import",
    "while True:\n", "    @property\n    def ", "x = [", "lambda x:", "The quick brown fox", "assert isinstance(",
    "    if not ", "def read(self, size=-1):",
]

QWEN_DIR = pathlib.Path.home() / ".cache" / "specdec" / "qwen2.5-coder"


@pytest.fixture(scope="session")
def tiny_pair() -> ModelPair:
    torch.manual_seed(0)
    return ModelPair.load(PairConfig(target="tiny", draft="tiny", max_len=512, max_sessions=16), make_factory)


@pytest.fixture(scope="session")
def tiny_pair_fp32() -> ModelPair:
    """The tiny pair with an fp32 draft. The default CPU draft is int8, whose dynamic quantization scales
    activations over the whole batch: rows drafted together (branches) then differ slightly from the
    same rows drafted alone, which moves acceptance but not the output."""
    return ModelPair.load(PairConfig(target="tiny", draft="tiny", draft_dtype="float32", max_len=512, max_sessions=16),
                          make_factory)


def greedy(engine: ModelPair, prompt: str, n: int) -> list[int]:
    """The target-only greedy continuation of `prompt` in process: what every path must reproduce."""
    return engine.decoder.generate(GenerationRequest(prompt_ids=engine.encode(prompt), max_new_tokens=n,
                                                     ignore_eos=True)).token_ids
