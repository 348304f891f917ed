import pytest
import torch

from specdec.core.config import SamplingParams
from specdec.core.errors import InvalidArgument
from specdec.core.sampling import (
    NUCLEUS_CANDIDATES,
    Stream,
    draw,
    draw_on_device,
    nucleus,
    process_logits,
    process_rows,
    process_rows_first,
    sample_from,
    uniform,
)


def test_uniform_is_a_pure_function_of_seed_position_stream():
    assert uniform(7, 3, Stream.ACCEPT) == uniform(7, 3, Stream.ACCEPT)
    values = {uniform(7, p, s) for p in range(50) for s in Stream}
    assert len(values) == 50 * len(Stream) and all(0.0 <= v < 1.0 for v in values)


def test_top_k_keeps_exactly_k_tokens():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    probs = process_logits(logits, SamplingParams(temperature=1.0, top_k=2))
    assert probs[0].nonzero().flatten().tolist() == [1, 3]
    assert torch.isclose(probs.sum(), torch.tensor(1.0))


def test_top_p_keeps_smallest_prefix_reaching_mass():
    probs_in = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    probs = process_logits(probs_in.log(), SamplingParams(temperature=1.0, top_p=0.75))
    assert probs[0].nonzero().flatten().tolist() == [0, 1]  # 0.5 < 0.75 <= 0.8
    assert torch.allclose(probs[0, :2], torch.tensor([0.5, 0.3]) / 0.8)


def _outside_nucleus_by_full_sort(probs, top_p):
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    drop = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) >= top_p
    drop[:, 0] = False
    return torch.zeros_like(drop).scatter(-1, order, drop)


@pytest.mark.parametrize("scale", [12.0, 4.0, 0.5])  # nuclei of tens, thousands, most of the vocabulary
def test_the_nucleus_found_among_the_likeliest_tokens_is_the_one_a_full_sort_finds(scale, monkeypatch):
    """Rows whose nucleus lies within the first candidates never sort the vocabulary; wider ones widen the search;
    either way the dropped set equals a full sort's."""
    generator = torch.Generator().manual_seed(int(scale * 10))
    probs = torch.softmax(torch.randn(4, 50_000, generator=generator) * scale, dim=-1)  # [n, V]
    for top_p in (0.5, 0.9, 0.95):
        expected = _outside_nucleus_by_full_sort(probs, top_p)
        kept = (~expected).sum(-1)
        if int(kept.max()) < NUCLEUS_CANDIDATES[0]:
            monkeypatch.setattr(torch, "sort", lambda *a, **k: pytest.fail("sorted the whole vocabulary"))
        got = nucleus(probs, top_p)
        assert torch.equal(got == 0, expected), (scale, top_p, kept.tolist())
        torch.testing.assert_close(got, probs.masked_fill(expected, 0.0) / probs.masked_fill(expected, 0.0).sum(
            -1, keepdim=True), rtol=1e-6, atol=0)  # renormalised over the kept tokens
        monkeypatch.undo()
    widest = int((~_outside_nucleus_by_full_sort(probs, 0.95)).sum(-1).max())
    assert widest > NUCLEUS_CANDIDATES[0] or scale == 12.0  # the wider searches and the full sort are exercised


def test_temperature_sharpens():
    logits = torch.tensor([[1.0, 2.0]])
    hot = process_logits(logits, SamplingParams(temperature=2.0))
    cold = process_logits(logits, SamplingParams(temperature=0.5))
    assert cold[0, 1] > hot[0, 1]


def test_sample_from_never_returns_zero_probability_tokens():
    probs = torch.tensor([0.0, 0.5, 0.0, 0.5, 0.0])
    draws = {sample_from(probs, uniform(1, i, Stream.RESIDUAL)) for i in range(500)}
    assert draws == {1, 3}
    assert sample_from(probs, 0.0) == 1 and sample_from(probs, 0.999999) == 3


@pytest.mark.parametrize("kwargs, field", [
    (dict(temperature=-1.0), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=-1), "top_k"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(seed=-3), "seed"),
])
def test_invalid_sampling_params_name_the_field(kwargs, field):
    with pytest.raises(InvalidArgument) as err:
        SamplingParams(**kwargs).validate()
    assert err.value.field == field


def test_rows_processed_and_drawn_together_are_what_each_row_gets_alone():
    """A step's sampled rows are processed and drawn at once (process_rows, draw: as the batched engine verifies):
    each row's token is the one it gets alone (its distribution the same up to a sum's last bit), whatever its
    neighbours' settings or how far their nucleus searches reach (a peaked row's is found among the first
    candidates, a flat row's needs the full sort)."""
    torch.manual_seed(0)
    scales = [4.0, 2.0, 0.05, 8.0, 3.0, 1.0, 4.0]  # nuclei of ~150, ~15k, ~38k, 5, ~4k, ~30k, ~150 tokens at top-p 0.95
    logits = torch.randn(len(scales), 40000) * torch.tensor(scales)[:, None]  # [7, V]
    top_p = SamplingParams(temperature=1.0, top_p=0.95)
    params = [top_p, top_p, top_p, SamplingParams(temperature=0.7, top_k=50), top_p, top_p,
              SamplingParams(temperature=1.3)]
    u = [uniform(5, 100 + i, Stream.RESIDUAL) for i in range(len(scales))]
    processed = [process_logits(logits[i:i + 1], p)[0] for i, p in enumerate(params)]
    together = process_rows(logits, params)
    for i, row in enumerate(processed):  # the same arithmetic; a sum over one row may split differently across threads
        torch.testing.assert_close(together[i], row, rtol=1e-6, atol=1e-9)
        assert torch.equal(together[i] > 0, row > 0)  # the same tokens kept
    alone = [sample_from(row, x) for row, x in zip(processed, u)]
    assert draw(together, u) == alone
    first, found = process_rows_first(logits, params)  # no host read: the nucleus among the first candidates only
    assert found.tolist() == [True, False, False, True, False, False, True]  # ~150, 15k, 38k, top-k, ~4k, 30k, none
    for i in (0, 3, 6):
        torch.testing.assert_close(first[i], processed[i], rtol=1e-6, atol=1e-9)
    assert [draw_on_device(first, u)[i].item() for i in (0, 3, 6)] == [alone[i] for i in (0, 3, 6)]
    assert len(set(alone)) > 1
    probs = torch.softmax(logits, dim=-1)
    together = nucleus(probs, 0.95)  # each row's search stops where its own nucleus ends
    for i in range(len(scales)):
        alone_row = nucleus(probs[i:i + 1], 0.95)[0]
        assert torch.equal(together[i] > 0, alone_row > 0), i  # the same tokens kept
        torch.testing.assert_close(together[i], alone_row, rtol=1e-6, atol=1e-9)  # a sum's last bit aside
    assert [int((together[i] > 0).sum()) for i in (3, 0, 4, 1, 2)] == sorted(int((together[i] > 0).sum())
                                                                               for i in (3, 0, 4, 1, 2))
