"""TextStream: incremental text that never has to be taken back, and stop strings."""

import random

import pytest

from specdec.core.detokenize import TextStream
from specdec.core.models import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny")


def stream_all(tokenizer, ids, stop=()):
    text = TextStream(tokenizer, stop)
    deltas = []
    for token in ids:
        deltas.append(text.push(token))
        if text.stopped:
            break
    deltas.append(text.flush())
    return text, deltas


def test_deltas_add_up_to_the_decoded_text(tokenizer):
    ids = tokenizer("def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1)\n")["input_ids"]
    text, deltas = stream_all(tokenizer, ids)
    assert "".join(deltas) == text.text == tokenizer.decode(ids, skip_special_tokens=True)
    assert sum(1 for d in deltas if d) > 5  # streamed, not all at the end


def test_a_multibyte_character_is_never_split(tokenizer):
    ids = tokenizer("naïve café → λ")["input_ids"]
    _, deltas = stream_all(tokenizer, ids)
    assert "\ufffd" not in "".join(deltas) and "".join(deltas) == "naïve café → λ"


def test_stop_string_ends_the_text_before_it_and_is_never_emitted(tokenizer):
    ids = tokenizer("x = 1\ny = 2\nSTOP here\nz = 3\n")["input_ids"]
    text, deltas = stream_all(tokenizer, ids, stop=("STOP",))
    assert text.stopped and "".join(deltas) == text.text == "x = 1\ny = 2\n"
    assert all("S" not in d for d in deltas)  # a prefix of the stop string was held back, then dropped


def test_text_that_only_might_become_a_stop_string_is_released_at_the_end(tokenizer):
    ids = tokenizer("a = 1\nST")["input_ids"]
    text, deltas = stream_all(tokenizer, ids, stop=("STOP",))
    assert not text.stopped and "".join(deltas) == "a = 1\nST"


def test_push_after_the_stop_is_a_bug(tokenizer):
    text = TextStream(tokenizer, ("x",))
    for token in tokenizer("a x b")["input_ids"]:
        if text.stopped:
            break
        text.push(token)
    with pytest.raises(AssertionError):
        text.push(5)


def test_the_fast_decoder_streams_what_transformers_decode_streams(tokenizer):
    """TextStream decodes through a fast tokenizer's backend; any ids, special ones and broken UTF-8
    included, give the same deltas as through transformers' decode()."""

    class Decoding:  # the tokenizer without its backend: TextStream goes through decode()
        def decode(self, *args, **kwargs):
            return tokenizer.decode(*args, **kwargs)

    assert tokenizer.backend_tokenizer is not None
    rng = random.Random(0)
    vocab = len(tokenizer)
    for _ in range(20):
        ids = [rng.randrange(vocab) for _ in range(120)]
        assert stream_all(tokenizer, ids, ("\n\n",))[1] == stream_all(Decoding(), ids, ("\n\n",))[1]
