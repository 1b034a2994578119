"""Every strategy's event stream equals the one recorded before the engine was reshaped (see tests/golden_traces.py)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import sweep

from engine.loading.linear_kernels import packed_kernel_available, pinned_kernel
from golden_traces import (
    REAL_FILE,
    REAL_PROMPTS,
    RECORDED_THREADS,
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


# Each recorded case on one of its prompts by default (taken in turn); every prompt under -m exhaustive.
_ALL_REAL = list(real_cases())  # strategy by strategy, each on every prompt
REAL_CASES = sweep(_ALL_REAL, default=[case for i, case in enumerate(_ALL_REAL)
                                       if i % len(REAL_PROMPTS) == (i // len(REAL_PROMPTS)) % len(REAL_PROMPTS)])


@pytest.fixture(autouse=True)
def recorded_threads():
    """Replay with the thread count the traces were recorded with (a pytest-xdist worker runs on fewer)."""
    before = torch.get_num_threads()
    torch.set_num_threads(RECORDED_THREADS)
    yield
    torch.set_num_threads(before)


def test_the_recorded_cases_are_the_cases_defined():
    assert sorted(TINY) == sorted(case_key(*case) for case in tiny_cases())
    assert sorted(REAL) == sorted(case_key(*case) for case in real_cases())


def test_every_recorded_real_trace_has_ars_tokens():
    """Greedy identity is in the recordings: every strategy's tokens equal ar's on the same prompt, so replaying a trace
    unchanged (below) shows that strategy greedy-identical on the real model (test_engine_real runs the rest)."""
    def tokens(key):
        return [t["token_id"] for step in REAL[key] for t in step["new_tokens"]]

    for strategy, params, prompt in real_cases():
        assert tokens(case_key(strategy, params, prompt)) == tokens(case_key("ar", {}, prompt)), (strategy, params, prompt)


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
@pytest.mark.parametrize("strategy,params,prompt", REAL_CASES, ids=[case_key(*c) for c in real_cases()])
def test_real_greedy_trace_is_unchanged(model_cache, real_model, suite, strategy, params, prompt):
    with pinned_kernel("packed"):
        actual = normalise(run_real_case(model_cache, real_model, suite, strategy, params, prompt))
    difference = first_difference(REAL[case_key(strategy, params, prompt)], actual)
    assert difference is None, difference
