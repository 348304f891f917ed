"""Greedy exactness across a sweep's points: the reference per prompt, each difference found once, and the
target's top-2 logit gap where it differs."""

import pytest
import torch

from specdec.tools.exactness import Mismatch, first_difference, mismatches, references, top2_gap
from tests.conftest import PROMPTS, greedy


def point(mode, c, outputs):
    return {"mode": mode, "concurrency": c, "outputs": outputs}


def test_every_difference_from_the_plain_reference_is_found_once():
    points = [point("services", 1, [[0, 1, 2, 3], [1, 7, 8]]),
              point("target-only", 4, [[0, 1, 2, 9]]),  # a later level of the reference mode
              point("target-only", 1, [[0, 1, 2, 3], [1, 7, 8]]),
              point("engine-spec", 4, [[0, 1, 5, 3], [0, 1, 5, 3], [1, 7, 8], [0, 1, 2]]),
              point("hf-generate", 4, None)]  # no outputs: not compared
    reference = references(points)
    assert reference == {0: [1, 2, 3], 1: [7, 8]}  # target-only at 1 client, though listed after others
    found = mismatches(points, reference)
    assert [(m.mode, m.concurrency, m.prompt, m.position, m.expected, m.got) for m in found] == [
        ("target-only", 4, 0, 2, 3, 9), ("engine-spec", 4, 0, 1, 2, 5), ("engine-spec", 4, 0, 2, 3, -1)]
    assert mismatches([points[2]], reference) == [] and first_difference([1, 2], [1, 2, 3]) == 2
    assert "token 1 is 5, the reference has 2" in str(found[1]) and Mismatch("m", 1, 0, 0, 1, 2).gap is None


def test_a_warm_up_round_is_checked_against_as_much_of_the_reference():
    """A level's warm-up requests generate another number of tokens: each must agree with the reference as far as
    both go."""
    reference = {0: [1, 2, 3, 4], 1: [7, 8, 9]}
    good = {"mode": "services", "concurrency": 1, "outputs": [], "warm_up_outputs": [[0, 1, 2], [1, 7, 8, 9, 6]]}
    bad = {"mode": "services", "concurrency": 4, "outputs": [[0, 1, 2, 3, 4]], "warm_up_outputs": [[0, 1, 5]]}
    assert mismatches([good], reference) == []
    found = mismatches([good, bad], reference)
    assert [(m.concurrency, m.prompt, m.position, m.expected, m.got, m.warm_up) for m in found] == [
        (4, 0, 1, 2, 5, True)]
    assert "services at 4 clients (its warm-up round), prompt 0: token 1 is 5" in str(found[0])


def test_the_top2_gap_is_the_target_own_margin_there(tiny_pair):
    ids = tiny_pair.encode(PROMPTS[0])
    out = greedy(tiny_pair, PROMPTS[0], 6)
    gap = top2_gap(tiny_pair.target.model, ids + out[:3])
    with torch.inference_mode():
        logits = tiny_pair.target.model(torch.tensor([ids + out[:3]])).logits[0, -1]
    first, second = logits.topk(2).values.tolist()
    assert gap == first - second > 0 and int(logits.argmax()) == out[3]  # the margin of greedy's 4th token


def test_the_bench_reports_where_a_mode_differs_with_the_gap(tiny_pair):
    from specdec.tools.bench import BenchSettings, ModeResult, Prompt, mismatch_details

    prompts = [Prompt(p, tiny_pair.encode(p)) for p in PROMPTS[:2]]
    plain = [greedy(tiny_pair, p.text, 6) for p in prompts]
    spec = ModeResult("spec", token_ids=[plain[0], plain[1][:4] + [plain[1][4] + 1, plain[1][5]]])
    results = {"target-only": ModeResult("target-only", token_ids=plain), "spec": spec}
    found = mismatch_details(results, ["target-only", "spec"], prompts, BenchSettings())
    assert [(m.mode, m.prompt, m.position, m.expected, m.got) for m in found] == [
        ("spec", 1, 4, plain[1][4], plain[1][4] + 1)]
    # the bench loads the target again (stock linears here, oneDNN-packed in the pair): the same margin, rounded
    assert found[0].gap == pytest.approx(top2_gap(tiny_pair.target.model, prompts[1].ids + plain[1][:4]), abs=1e-3)
    assert found[0].gap > 0
