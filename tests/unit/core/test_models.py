"""Model loading and the vocabulary check."""

import shutil

import pytest
import torch
from tokenizers import Tokenizer

from specdec.core.config import GenerationRequest
from specdec.core.errors import InvalidArgument, VocabularyMismatch
from specdec.core.int8 import Int8Linear
from specdec.core.models import ASSETS, check_same_vocabulary, load_model
from specdec.core.pair import ModelPair, PairConfig
from specdec.proposers import make_factory


def test_tiny_pair_loads_with_matching_vocabulary():
    target, draft = load_model("tiny", "target"), load_model("tiny", "draft")
    check_same_vocabulary(target, draft)
    ids = target.tokenizer("def f(x):\n    return x")["input_ids"]
    assert target.tokenizer.decode(ids) == "def f(x):\n    return x"


def test_mismatched_tokenizer_is_refused_naming_the_difference(tmp_path):
    other = tmp_path / "other-draft"
    shutil.copytree(ASSETS / "draft", other)
    tok = Tokenizer.from_file(str(other / "tokenizer.json"))
    vocab = tok.get_vocab()
    a, b = vocab["def"], vocab["class"]  # swap two ids: same size, different meaning
    raw = (other / "tokenizer.json").read_text()
    raw = raw.replace(f'"def": {a},', f'"def": {b},', 1).replace(f'"class": {b},', f'"class": {a},', 1)
    (other / "tokenizer.json").write_text(raw)
    target, draft = load_model("tiny", "target"), load_model(str(other), "draft")
    with pytest.raises(VocabularyMismatch) as err:
        check_same_vocabulary(target, draft)
    message = str(err.value)
    assert "different tokenizers" in message and str(other) in message and "'tiny'" in message
    assert f"token id {min(a, b)}" in message


def test_unknown_model_gets_a_clear_error():
    with pytest.raises(InvalidArgument) as err:
        load_model("no-such-org/no-such-model", "target")
    assert "local cache" in str(err.value)
    with pytest.raises(InvalidArgument, match="does not exist"):
        load_model("/nonexistent/model.gguf", "draft")


@pytest.mark.parametrize("tied", [True, False])
def test_planted_greedy_chain_survives_bf16_and_agrees_across_models(tied):
    """Random-weight replay benches rely on it: decode and (k+1)-token verify agree in bf16, and two
    different random models (a tied-embedding draft, an untied target) follow the same chain."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from specdec.core.random_models import plant_greedy_path

    def build(seed: int, layers: int):
        torch.manual_seed(seed)
        config = Qwen2Config(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=layers,
                             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
        model = Qwen2ForCausalLM(config).to(torch.bfloat16).eval()
        plant_greedy_path(model)
        return model

    target, draft = build(0, 8), build(1, 2)
    assert target.get_output_embeddings().weight.data_ptr() != target.get_input_embeddings().weight.data_ptr()
    prompt = torch.tensor([[7, 300, 41, 9]])
    with torch.inference_mode():
        chain = target.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)[0, 4:].tolist()
        assert chain == [(9 - i) % 512 for i in range(1, 13)]  # token t is followed by t - 1
        assert draft.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)[0, 4:].tolist() == chain
        verify = target(torch.tensor([[7, 300, 41, 9] + chain[:5]])).logits[0, 3:].argmax(-1).tolist()
    assert verify == chain[:6]  # one 6-token forward gives the same argmaxes as step-by-step decoding


def test_int8_rows_are_quantized_each_on_its_own():
    """An Int8Linear's output for a row is the same bits whatever else is in the call (a batched draft step's
    proposals for one session never move with the others'), and close to the float layer's."""
    torch.manual_seed(0)
    dense = torch.nn.Linear(64, 48)
    layer = Int8Linear(dense)
    x = torch.randn(2, 5, 64)  # [batch, tokens, features]
    x[1] *= 40  # a row with far larger activations: one scale for the call would coarsen the others
    together = layer(x)
    for b in range(2):
        for t in range(5):
            assert torch.equal(layer(x[b, t][None]), together[b, t][None])
    want = dense(x)
    assert ((together - want).norm(dim=-1) / want.norm(dim=-1)).max() < 0.03  # the small rows too
    assert together.shape == (2, 5, 48) and together.dtype == x.dtype


def test_int8_draft_is_quantized_and_changes_no_output():
    """A dynamically quantized draft only moves acceptance: greedy output stays the target's. It is what
    `auto` means for a draft on a CPU."""
    engine = ModelPair.load(PairConfig(max_len=256), make_factory)
    assert isinstance(engine.draft.model.get_output_embeddings(), Int8Linear)
    plain = ModelPair.load(PairConfig(draft=None, max_len=256), make_factory)
    for prompt in ["def add(a, b):", "class Stack:\n    def push(self, x):"]:
        request = GenerationRequest(prompt_ids=engine.encode(prompt), max_new_tokens=32, ignore_eos=True)
        spec = engine.decoder.generate(request)
        assert spec.token_ids == plain.decoder.generate(request).token_ids
        assert spec.stats.accepted_tokens > 0
    with pytest.raises(InvalidArgument, match="int8 is a CPU draft option"):
        load_model("tiny", "draft", device="cuda:0", dtype="int8")
