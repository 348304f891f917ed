"""What a cycle commits: the tokens that fit the request and the context, up to the first end-of-sequence token."""

import pytest

from specdec.core.config import FinishReason, GenerationRequest
from specdec.core.sequence import TargetSequence

EOS = 7


@pytest.fixture
def sequence(tiny_pair):
    made = []

    def make(max_new_tokens: int, prompt_len: int = 3) -> TargetSequence:
        request = GenerationRequest(prompt_ids=list(range(10, 10 + prompt_len)), max_new_tokens=max_new_tokens)
        made.append(TargetSequence(tiny_pair.target_runner, request, {EOS}, seed=0))
        return made[-1]
    yield make
    for s in made:
        s.close()


@pytest.mark.parametrize("tokens, max_new, committed, reason", [
    ([1, 2, 3], 5, [1, 2, 3], None),
    ([1, EOS, 3], 5, [1, EOS], FinishReason.EOS),
    ([1, 2, 3], 2, [1, 2], FinishReason.LENGTH),
    ([1, 2], 2, [1, 2], FinishReason.LENGTH),
    ([1, EOS, 3], 2, [1, EOS], FinishReason.EOS),  # the last token that fits is the end: the end it is
    ([1, 2, EOS], 2, [1, 2], FinishReason.LENGTH),  # an end past the limit is never committed
    ([EOS, EOS], 5, [EOS], FinishReason.EOS),
])
def test_a_cycle_commits_what_fits_up_to_the_first_end(sequence, tokens, max_new, committed, reason):
    s = sequence(max_new)
    assert s._commit(tokens) == committed
    assert s.generated == committed
    assert s.finish_reason == reason


def test_the_context_bounds_what_a_cycle_commits(sequence, tiny_pair):
    max_len = tiny_pair.target_runner.max_len
    s = sequence(10_000, prompt_len=max_len - 1)  # room for two more tokens: the last one is never cached
    assert s._commit([1, 2, 3]) == [1, 2]
    assert s.finish_reason == FinishReason.LENGTH
    assert s._commit([4]) == []
