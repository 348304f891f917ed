import pytest
import torch

from specdec.core.config import SamplingParams
from specdec.core.errors import InvalidArgument
from specdec.core.sampling import Stream, process_logits, sample_from, uniform


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
