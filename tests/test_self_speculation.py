"""Self-speculation by early exit: Kangaroo's double early exit and DEL's dynamic exit layer.

On tiny random models the drafters are the target's own early-exit layers (the trained adapters
are exercised on the real model in test_trained_drafters.py); what is tested here is the
machinery: greedy identity with the baseline, losslessness under sampling, and the decisions.
"""

from __future__ import annotations

import pytest

from conftest import chi_square_critical, chi_square_statistic, sweep
from engine.events import StepFeedback
from engine import SamplingConfig, SpeculativeDecoder, early_exit_drafter, run_to_completion
from engine.drafting.policies import ConstantLength
from engine.drafting.proposers import DraftModelProposer
from engine.drafting.proposers.dynamic_exit import DynamicExitProposer, ExitLayerStats, expected_tokens
from test_engine_tiny import ALPHA, N_RUNS, PROMPTS, SAMPLINGS, exact_first_two, lookup_friendly_prompt

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def exits(tiny_target):
    return {1: early_exit_drafter(tiny_target, 1).model, 2: early_exit_drafter(tiny_target, 2).model}


def dynamic_exit(exits, max_k: int = 4, stop_below: float = 0.0) -> DynamicExitProposer:
    return DynamicExitProposer(exits, {1: 0.3, 2: 0.6}, target_layers=3, max_k=max_k, adapter_layers=0,
                               stop_below=stop_below)


# --------------------------------------------------------------------------- the DEL rule


def test_expected_tokens_formula():
    assert expected_tokens(0.0, 5) == 1.0
    assert expected_tokens(0.5, 1) == pytest.approx(1.5)
    assert expected_tokens(0.5, 2) == pytest.approx(1.75)
    assert expected_tokens(1.0, 4) == 5.0


def test_tokens_per_layer_worked_example_from_the_docstring():
    tpl = lambda a, k, layer: expected_tokens(a, k) / (k * (layer + 1) + 30)  # noqa: E731
    assert tpl(0.5, 2, 4) == pytest.approx(1.75 / 40)
    assert tpl(0.5, 2, 4) > tpl(0.7, 4, 8)
    assert tpl(0.8, 4, 8) > tpl(0.5, 2, 4)


def test_decide_prefers_the_layer_with_more_tokens_per_layer_and_learns(exits):
    proposer = dynamic_exit(exits)
    proposer.start([1, 2, 3])
    # Make layer 2 look hopeless and layer 1 perfect: the choice must move to layer 1.
    proposer.stats[2] = ExitLayerStats(2, prior=0.6, accepted=0, rejected=200)
    proposer.stats[1] = ExitLayerStats(1, prior=0.3, accepted=400, rejected=2)
    k, reason, inputs = proposer.decide()
    assert proposer.chosen == 1 and inputs["exit_layer"] == 1
    assert k == 4  # near-certain acceptance: draft as much as allowed
    assert "exit layer 1" in reason and "tokens per layer" in reason
    proposer.update(StepFeedback(4, 1))
    assert proposer.stats[1].accepted == 401 and proposer.stats[1].rejected == 3
    proposer.update(StepFeedback(0, 0))  # nothing drafted: nothing learnt
    assert proposer.stats[1].steps == 1


def test_acceptance_blends_prior_and_observations():
    stats = ExitLayerStats(4, prior=0.5)
    assert stats.acceptance == 0.5
    stats.accepted, stats.rejected = 9, 1
    assert 0.5 < stats.acceptance < 0.9


# --------------------------------------------------------------------------- greedy identity


@pytest.mark.parametrize("stop_below", [0.0, 0.5])
def test_dynamic_exit_greedy_equals_baseline_and_explains_itself(stop_below, tiny_target, exits):
    for prompt in PROMPTS:
        baseline = run_to_completion(SpeculativeDecoder(tiny_target), prompt, 30)
        proposer = dynamic_exit(exits, stop_below=stop_below)
        result = run_to_completion(SpeculativeDecoder(tiny_target, proposer, proposer, SamplingConfig()), prompt, 30)
        assert result.token_ids == baseline.token_ids
        if stop_below == 0.0:
            assert any(e.num_drafted for e in result.events), "DEL never drafted"
        for event in result.events[:-1]:
            assert event.decision.inputs["exit_layer"] in (1, 2)
            table = event.proposer_info["tables"][0]
            assert [row[0] for row in table["rows"]] == [1, 2]
            assert event.proposer_info["exit_layer"] == event.decision.inputs["exit_layer"]
            assert event.num_drafted > 0 or "stopped_at" in event.proposer_info


@pytest.mark.parametrize("stop_below", [0.3, 0.6, 1.0])
def test_double_early_exit_greedy_equals_baseline_and_stops_when_unsure(stop_below, tiny_target, exits):
    prompt = PROMPTS[0]
    baseline = run_to_completion(SpeculativeDecoder(tiny_target), prompt, 30)
    proposer = DraftModelProposer(exits[2], stop_below=stop_below)
    result = run_to_completion(SpeculativeDecoder(tiny_target, proposer, ConstantLength(4), SamplingConfig()), prompt, 30)
    assert result.token_ids == baseline.token_ids
    stopped = [e for e in result.events if "stopped_at" in e.proposer_info]
    if stop_below == 1.0:  # no drafter is ever that sure: nothing is drafted, every step is the baseline's
        assert result.metrics.drafted == 0 and len(stopped) == len(result.events) - 1
    else:
        assert stopped and result.metrics.drafted > 0
    for event in stopped:
        assert event.num_drafted == event.proposer_info["stopped_at"]
        assert event.proposer_info["confidence"] < stop_below


# --------------------------------------------------------------------------- sampling: lossless


def first_two_counts(tiny_target, make_proposer, settings: dict, prompt: list[int]) -> dict[tuple[int, int], int]:
    def make_decoder(seed: int) -> SpeculativeDecoder:
        proposer, policy = make_proposer()
        return SpeculativeDecoder(tiny_target, proposer, policy, SamplingConfig(**settings, seed=seed))
    return first_two_counts_of(make_decoder, prompt)


def first_two_counts_of(make_decoder, prompt: list[int]) -> dict[tuple[int, int], int]:
    """The first two output tokens of N_RUNS runs, make_decoder(seed) for seed 0..N_RUNS-1."""
    counts: dict[tuple[int, int], int] = {}
    for seed in range(N_RUNS):
        decoder = make_decoder(seed)
        tokens: list[int] = []
        for event in decoder.generate(prompt, 3):
            tokens.extend(t.token_id for t in event.new_tokens)
            if len(tokens) >= 2:
                break
        counts[(tokens[0], tokens[1])] = counts.get((tokens[0], tokens[1]), 0) + 1
    return counts


def _kangaroo(exits):
    return DraftModelProposer(exits[1], stop_below=0.35), ConstantLength(2)


def _del(exits):
    proposer = dynamic_exit(exits, max_k=2, stop_below=0.2)
    return proposer, proposer


PROPOSERS = {"kangaroo_stop": _kangaroo, "dynamic_exit": _del}


@pytest.mark.parametrize("proposer, sampling_name", sweep(
    [(p, n) for p in PROPOSERS for n in SAMPLINGS],
    default=[("kangaroo_stop", "t0.7-k8-p0.9"), ("dynamic_exit", "t1")]))
def test_sampling_first_two_tokens_follow_the_target(proposer, sampling_name, tiny_target, exits):
    make = PROPOSERS[proposer]
    settings = SAMPLINGS[sampling_name]
    reference = SamplingConfig(**settings)
    prompt = lookup_friendly_prompt(tiny_target.model, reference)
    expected = exact_first_two(tiny_target.model, prompt, reference)
    counts = first_two_counts(tiny_target, lambda: make(exits), settings, prompt)
    assert set(counts) <= set(expected), "a token pair the target cannot produce was generated"
    stat, df = chi_square_statistic(counts, expected, N_RUNS)
    critical = chi_square_critical(df, ALPHA)
    assert stat < critical, f"chi-square {stat:.1f} >= {critical:.1f} (df {df})"
