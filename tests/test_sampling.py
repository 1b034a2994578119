"""SamplingConfig validation and the logits -> probabilities transforms (temperature, top-k, top-p)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from engine.errors import ConfigError, EngineError
from engine.sampling import SamplingConfig, check_finite, logits_to_probs, sample

LOGITS = torch.tensor([[3.0, 1.0, 2.0, -1.0, 0.5, 0.0]])  # distinct values; ranking 0, 2, 1, 4, 5, 3


def kept(probs: torch.Tensor) -> set[int]:
    return {i for i, p in enumerate(probs[0].tolist()) if p > 0}


@pytest.mark.parametrize("k, expected", [(1, {0}), (2, {0, 2}), (3, {0, 2, 1}), (5, {0, 2, 1, 4, 5})])
def test_top_k_keeps_exactly_the_k_best(k, expected):
    probs = logits_to_probs(LOGITS, SamplingConfig(temperature=1.0, top_k=k))
    assert kept(probs) == expected
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-6)
    # the survivors keep their relative odds: softmax over the kept logits
    idx = sorted(expected)
    torch.testing.assert_close(probs[0, idx], torch.softmax(LOGITS[0, idx], dim=-1))


@pytest.mark.parametrize("k", [0, 6, 50])
def test_top_k_off_or_larger_than_vocab_keeps_everything(k):
    probs = logits_to_probs(LOGITS, SamplingConfig(temperature=1.0, top_k=k))
    torch.testing.assert_close(probs, torch.softmax(LOGITS, dim=-1))


# probabilities 1/2, 1/4, 1/8, 1/16, 1/16 are exact in float32, so nucleus boundaries are exact
DYADIC = torch.log(torch.tensor([[0.0625, 0.5, 0.125, 0.25, 0.0625]]))


@pytest.mark.parametrize(
    "top_p, expected",
    [
        (0.3, {1}),  # the top token alone reaches 0.3
        (0.5, {1}),  # exactly reached by the top token: no more
        (0.51, {1, 3}),
        (0.75, {1, 3}),
        (0.76, {1, 3, 2}),
        (0.875, {1, 3, 2}),
        (0.9, None),  # 0.875 + one of the tied 1/16 tokens reaches 0.9: 4 tokens
        (1.0, {0, 1, 2, 3, 4}),
    ],
)
def test_top_p_keeps_the_smallest_nucleus(top_p, expected):
    probs = logits_to_probs(DYADIC, SamplingConfig(temperature=1.0, top_p=top_p))
    got = kept(probs)
    if top_p == 0.9:
        # the smallest nucleus holds 4 tokens; which of the tied 1/16 tokens completes it is arbitrary
        assert {1, 3, 2} < got and len(got) == 4
    else:
        assert got == expected
    mass = float(torch.softmax(DYADIC, -1)[0, sorted(got)].sum())
    assert mass >= top_p - 1e-6
    # renormalised over the nucleus
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(probs[0, sorted(got)], torch.softmax(DYADIC, -1)[0, sorted(got)] / mass)


def test_top_p_is_minimal():
    """Dropping the least likely kept token always leaves less than top_p of the mass."""
    torch.manual_seed(0)
    logits = torch.randn(20, 12) * 2
    for top_p in (0.2, 0.5, 0.8, 0.95):
        probs = logits_to_probs(logits, SamplingConfig(temperature=1.0, top_p=top_p))
        full = torch.softmax(logits, -1)
        for row in range(logits.shape[0]):
            keep = probs[row] > 0
            mass = float(full[row][keep].sum())
            smallest = float(full[row][keep].min())
            assert mass >= top_p - 1e-5
            assert mass - smallest < top_p + 1e-6
            # the kept set is a prefix of the ranking: every kept token beats every dropped one
            if (~keep).any():
                assert float(full[row][keep].min()) >= float(full[row][~keep].max())


@pytest.mark.parametrize("temperature", [0.25, 0.7, 1.0, 2.0, 5.0])
def test_temperature_scales_logits(temperature):
    probs = logits_to_probs(LOGITS, SamplingConfig(temperature=temperature))
    torch.testing.assert_close(probs, torch.softmax(LOGITS / temperature, dim=-1))


def test_temperature_sharpens_and_flattens():
    cold = logits_to_probs(LOGITS, SamplingConfig(temperature=0.3))[0]
    warm = logits_to_probs(LOGITS, SamplingConfig(temperature=3.0))[0]
    assert float(cold.max()) > float(torch.softmax(LOGITS, -1).max()) > float(warm.max())


def test_greedy_returns_plain_softmax():
    probs = logits_to_probs(LOGITS, SamplingConfig(temperature=0.0, top_k=1, top_p=0.1))
    torch.testing.assert_close(probs, torch.softmax(LOGITS, dim=-1))
    assert SamplingConfig().greedy and not SamplingConfig(temperature=0.5).greedy


def test_transforms_compose_temperature_then_top_k_then_top_p():
    sampling = SamplingConfig(temperature=0.5, top_k=3, top_p=0.9)
    probs = logits_to_probs(LOGITS, sampling)[0]
    scaled = torch.softmax(LOGITS[0, [0, 2, 1]] / 0.5, -1)  # top-3 after temperature
    # scaled = [0.867, 0.117, 0.016]: 0.867 < 0.9, so the nucleus is {0, 2}
    assert kept(probs[None]) == {0, 2}
    torch.testing.assert_close(probs[[0, 2]], scaled[:2] / scaled[:2].sum())


def test_output_dtype_and_shape():
    probs = logits_to_probs(LOGITS.double().repeat(3, 1), SamplingConfig(temperature=1.0, top_k=2))
    assert probs.dtype == torch.float32 and probs.shape == (3, 6)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": -0.5}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_k": True}, "top_k"),
        ({"seed": -3}, "seed"),
    ],
)
def test_sampling_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ConfigError) as info:
        SamplingConfig(**kwargs)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}:")


def test_valid_sampling_configs_and_frozen():
    config = SamplingConfig(temperature=0.0, top_k=0, top_p=1.0, seed=0)
    SamplingConfig(temperature=2, top_k=50, top_p=0.01, seed=123)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.temperature = 1.0  # type: ignore[misc]


def test_generator_is_seeded():
    a = SamplingConfig(temperature=1.0, seed=42).make_generator()
    b = SamplingConfig(temperature=1.0, seed=42).make_generator()
    c = SamplingConfig(temperature=1.0, seed=43).make_generator()
    probs = torch.full((10,), 0.1)
    draws_a = [sample(probs, a) for _ in range(30)]
    assert draws_a == [sample(probs, b) for _ in range(30)]
    assert draws_a != [sample(probs, c) for _ in range(30)]


def test_check_finite_rejects_nan_and_inf():
    check_finite(torch.zeros(2, 3), "target")
    for bad in (float("nan"), float("inf")):
        logits = torch.zeros(2, 3)
        logits[1, 2] = bad
        with pytest.raises(EngineError, match="drafter"):
            check_finite(logits, "drafter")
