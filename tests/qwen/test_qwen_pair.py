"""Greedy equality on the real Qwen2.5-Coder pair (0.5B draft -> 1.5B target), when its files exist.

Fetch them with ../shared/models/fetch-qwen-coder-pair (1.6 GB, kept out of git).
"""

import pytest

from specdec.core.config import GenerationRequest, SpeculationConfig
from specdec.core.decoder import SpeculativeDecoder
from specdec.core.pair import ModelPair, PairConfig
from specdec.proposers import make_factory
from tests.conftest import QWEN_DIR

pytestmark = [
    pytest.mark.qwen,
    pytest.mark.skipif(not (QWEN_DIR / "target.gguf").exists() or not (QWEN_DIR / "draft.gguf").exists(),
                       reason=f"Qwen2.5-Coder GGUF pair not in {QWEN_DIR} (run ../shared/models/fetch-qwen-coder-pair)"),
]


def test_greedy_equals_target_only_on_real_pair():
    engine = ModelPair.load(PairConfig(target=str(QWEN_DIR / "target.gguf"), draft=str(QWEN_DIR / "draft.gguf"),
                                      max_len=512, max_sessions=2), make_factory)
    prompts = ['def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
               "from typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n"]
    for prompt in prompts:
        request = GenerationRequest(prompt_ids=engine.encode(prompt), max_new_tokens=24, ignore_eos=True)
        outputs = {}
        for k in (0, 3):
            decoder = SpeculativeDecoder(engine.target_runner, engine.tokenizer, engine.eos_ids,
                                         engine.decoder.proposers, SpeculationConfig(k=k))
            outputs[k] = decoder.generate(request)
        assert outputs[3].token_ids == outputs[0].token_ids
        assert outputs[3].stats.mean_acceptance_length > 1.5
