"""Linear layers on a calibrated kernel choice: same numbers as F.linear either way, same Parameters, safe fallbacks,
and a calibration that follows its measurements, caches them and can be pinned."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from engine import LoadedModel
from engine.api import build_decoder, run_to_completion
from engine.loading.linear_kernels import (
    ROW_BUCKETS,
    KernelCalibration,
    PackedLinear,
    pack_linears,
    packed_kernel_available,
    pinned_kernel,
)
from engine.sampling import SamplingConfig
from engine.strategies import parse_strategy

from conftest import FakeTokenizer, make_tiny_llama

pytestmark = pytest.mark.skipif(not packed_kernel_available(), reason="this PyTorch build has no oneDNN linear kernel")


def PackedLinear_(linear: nn.Linear) -> PackedLinear:  # noqa: N802  a layer with its own (uncached) calibration
    return PackedLinear(linear, KernelCalibration())


@pytest.mark.parametrize("kernel", ["packed", "plain"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8, 33])
def test_matches_f_linear(bias, rows, kernel):
    generator = torch.Generator().manual_seed(rows)
    linear = nn.Linear(48, 80, bias=bias)
    packed = PackedLinear_(linear)
    x = torch.randn(1, rows, 48, generator=generator)
    with torch.inference_mode(), pinned_kernel(kernel):
        torch.testing.assert_close(packed(x), F.linear(x, linear.weight, linear.bias), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(packed(x[0]), F.linear(x[0], linear.weight, linear.bias), rtol=1e-5, atol=1e-5)


def test_follows_in_place_weight_changes():
    linear = nn.Linear(16, 24, bias=False)
    packed = PackedLinear_(linear)
    x = torch.randn(3, 16)
    with torch.no_grad(), pinned_kernel("packed"):
        before = packed(x)
        linear.weight.mul_(2.0)  # e.g. a training step on a shared module
        after = packed(x)
    torch.testing.assert_close(after, 2.0 * before, rtol=1e-5, atol=1e-5)


def test_autograd_falls_back_to_f_linear():
    linear = nn.Linear(8, 4)
    packed = PackedLinear_(linear)
    x = torch.randn(5, 8, requires_grad=True)
    packed(x).sum().backward()
    expected_x_grad = linear.weight.sum(0).expand(5, 8)
    torch.testing.assert_close(x.grad, expected_x_grad)
    torch.testing.assert_close(linear.weight.grad, x.detach().sum(0).expand(4, 8))


def test_other_dtypes_fall_back():
    linear = nn.Linear(8, 4).to(torch.float64)
    x = torch.randn(2, 8, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(PackedLinear_(linear)(x), F.linear(x, linear.weight, linear.bias))


def test_pack_linears_keeps_parameters_tying_and_state_dict():
    model = make_tiny_llama(0)
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.model.embed_tokens.weight
    keys = list(model.state_dict())
    linears = sum(type(m) is nn.Linear for m in model.modules())
    assert pack_linears(model) == linears > 0
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert list(model.state_dict()) == keys
    with torch.inference_mode():
        logits = model(torch.tensor([[1, 2, 3]])).logits  # builds the packed caches (inference tensors)
    twin = copy.deepcopy(model)  # test fixtures copy models; the packed cache must not get in the way
    with torch.inference_mode():
        torch.testing.assert_close(twin(torch.tensor([[1, 2, 3]])).logits, logits)


def test_packed_model_logits_and_greedy_speculation_match_the_unpacked_model():
    """The packed target scores like the unpacked one, and greedy speculation on it equals its own baseline."""
    plain = make_tiny_llama(3, num_layers=4)
    packed = copy.deepcopy(plain)
    pack_linears(packed)
    ids = torch.tensor([[1, 5, 2, 9, 4, 4, 7]])
    with torch.inference_mode():
        torch.testing.assert_close(packed(ids).logits, plain(ids).logits, rtol=1e-4, atol=1e-4)

    target = LoadedModel("tiny-packed", packed, FakeTokenizer(packed.config.vocab_size))
    models = _EarlyExitDrafters()
    greedy = SamplingConfig()
    baseline = run_to_completion(build_decoder(parse_strategy("ar"), target, models, greedy), [1, 5, 2], 24)
    spec = run_to_completion(
        build_decoder(parse_strategy("early_exit", {"exit_layer": 2, "k": 4}), target, models, greedy), [1, 5, 2], 24
    )
    assert spec.token_ids == baseline.token_ids
    assert spec.metrics.drafted > 0


class _EarlyExitDrafters:
    """The ModelCache surface build_decoder uses, building early-exit drafters on the given target."""

    def drafter(self, target, spec, progress=None, vocab_trim=0):
        from engine.loading.models import early_exit_drafter

        return early_exit_drafter(target, int(spec.split(":")[1]))


# --------------------------------------------------------------------------- the calibration


def _timings(packed_wins_from: int) -> dict[str, dict[str, float]]:
    """A cache entry in which the packed kernel is faster from `packed_wins_from` rows up."""
    return {str(rows): {"plain": 1.0, "packed": 0.5 if rows >= packed_wins_from else 2.0} for rows in ROW_BUCKETS}


def test_the_calibration_follows_its_measurements_per_shape_and_row_count(tmp_path, monkeypatch):
    cache = tmp_path / "kernels.json"
    calibration = KernelCalibration(cache)
    calibration.register(torch.zeros(80, 48))
    calibration.register(torch.zeros(24, 16))
    threads = torch.get_num_threads()
    cache.write_text(json.dumps({
        calibration._cache_key(threads, (80, 48)): _timings(4),
        calibration._cache_key(threads, (24, 16)): _timings(1),
    }))
    monkeypatch.setattr("engine.loading.linear_kernels._time_both", lambda *a: pytest.fail("cached: nothing to measure"))
    # rows between buckets use the bucket below (3 -> 2, 5..7 -> 4, 200 -> 32)
    assert [calibration.uses_packed((80, 48), rows) for rows in (1, 2, 3, 4, 7, 200)] == [False, False, False, True, True, True]
    assert all(calibration.uses_packed((24, 16), rows) for rows in (1, 2, 9))
    assert not calibration.uses_packed((7, 7), 4)  # a shape it never saw: F.linear
    with pinned_kernel("packed"):
        assert calibration.uses_packed((80, 48), 1)
    with pinned_kernel("plain"):
        assert not calibration.uses_packed((24, 16), 8)
    assert calibration.uses_packed((24, 16), 8)  # the pin ends with its block


def test_the_calibration_measures_once_and_caches_on_disk(tmp_path, monkeypatch):
    cache = tmp_path / "sub" / "kernels.json"
    weights = [torch.randn(32, 16) for _ in range(3)]
    first = KernelCalibration(cache)
    for w in weights:
        first.register(w)
    table = first.table()
    assert set(table) == {(32, 16)} and set(table[(32, 16)]) == set(ROW_BUCKETS)
    assert all(ms["plain"] > 0 and ms["packed"] > 0 for ms in table[(32, 16)].values())
    assert cache.is_file()
    second = KernelCalibration(cache)
    second.register(weights[0])
    monkeypatch.setattr("engine.loading.linear_kernels._time_both", lambda *a: pytest.fail("measured again"))
    assert second.table() == table


def test_model_copies_share_the_calibration():
    model = make_tiny_llama(0)
    calibration = KernelCalibration()
    pack_linears(model, calibration)
    twin = copy.deepcopy(model)
    assert twin.lm_head.calibration is calibration
