"""PEARL: two real workers, lossless output, and the phase record the timeline is drawn from."""

from __future__ import annotations

import threading
import time

import pytest

from conftest import chi_square_critical, chi_square_statistic, sweep
from engine import SamplingConfig, SpeculativeDecoder, early_exit_drafter, run_to_completion
from engine.decoding.pearl import PearlDecoder
from test_engine_tiny import (
    ALPHA,
    N_RUNS,
    PROMPTS,
    SAMPLINGS,
    TINY_VOCAB,
    _next_probs,
    exact_first_two,
    lookup_friendly_prompt,
)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def exit2(tiny_target):
    return early_exit_drafter(tiny_target, 2).model


@pytest.mark.parametrize("gamma", [1, 2, 4])
@pytest.mark.parametrize("prompt", PROMPTS[:3])
def test_greedy_equals_baseline(gamma, prompt, tiny_target, exit2, tiny_noisy_drafter):
    baseline = run_to_completion(SpeculativeDecoder(tiny_target), prompt, 40).token_ids
    for drafter in (exit2, tiny_noisy_drafter.model):
        result = run_to_completion(PearlDecoder(tiny_target, drafter, gamma, SamplingConfig()), prompt, 40)
        assert result.token_ids == baseline
        assert len(result.token_ids) == 40 and result.events[-1].stop_reason == "max_new_tokens"
        assert all(e.target_forwards >= 1 for e in result.events)


def test_both_modes_occur_and_the_drafter_works_on_its_own_thread(tiny_target, tiny_target_as_drafter):
    """With the target as its own drafter every block is accepted, so post-verify steps chain on."""
    threads = set()
    model = tiny_target_as_drafter
    original = model.forward

    def forward(*args, **kwargs):
        threads.add(threading.current_thread().name)
        return original(*args, **kwargs)

    def slow_verify(*args, **kwargs):  # a tiny target verifies in ~1 ms: give the worker thread time to wake, even
        time.sleep(0.005)              # on a loaded machine (sleeping releases the GIL, as a real forward does)
        return verify(*args, **kwargs)

    model.forward = forward
    verify = tiny_target.model.forward
    tiny_target.model.forward = slow_verify
    try:
        result = run_to_completion(PearlDecoder(tiny_target, model, 3, SamplingConfig()), PROMPTS[0], 30)
    finally:
        del model.forward
        del tiny_target.model.forward
    modes = [e.decision.inputs["mode"] for e in result.events]
    assert modes[0] == "pre-verify" and modes.count("post-verify") >= len(modes) - 2
    assert any(name.startswith("specviz-pearl-drafter") for name in threads)
    assert all(t.verdict == "accepted" for e in result.events for t in e.draft)
    # post-verify steps: the drafter's work is handed over when verification starts, and it runs during it. The
    # operating system decides when the worker thread wakes (a tiny target verifies in ~1 ms), so the overlap is
    # required of most steps, not of every one.
    overlapping = 0
    for e in result.events[1:-1]:
        target = next(p for p in e.timings.phases if p.worker == "target")
        drafting = [p for p in e.timings.phases if p.worker == "drafter"]
        assert drafting and all(target.start_s <= p.start_s for p in drafting)
        overlapping += all(p.start_s < target.end_s and target.start_s < p.end_s for p in drafting)
    assert overlapping >= len(result.events[1:-1]) / 2, (overlapping, len(result.events))
    # gamma = 3: a kept continuation is 3 drafted tokens whose first equals the bonus, so a post-verify step checks
    # the other 2 and commits 3 (2 accepted + the bonus)
    assert sum(len(e.new_tokens) for e in result.events) == 30
    assert sum(e.num_drafted == 2 and len(e.new_tokens) == 3 for e in result.events) >= 5


@pytest.fixture(scope="module")
def tiny_target_as_drafter(tiny_target):
    import copy

    return copy.deepcopy(tiny_target.model)


def test_a_seeded_sampled_run_is_reproducible(tiny_target, tiny_noisy_drafter):
    runs = [
        run_to_completion(PearlDecoder(tiny_target, tiny_noisy_drafter.model, 3, SamplingConfig(temperature=1.0, seed=7)),
                          PROMPTS[1], 30).token_ids
        for _ in range(2)
    ]
    assert runs[0] == runs[1]


def exact_third_marginal(model, prompt: list[int], sampling: SamplingConfig) -> dict[int, float]:
    """P(x3) = sum over (x1, x2) of p(x1) p(x2 | x1) p(x3 | x1 x2), by enumeration."""
    marginal: dict[int, float] = {}
    for (x1, x2), p12 in exact_first_two(model, prompt, sampling).items():
        p3 = _next_probs(model, prompt + [x1, x2], sampling)
        for x3 in range(TINY_VOCAB):
            if p3[x3] > 0:
                marginal[x3] = marginal.get(x3, 0.0) + p12 * float(p3[x3])
    return marginal


@pytest.mark.parametrize("sampling_name", sweep(list(SAMPLINGS), default=["t1"]))
def test_sampling_first_three_tokens_follow_the_target(sampling_name, tiny_target, tiny_noisy_drafter):
    """gamma = 3: the third token comes from a kept continuation whenever the first block was accepted and the
    drafter's first continuation token equals the bonus. The first two tokens' joint and the third token's
    marginal must both pass a chi-square test against exact enumeration."""
    settings = SAMPLINGS[sampling_name]
    reference = SamplingConfig(**settings)
    prompt = lookup_friendly_prompt(tiny_target.model, reference)
    pairs: dict[tuple[int, int], int] = {}
    thirds: dict[int, int] = {}
    kept = 0
    for seed in range(N_RUNS):
        decoder = PearlDecoder(tiny_target, tiny_noisy_drafter.model, 3, SamplingConfig(**settings, seed=seed))
        tokens: list[int] = []
        for event in decoder.generate(prompt, 4):
            kept += len(tokens) == 2 and event.decision.inputs["mode"] == "post-verify"
            tokens.extend(t.token_id for t in event.new_tokens)
            if len(tokens) >= 3:
                break
        pairs[(tokens[0], tokens[1])] = pairs.get((tokens[0], tokens[1]), 0) + 1
        thirds[tokens[2]] = thirds.get(tokens[2], 0) + 1
    assert kept > 0.05 * N_RUNS, kept  # the kept-continuation path is exercised
    for counts, expected in ((pairs, exact_first_two(tiny_target.model, prompt, reference)),
                             (thirds, exact_third_marginal(tiny_target.model, prompt, reference))):
        assert set(counts) <= set(expected), "a token the target cannot produce was generated"
        stat, df = chi_square_statistic(counts, expected, N_RUNS)
        critical = chi_square_critical(df, ALPHA)
        assert stat < critical, f"chi-square {stat:.1f} >= {critical:.1f} (df {df})"
