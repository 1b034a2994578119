"""What-if and fork (specviz.whatif) and the panel's HTML (specviz.ui.whatif_panel): the rebuilt context is the
run's own, greedy what-if agrees with what the recorded step already says, a greedy fork is lossless and
reproduces the run, bad input gets a clear error, and model text is escaped. Tiny models where they suffice, the
real embedded model where the chat template and the trained drafter matter."""

from __future__ import annotations

import time

import pytest

from conftest import FakeTokenizer, make_tiny_loaded, noisy_copy
from engine import EMBEDDED_DEFAULT, LoadedModel, ModelCache, SamplingConfig, StrategyConfig, encode_prompt, parse_strategy
from specviz.runner import RunRequest, Runner
from specviz.traces import RunSetup
from specviz.ui.panels import run_state
from specviz.ui.whatif_panel import fork_html, whatif_figure, whatif_table_html
from specviz.whatif import WhatIfError, check_step, fork, run_from_state, step_context, what_if_k

TINY_DRAFTER = "tiny-noisy-drafter"


def record(runner: Runner, prompt: str, strategy: StrategyConfig, max_new_tokens: int, target: str,
           sampling: SamplingConfig = SamplingConfig()) -> tuple[RunSetup, list, list[int]]:
    """A run through the runner: its setup, its events and the full token context it ended with."""
    prepared = runner.prepare(RunRequest(prompt=prompt, strategy=strategy, sampling=sampling,
                                         max_new_tokens=max_new_tokens, target=target, device="cpu"))
    events = []
    for update in runner.stream(prepared):
        events = update.events
    tokens = list(prepared.prompt_ids) + [t.token_id for e in events for t in e.new_tokens]
    return RunSetup.of(prompt, strategy, sampling, max_new_tokens, target), list(events), tokens


@pytest.fixture(scope="module")
def tiny_runner(single_thread, tiny_target) -> Runner:
    models = {"tiny-target": tiny_target, TINY_DRAFTER: noisy_copy(tiny_target, sigma=0.03, seed=1, name=TINY_DRAFTER)}
    return Runner(ModelCache(max_models=4, loader=lambda spec, progress=None: models[spec]))


@pytest.fixture(scope="module")
def tiny_run(tiny_runner):
    strategy = parse_strategy("draft_model", {"k": 4, "drafter": TINY_DRAFTER})
    return record(tiny_runner, "t1 t2 t3", strategy, 30, "tiny-target")


def test_context_rebuild_is_the_runs_own_context_tiny(tiny_runner, tiny_target, tiny_run):
    setup, events, tokens = tiny_run
    for i, event in enumerate(events):
        assert step_context(tiny_target.tokenizer, setup, events, i) == tokens[: event.context_length]


def test_greedy_what_if_agrees_with_the_recorded_step(tiny_runner, tiny_run):
    setup, events, _ = tiny_run
    step = next(i for i, e in enumerate(events) if 0 < e.num_accepted < e.num_drafted) if any(
        0 < e.num_accepted < e.num_drafted for e in events) else 1
    report = what_if_k(tiny_runner, setup, events, step)
    assert report.own_strategy and report.recorded_k == events[step].num_drafted
    assert [o.k for o in report.outcomes] == list(range(1, 9))
    # the run's own drafter at K <= recorded K drafts a prefix of the recorded chain: the recorded verdicts answer it
    answered = [o for o in report.outcomes if o.k <= report.recorded_k]
    assert answered and all(o.agrees is not None for o in answered)
    assert all(o.agrees and o.accepted == min(o.k, events[step].num_accepted) for o in answered)
    assert all(o.target_forwards == 1 and o.produced == o.accepted + 1 for o in report.outcomes)


def test_greedy_fork_is_lossless_and_reproduces_the_run(tiny_runner, tiny_run):
    setup, events, tokens = tiny_run
    report = fork(tiny_runner, setup, events, 3, "ar", 12)
    assert report.identical and report.lossless_check is True and report.matches_recorded is True
    assert report.original.text == report.other.text and len(report.other.token_ids) == 12
    start = events[3].context_length
    assert list(report.other.token_ids) == tokens[start:start + 12]
    assert report.other.mean_acceptance_length == 1.0 and report.other.steps == 12
    html = fork_html(report, "…")
    assert "Identical text" in html and html.count('class="side-tag"') == 2


def test_sampled_fork_makes_no_lossless_claim(tiny_runner):
    strategy = parse_strategy("draft_model", {"k": 3, "drafter": TINY_DRAFTER})
    setup, events, _ = record(tiny_runner, "t4 t5", strategy, 10, "tiny-target",
                              SamplingConfig(temperature=0.8, seed=3))
    report = fork(tiny_runner, setup, events, 1, "ar", 6)
    assert report.lossless_check is None and report.matches_recorded is None
    assert what_if_k(tiny_runner, setup, events, 1, ks=[1, 2]).checked == []


@pytest.mark.parametrize("state, message", [
    (None, "no run to explore"),
    (run_state([], "p", "ar", None, False), "no run to explore"),
])
def test_empty_state_gives_a_clear_error(state, message):
    with pytest.raises(WhatIfError, match=message):
        run_from_state(state)


def test_streaming_or_unknown_runs_and_bad_steps_give_clear_errors(tiny_run, tiny_runner):
    setup, events, _ = tiny_run
    with pytest.raises(WhatIfError, match="still streaming"):
        run_from_state(run_state(events, "p", "x", 1, True, setup))
    with pytest.raises(WhatIfError, match="settings .* are unknown"):
        run_from_state(run_state(events, "p", "x", 1, False, None))
    for bad in (-1, len(events), 1.5, "two", None):
        with pytest.raises(WhatIfError, match="step must be a step number from 0"):
            check_step(events, bad)
    with pytest.raises(WhatIfError, match="K must be whole numbers"):
        what_if_k(tiny_runner, setup, events, 0, ks=[0])
    # a context that cannot be the run's (another prompt): refused, not silently explored
    other = RunSetup.of("t1 t2", setup.strategy_config(), setup.sampling(), setup.max_new_tokens, setup.target)
    with pytest.raises(WhatIfError, match="cannot rebuild the context of step 2"):
        what_if_k(tiny_runner, other, events, 2, ks=[1])


def test_model_text_is_escaped_in_the_panel(single_thread):
    """Token texts that look like HTML reach the page as text (table, fork streams)."""
    target = make_tiny_loaded(0, name="html-target")
    hostile = FakeTokenizer(target.model.config.vocab_size, prefix="<b>")
    models = {"html-target": LoadedModel("html-target", target.model, hostile),
              "html-drafter": LoadedModel("html-drafter", noisy_copy(target, 0.03, 1, "x").model, hostile)}
    runner = Runner(ModelCache(max_models=4, loader=lambda spec, progress=None: models[spec]))
    strategy = parse_strategy("draft_model", {"k": 2, "drafter": "html-drafter"})
    setup, events, _ = record(runner, "<b>1 <b>2", strategy, 8, "html-target")
    table = whatif_table_html(what_if_k(runner, setup, events, 1, ks=[1, 2]))
    forked = fork_html(fork(runner, setup, events, 1, "ar", 4), "<b>tail")
    for html in (table, forked):
        assert "&lt;b&gt;" in html and "<b>" not in html


def test_real_model_context_what_if_and_fork(model_cache, real_model):
    """The chat template, the trained drafter and the real timings: the rebuilt context is the run's, greedy
    what-if agrees with the recorded step, a greedy fork with prompt lookup gives the same text as the run."""
    runner = Runner(model_cache)
    strategy = parse_strategy("draft_model", {"k": 4})
    setup, events, tokens = record(runner, "Name three colours of the rainbow.", strategy, 12, EMBEDDED_DEFAULT)
    prompt_ids = encode_prompt(real_model.tokenizer, setup.prompt)
    assert len(prompt_ids) == events[0].context_length  # the chat template applied, as the run did
    for i, event in enumerate(events):
        assert step_context(real_model.tokenizer, setup, events, i) == tokens[: event.context_length]
    step = min(1, len(events) - 1)
    started = time.perf_counter()
    report = what_if_k(runner, setup, events, step, ks=[1, 2, 4, 6], repeats=1)  # the page: K = 1..8, timed twice
    what_if_s = time.perf_counter() - started
    assert len(report.outcomes) == 4 and report.checked and report.all_agree
    started = time.perf_counter()
    forked = fork(runner, setup, events, step, "prompt_lookup", 8)
    fork_s = time.perf_counter() - started
    assert forked.lossless_check is True and forked.matches_recorded is True
    assert whatif_figure(report).layout.paper_bgcolor == "rgba(0,0,0,0)"
    print(f"\nreal model: what-if K=1,2,4,6 {what_if_s:.2f} s, fork of 8 tokens (two continuations) {fork_s:.2f} s")
