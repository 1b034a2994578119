"""The Learn tab without a browser: every lesson builds and renders on the bundled traces, the analytic formula,
the recommendation logic, the stepper and the `?lesson=N` deep link. No model is loaded."""

from __future__ import annotations

import math
from types import SimpleNamespace

import gradio as gr
import plotly.graph_objects as go
import pytest

from specviz import lessons as L
from specviz.lesson_figures import INK, TRANSPARENT, decision_figure, lesson_style, tradeoff_figure
from specviz.traces import bundled_traces
from specviz.ui import learn_tab as T

pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]


@pytest.fixture(scope="module")
def traces():
    found = bundled_traces()
    missing = [n for n in T.REQUIRED_TRACES if n not in found]
    assert not missing, f"bundled traces missing: {missing}"
    return found


@pytest.fixture(scope="module")
def tab(traces):
    with gr.Blocks() as demo:
        with gr.Tabs() as tabs:
            with gr.Tab("Learn", id="learn"):
                built = T.build_learn_tab(demo, tabs, traces)
    return SimpleNamespace(demo=demo, tab=built)


def _transparent_and_titled(fig: go.Figure, max_title: int = 80) -> None:
    assert fig.layout.paper_bgcolor == TRANSPARENT and fig.layout.plot_bgcolor == TRANSPARENT
    assert fig.layout.font.color == INK
    title = fig.layout.title.text or ""
    assert len(title) <= max_title, title
    for annotation in fig.layout.annotations or ():  # subplot titles short enough for a lesson column
        assert len(annotation.text or "") <= 60 or annotation.hovertext, annotation.text


# -- the tab and the stepper ------------------------------------------------------------------------------

def test_tab_builds_seven_lessons_one_visible(tab):
    t = tab.tab
    assert len(t.columns) == L.N_LESSONS == len(L.LESSONS)
    assert [c.visible for c in t.columns] == [True] + [False] * 6
    assert t.picker.value == 1 and t.previous.interactive is False
    assert t.to_playground is not None and t.to_sampling_lab is not None


def test_every_lesson_has_short_guided_text():
    for lesson in L.LESSONS:
        sentences = [s for s in lesson.text.replace("e.g.", "eg").split(". ") if s.strip()]
        assert 2 <= len(sentences) <= 5, (lesson.number, len(sentences))
        assert lesson.try_this


@pytest.mark.parametrize("current, delta, expected", [(1, -1, 1), (1, 1, 2), (6, 1, 7), (7, 1, 7), ("3", -1, 2)])
def test_stepper_moves_within_bounds(current, delta, expected):
    assert L.step_lesson(current, delta) == expected


def test_show_lesson_updates(tab):
    updates = T.show_lesson(7)
    assert updates[0] == 7 and 'aria-current="step"' in updates[1] and "▶ 7." in updates[1]
    assert updates[2].interactive is True and updates[3].interactive is False  # Next disabled at the end
    assert [u.visible for u in updates[4:]] == [False] * 6 + [True]
    assert len(updates) == 4 + len(tab.tab.columns)


def test_deep_link_query():
    assert L.lesson_from_query({"lesson": "3"}) == 3
    assert L.lesson_from_query({"lesson": "99"}) == 7
    assert L.lesson_from_query({"lesson": "abc"}) == 1
    assert L.lesson_from_query({"__theme": "dark"}) is None and L.lesson_from_query(None) is None


def test_load_event_is_registered(tab):
    fns = [d for d in tab.demo.fns.values()]
    assert any(getattr(f.fn, "__name__", "") == "open_from_link" for f in fns)


# -- lesson 1 ---------------------------------------------------------------------------------------

def test_slow_motion_walks_every_phase(traces):
    events = traces["chain_greedy"].events
    for event in events:
        phases = L.slow_motion_phases(event)
        keys = [p.key for p in phases]
        assert keys[0] == "context" and keys[-1] == "commit" and keys.count("score") == 1
        assert keys.count("draft") == event.num_drafted and keys.count("check") == L.checked_count(event)
    step, phase, seen = 1, 0, set()
    html_before = T.slow_motion_html(events, traces["chain_greedy"].setup.prompt, step, phase)
    while step == 1:
        seen.add(phase)
        step, phase = L.advance(events, step, phase)
    assert step == 2 and phase == 0 and len(seen) == len(L.slow_motion_phases(events[1]))
    html_after = T.slow_motion_html(events, traces["chain_greedy"].setup.prompt, 1, len(seen) - 1)
    assert html_before != html_after and "committed" in html_after and 'role="img"' in html_after
    assert L.advance(events, len(events) - 1, 99) == (0, 0)  # wraps to the first step


def test_slow_motion_escapes_model_text(traces):
    from dataclasses import replace

    events = list(traces["chain_greedy"].events)
    e = events[1]
    hostile = replace(e.draft[0], text="<img src=x onerror=alert(1)>")
    events[1] = replace(e, draft=(hostile, *e.draft[1:]))
    html = T.slow_motion_html(events, "<b>prompt</b>", 1, 3)
    assert "<img" not in html and "&lt;img" in html


# -- lesson 2 ---------------------------------------------------------------------------------------

def test_decisions_cover_accepts_and_rejections(traces):
    events = traces["chain_sampled"].events
    choices = L.decision_choices(events)
    verdicts = {L.decision_at(events, key).verdict for _, key in choices}
    assert verdicts == {"accepted", "rejected"}
    d = L.decision_at(events, L.default_decision(events))
    assert d.verdict == "rejected" and d.u is not None and d.u > d.threshold
    assert math.isclose(d.threshold, min(1.0, d.p / d.q), rel_tol=1e-3)
    assert d.residual_top and d.output_text is not None
    html = T.decision_html(d)
    assert "residual" in html and "only the top candidates" in html.lower()
    assert 'role="img"' in T.uniform_bar_svg(d) and "u = " in T.uniform_bar_svg(d)
    fig = decision_figure(d)
    _transparent_and_titled(fig)
    assert any("residual" in (tr.name or "") for tr in fig.data)
    assert L.decision_at(events, "garbage").step == d.step  # unreadable key: the default decision


def test_every_checked_token_renders(traces):
    events = traces["chain_sampled"].events
    for _, key in L.decision_choices(events):
        d = L.decision_at(events, key)
        assert (d.u is None) or (d.verdict == "accepted") == (d.u <= d.threshold + 1e-9)
        assert T.decision_sentence(d)


# -- lesson 3 ---------------------------------------------------------------------------------------

def test_expected_tokens_formula():
    assert L.expected_tokens_per_step(0.5, 2) == pytest.approx(1.75)
    assert L.expected_tokens_per_step(0.0, 4) == pytest.approx(1.0)
    assert L.expected_tokens_per_step(1.0, 4) == 5.0
    for a in (0.1, 0.5, 0.9):  # the closed form equals the sum 1 + a + ... + a^K
        assert L.expected_tokens_per_step(a, 5) == pytest.approx(sum(a ** i for i in range(6)))
    assert L.speedup_bound(0.8, 4, 0.0) == pytest.approx(L.expected_tokens_per_step(0.8, 4))
    assert L.best_k(0.9, 0.05) > L.best_k(0.3, 0.05)  # higher acceptance, longer best draft
    assert L.best_k(0.1, 0.9) == 0  # poor acceptance, costly drafter: do not draft


def test_measured_point_from_trace(traces):
    m = L.measure(traces["chain_greedy"].events, traces["ar"].events)
    assert m.k == 4 and 0 < m.a < 1 and 0 < m.c < 1 and m.speedup > 0
    assert sum(m.oracle_lengths.values()) == len(traces["chain_greedy"].events)
    # the i.i.d. model with the measured a predicts the measured tokens per pass within 15%
    assert L.expected_tokens_per_step(m.a, m.k) == pytest.approx(m.mean_acceptance_length, rel=0.15)
    fig = tradeoff_figure(0.6, 3, 0.2, m)
    _transparent_and_titled(fig)
    names = {tr.name for tr in fig.data}
    assert "measured (trace)" in names and "oracle length (steps)" in names and "your K = 3" in names
    assert f"{m.speedup:.2f}x" in T.measured_html(m, "x")  # the measured speedup is shown, from the trace
    assert "best K for these a and c is" in T.tradeoff_sentence(0.6, 3, 0.2)


# -- lessons 4-6 ------------------------------------------------------------------------------------

def test_tree_and_chain_side_by_side(traces):
    tree, chain = traces["tree"].events, traces["chain_greedy"].events
    for step in (0, 1, len(tree) - 1):  # a few steps: each figure costs ~0.3 s on a loaded 2-core machine
        tree_fig, chain_fig, sentence = T.tree_pair(tree, chain, step)
        _transparent_and_titled(tree_fig)
        _transparent_and_titled(chain_fig)
        assert "one target pass" in sentence
    c = L.chain_as_tree(chain[1], "x")
    assert len(c.tree) == chain[1].num_drafted + 1 and c.tree[0].verdict == "root"
    assert sum(1 for n in c.tree if n.verdict == "accepted") == chain[1].num_accepted


def test_lattice_every_step(traces):
    events = traces["diffusion"].events
    for step in (0, 1, len(events) - 1):  # the last step drafted nothing (budget): no lattice, still explained
        fig, story = T.lattice_view(events, step)
        _transparent_and_titled(fig)
        assert f"Step {events[step].index}" in story


def test_policies(traces):
    rows = [L.policy_row(label, name, traces[name].events) for label, name in L.POLICIES.items()]
    assert len({r.mean_acceptance_length for r in rows}) == 3
    for label, name in L.POLICIES.items():
        fig = T.policy_figure(traces[name].events)
        _transparent_and_titled(fig)
        texts = [a.text for a in fig.layout.annotations]
        assert "Theory vs this run" in texts and not any(t.startswith("Theory:") for t in texts)  # was clipped
        assert T.reasons_html(traces[name].events).count("<tr>") == len(traces[name].events) + 1
        assert "▶" in T.policies_table_html(rows, label)


# -- lesson 7 ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("repeated, head, sampling, expected", [
    ("none", False, "greedy", "draft_model"),
    ("none", False, "sampling", "rsd"),
    ("none", True, "greedy", "dynamic_tree"),
    ("context", False, "greedy", "prompt_lookup"),
    ("context", True, "sampling", "hybrid_tree"),
    ("document", False, "greedy", "rasd_tree"),
    ("document", True, "greedy", "hybrid_tree"),
])
def test_recommendation(repeated, head, sampling, expected, traces):
    rec = L.recommend(repeated, head, sampling)
    assert rec.strategy == expected and rec.reason and rec.evidence
    assert all(name in traces for name in rec.evidence)
    html = T.recommendation_html(rec, traces)
    recorded = traces[rec.evidence[0]].recorded
    assert recorded["date"] in html and str(recorded["torch_threads"]) in html


def test_lesson_style_on_any_figure():
    fig = lesson_style(go.Figure(), "a" * 200)
    assert len(fig.layout.title.text) <= 80 and fig.layout.paper_bgcolor == TRANSPARENT
