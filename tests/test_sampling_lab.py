"""The Sampling lab on tiny models: the goodness-of-fit helpers against known values, the exact distribution of
L-token continuations against brute-force enumeration, a lossless strategy passing the chi-square test where a
deliberately wrong sampler fails it, and the tab's handler end to end (inputs, figure, table, escaping)."""

from __future__ import annotations

import math

import gradio as gr
import pytest
import torch

from conftest import FakeTokenizer, noisy_copy
from engine import ConfigError, LoadedModel, ModelCache, SamplingConfig, SpeculativeDecoder, logits_to_probs, parse_strategy
from engine.drafting.policies import ConstantLength
from engine.drafting.proposers import DraftModelProposer
from specviz.goodness_of_fit import (
    chi_square_p_value,
    chi_square_statistic,
    chi_square_test,
    regularized_gamma_p,
    regularized_gamma_q,
    total_variation,
)
from specviz.runner import Runner
from specviz.sampling_lab import (
    ALPHA,
    OTHER,
    SHOWN,
    LabRequest,
    exact_distribution,
    fit_side,
    reseeded,
    run_lab,
    sample_side,
    verdict,
)
from specviz.ui.sampling_lab_tab import build_sampling_lab_tab, lab_figure, results_html
from specviz.ui.sessions import RunGate

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers"),  # gr.Warning outside a request: the toast
]

PROMPT = [3, 5, 7, 11, 2, 9]
SAMPLING = SamplingConfig(temperature=0.7, top_k=8, top_p=0.9)
N = 240  # per sampler: the wrong sampler's chi-square is ~15 times its df at this size


def drain(generator):
    """Run a generator to its end; its return value."""
    try:
        while True:
            next(generator)
    except StopIteration as finished:
        return finished.value


@torch.no_grad()
def next_probs(model: torch.nn.Module, context: list[int], sampling: SamplingConfig) -> torch.Tensor:
    """The target's transformed next-token distribution [vocab], from a plain cache-free forward pass."""
    return logits_to_probs(model(input_ids=torch.tensor([context])).logits[0, -1:], sampling)[0]


# --------------------------------------------------------------------------- goodness of fit


@pytest.mark.parametrize("statistic, df, p", [
    (3.841458820694124, 1, 0.05), (10.827566170662733, 1, 0.001), (5.991464547107979, 2, 0.05),
    (23.209251158954356, 10, 0.01), (124.34211340400407, 100, 0.05), (0.0, 4, 1.0),
])
def test_chi_square_p_values_match_tables(statistic, df, p):
    assert chi_square_p_value(statistic, df) == pytest.approx(p, rel=1e-9)


def test_incomplete_gamma_matches_closed_forms():
    for x in (0.01, 0.3, 1.0, 2.5, 7.0, 30.0):
        assert regularized_gamma_q(1.0, x) == pytest.approx(math.exp(-x), rel=1e-12)
        assert regularized_gamma_q(0.5, x) == pytest.approx(math.erfc(math.sqrt(x)), rel=1e-10)
        # integer shape: Q(n, x) = e^-x * sum_{k < n} x^k / k!
        assert regularized_gamma_q(4.0, x) == pytest.approx(math.exp(-x) * sum(x**k / math.factorial(k) for k in range(4)),
                                                            rel=1e-10)
        assert regularized_gamma_p(3.5, x) + regularized_gamma_q(3.5, x) == pytest.approx(1.0, abs=1e-14)
    assert regularized_gamma_q(2.0, 0.0) == 1.0 and regularized_gamma_q(2.0, math.inf) == 0.0
    with pytest.raises(ValueError):
        regularized_gamma_q(0.0, 1.0)
    with pytest.raises(ValueError):
        chi_square_p_value(1.0, 0)


def test_chi_square_pools_small_cells_and_spots_impossible_observations():
    expected = {"a": 0.5, "b": 0.4, "c": 0.06, "d": 0.04}  # n = 50: c and d expect 3 and 2, pooled into one cell
    stat, df = chi_square_statistic({"a": 25, "b": 20, "c": 3, "d": 2}, expected, 50)
    assert (stat, df) == (pytest.approx(0.0), 2)
    stat, df = chi_square_statistic({"a": 30, "b": 15, "c": 5}, expected, 50)
    assert stat == pytest.approx(5**2 / 25 + 5**2 / 20 + 0**2 / 5) and df == 2
    assert chi_square_test({"a": 49, "z": 1}, {"a": 1.0}, 50).p_value == 0.0  # "z" cannot happen
    assert total_variation({"a": 0.5, "b": 0.5}, {"a": 0.25, "c": 0.75}) == pytest.approx(0.75)


# --------------------------------------------------------------------------- the exact distribution


def brute_force(model: torch.nn.Module, prompt: list[int], sampling: SamplingConfig) -> dict[tuple[int, int], float]:
    """Every two-token continuation's probability: one cache-free forward pass per first token."""
    p1 = next_probs(model, prompt, sampling)
    out = {}
    for x1 in range(len(p1)):
        p2 = next_probs(model, prompt + [x1], sampling)
        out.update({(x1, x2): float(p1[x1]) * float(p2[x2]) for x2 in range(len(p2)) if p1[x1] * p2[x2] > 0})
    return out


@pytest.mark.parametrize("sampling", [SamplingConfig(temperature=1.0), SAMPLING])
def test_exact_distribution_of_two_tokens_matches_brute_force(tiny_target, sampling):
    exact = exact_distribution(tiny_target, PROMPT, sampling, 2, min_prob=0)
    expected = brute_force(tiny_target.model, PROMPT, sampling)
    assert exact.covered == pytest.approx(1.0, abs=1e-5)
    assert set(exact.probs) == set(expected)
    assert max(abs(exact.probs[k] - p) for k, p in expected.items()) < 1e-6
    assert exact.target_passes == 2  # the prompt, then every first token as one tree level
    assert exact.top_is_exact(SHOWN)


def test_partial_exact_distribution_lists_the_observed_and_the_likely(tiny_target):
    full = exact_distribution(tiny_target, PROMPT, SamplingConfig(temperature=1.0), 3, min_prob=0)
    rare = min(full.probs, key=full.probs.get)
    partial = exact_distribution(tiny_target, PROMPT, SamplingConfig(temperature=1.0), 3, observed={rare}, min_prob=0.01)
    assert rare in partial.probs
    assert {c for c, p in full.probs.items() if p >= 0.01} <= set(partial.probs)
    assert all(partial.probs[c] == pytest.approx(full.probs[c], abs=1e-6) for c in partial.probs)
    assert all(p <= partial.unlisted_bound + 1e-9 for c, p in full.probs.items() if c not in partial.probs)
    assert partial.target_passes == 3  # prompt, level 1, level 2: one tree pass each


def test_scoring_one_prefix_at_a_time_agrees_with_tree_passes(tiny_target):
    """What a sliding-window target (no tree attention) gets."""
    tree = exact_distribution(tiny_target, PROMPT, SAMPLING, 2, min_prob=0)
    one_by_one = exact_distribution(tiny_target, PROMPT, SAMPLING, 2, min_prob=0, tree=False)
    assert one_by_one.target_passes > tree.target_passes
    assert all(one_by_one.probs[c] == pytest.approx(p, abs=1e-6) for c, p in tree.probs.items())


def test_continuations_end_at_eos(tiny_target):
    first = next_probs(tiny_target.model, PROMPT, SAMPLING)
    eos = int(torch.argmax(first))
    target = LoadedModel("tiny-eos", tiny_target.model, FakeTokenizer(16, eos_token_id=eos))
    exact = exact_distribution(target, PROMPT, SAMPLING, 2, min_prob=0)
    assert exact.probs[(eos,)] == pytest.approx(float(first[eos]), abs=1e-6)
    assert not any(len(c) == 2 and c[0] == eos for c in exact.probs)
    assert exact.covered == pytest.approx(1.0, abs=1e-5)


# --------------------------------------------------------------------------- sampling and the test


@pytest.fixture(scope="module")
def lab_result(tiny_target, tiny_noisy_drafter):
    ar = SpeculativeDecoder(tiny_target, None, None, SAMPLING)
    spec = SpeculativeDecoder(tiny_target, DraftModelProposer(tiny_noisy_drafter.model), ConstantLength(2), SAMPLING)
    return drain(run_lab([("ar", ar), ("draft_model", spec)], PROMPT, 2, N))


def test_a_lossless_strategy_passes_the_chi_square_test(lab_result):
    assert [f.side.name for f in lab_result.fits] == ["ar", "draft_model"]
    for fit in lab_result.fits:
        assert fit.test.p_value >= ALPHA, fit.test
        assert fit.side.samples == N and sum(fit.side.counts.values()) == N
        assert 0 < fit.tv < 0.3
    ar, spec = lab_result.fits
    assert ar.side.decode_passes_per_token == 1.0 and ar.side.passes_per_sample == 3.0  # prefill + 2 tokens
    assert spec.side.passes_per_sample < ar.side.passes_per_sample  # drafts were accepted
    assert "no evidence the speculative sampler (draft_model) differs" in verdict(lab_result)


def test_rows_show_the_most_likely_continuations_and_the_rest(lab_result):
    rows = lab_result.rows
    assert len(rows) == SHOWN + 1 and rows[-1].key == OTHER
    assert [r.exact for r in rows[:-1]] == sorted((r.exact for r in rows[:-1]), reverse=True)
    assert sum(r.exact for r in rows) == pytest.approx(1.0, abs=1e-5)
    for i in range(2):
        assert sum(r.counts[i] for r in rows) == N
        assert sum(r.frequencies[i] for r in rows) == pytest.approx(1.0)


def test_a_wrong_sampler_fails_the_chi_square_test(tiny_target, tiny_noisy_drafter, lab_result):
    """A speculative sampler that forgets the temperature (samples at 1.0 where the target runs at 0.7): the test,
    against the same exact distribution, rejects it. So the lab can tell a wrong sampler from a right one."""
    wrong = SpeculativeDecoder(tiny_target, DraftModelProposer(tiny_noisy_drafter.model), ConstantLength(2),
                               SamplingConfig(temperature=1.0, top_k=8, top_p=0.9))
    fit = fit_side(drain(sample_side("forgot the temperature", wrong, PROMPT, 2, N)), lab_result.exact)
    assert fit.test.p_value < ALPHA, fit.test
    assert not fit.passes
    with pytest.raises(ValueError, match="share the target model and the sampling"):
        drain(run_lab([("ar", SpeculativeDecoder(tiny_target, None, None, SAMPLING)), ("wrong", wrong)], PROMPT, 2, 20))


def test_reseeding_shares_the_models_and_changes_only_the_seed(tiny_target, tiny_noisy_drafter):
    decoder = SpeculativeDecoder(tiny_target, DraftModelProposer(tiny_noisy_drafter.model), ConstantLength(2), SAMPLING)
    twin = reseeded(decoder, 7)
    assert twin.sampling == SamplingConfig(temperature=0.7, top_k=8, top_p=0.9, seed=7)
    assert decoder.sampling.seed == 0 and twin.proposer is decoder.proposer and twin.target is decoder.target

    def tokens(d):
        return [t.token_id for e in d.generate(PROMPT, 3) for t in e.new_tokens]

    assert tokens(reseeded(decoder, 7)) == tokens(twin)
    assert len({tuple(tokens(reseeded(decoder, s))) for s in range(12)}) > 1


@pytest.mark.parametrize("change, field", [
    (dict(sampling=SamplingConfig()), "temperature"), (dict(samples=5), "samples"), (dict(samples=1001), "samples"),
    (dict(tokens=4), "tokens"), (dict(strategy=parse_strategy("rasd", {})), "strategy"),
])
def test_lab_requests_are_validated(change, field):
    base = dict(prompt="hi", strategy=parse_strategy("draft_model", {}), sampling=SAMPLING)
    with pytest.raises(ConfigError) as info:
        LabRequest(**{**base, **change})
    assert info.value.field == field


# --------------------------------------------------------------------------- the tab


HOSTILE = '<img src=x onerror="window.__xss=1">'


def test_the_figure_and_table_escape_token_text(tiny_target, tiny_noisy_drafter):
    """Token text reaches the page only escaped (plotly renders tags in labels)."""
    target = LoadedModel("tiny-hostile", tiny_target.model, FakeTokenizer(16, prefix=HOSTILE))
    ar = SpeculativeDecoder(target, None, None, SAMPLING)
    spec = SpeculativeDecoder(target, DraftModelProposer(tiny_noisy_drafter.model), ConstantLength(2), SAMPLING)
    result = drain(run_lab([("ar", ar), ("draft_model", spec)], PROMPT, 1, 40))
    html = results_html(result)
    figure = lab_figure(result).to_json()
    assert "<img" not in html and "&lt;img" in html
    assert "<img" not in figure and "&lt;img" in figure
    layout = lab_figure(result).layout
    assert layout.paper_bgcolor == "rgba(0,0,0,0)" and layout.plot_bgcolor == "rgba(0,0,0,0)"


@pytest.fixture(scope="module")
def lab_tab(tiny_target):
    """The tab over a model cache whose every target is the tiny one (prompt_lookup needs no drafter)."""
    runner = Runner(ModelCache(loader=lambda spec, progress=None: tiny_target))
    with gr.Blocks():
        return build_sampling_lab_tab(runner, [], RunGate())


def test_the_handler_shows_input_errors_in_the_page(lab_tab):
    for args, word in ((("", "draft_model"), "prompt"), (("t1 t2", "draft_model", 0.0), "temperature"),
                       (("t1 t2", "rasd"), "document"), (("t1 t2", "draft_model", 1.0, 0, 1.0, 3), "samples")):
        (update,) = list(lab_tab.run_sampling_lab(*args))
        status = update[lab_tab.status]
        assert "status-error" in status and word in status, status


def test_the_handler_streams_progress_then_the_fit(lab_tab):
    updates = list(lab_tab.run_sampling_lab("t3 t5 t7 t3 t5", "prompt_lookup", 1.0, 0, 1.0, 60, 2))
    statuses = [u[lab_tab.status] for u in updates if lab_tab.status in u]
    assert any("<progress" in s for s in statuses), statuses
    final = updates[-1]
    assert "status-ok" in final[lab_tab.status] and "prompt_lookup" in final[lab_tab.status]
    assert "lab-fit-table" in final[lab_tab.results] and final[lab_tab.results].count("lab-p") == 2
    assert len(final[lab_tab.plot].data) == 3  # ar, the strategy, the exact distribution
