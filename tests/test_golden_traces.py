"""Every strategy's event stream equals the one recorded before the engine was reshaped (see tests/golden_traces.py)."""

from __future__ import annotations

import json

import pytest

from engine.loading.linear_kernels import packed_kernel_available, pinned_kernel
from golden_traces import (
    REAL_FILE,
    TINY_FILE,
    case_key,
    first_difference,
    normalise,
    real_cases,
    run_real_case,
    run_tiny_case,
    suite_prompts,
    tiny_cases,
    tiny_models,
)

TINY = json.loads(TINY_FILE.read_text())
REAL = json.loads(REAL_FILE.read_text())


def test_the_recorded_cases_are_the_cases_defined():
    assert sorted(TINY) == sorted(case_key(*case) for case in tiny_cases())
    assert sorted(REAL) == sorted(case_key(*case) for case in real_cases())


@pytest.fixture(scope="module")
def tiny():
    return tiny_models()


@pytest.mark.parametrize("strategy,params,seed", list(tiny_cases()), ids=[case_key(*c) for c in tiny_cases()])
def test_tiny_sampled_trace_is_unchanged(tiny, strategy, params, seed):
    target, models = tiny
    actual = normalise(run_tiny_case(models, target, strategy, params, seed))
    difference = first_difference(TINY[case_key(strategy, params, seed)], actual)
    assert difference is None, difference


@pytest.fixture(scope="module")
def suite():
    return suite_prompts()


@pytest.mark.slow
@pytest.mark.skipif(not packed_kernel_available(), reason="the traces were recorded on the packed oneDNN kernel")
@pytest.mark.parametrize("strategy,params,prompt", list(real_cases()), ids=[case_key(*c) for c in real_cases()])
def test_real_greedy_trace_is_unchanged(model_cache, real_model, suite, strategy, params, prompt):
    with pinned_kernel("packed"):
        actual = normalise(run_real_case(model_cache, real_model, suite, strategy, params, prompt))
    difference = first_difference(REAL[case_key(strategy, params, prompt)], actual)
    assert difference is None, difference
