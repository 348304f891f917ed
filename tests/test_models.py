"""Model loading and the vocabulary check."""

import shutil

import pytest
from tokenizers import Tokenizer

from specdec.errors import InvalidArgument, VocabularyMismatch
from specdec.models import ASSETS, check_same_vocabulary, load_model


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
