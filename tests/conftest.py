"""Shared fixtures: the built-in tiny pair, loaded once per test session."""

from __future__ import annotations

import pathlib

import pytest
import torch

from specdec.engine import Engine, EngineConfig

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
def tiny_engine() -> Engine:
    torch.manual_seed(0)
    return Engine.load(EngineConfig(target="tiny", draft="tiny", max_len=512, max_sessions=16))
