"""Pure rendering tests for the explorer: HTML panels and the plotly figure, from hand-built events."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import plotly.graph_objects as go
import pytest

from engine.events import DraftedToken, LengthDecision, NewToken, OutputToken, PhaseTimings, StepEvent, TokenCandidate
from engine.metrics import RunMetrics
from specviz.figures import LENGTH_TRACE_NAMES, TRACE_NAMES, UIREVISION, acceptance_figure, draft_length_figure, rolling_mean
from specviz.ui import render

XSS = '<img src=x onerror="window.__xss=1">'


def _timings(i: int) -> PhaseTimings:
    return PhaseTimings(draft_s=0.01, verify_s=0.08, overhead_s=0.002, start_s=0.1 * i, end_s=0.1 * i + 0.092)


def step_partial_accept(i: int = 0) -> StepEvent:
    """Drafted 3: accepted, rejected, unchecked -> 1 accepted + 1 recovered."""
    draft = (
        DraftedToken(0, 11, " Hello", 0.6, 0.7, 1.0, 0.3, "accepted", (TokenCandidate(11, " Hello", 0.7),)),
        DraftedToken(1, 12, " wrold", 0.5, 0.1, 0.2, 0.9, "rejected", (TokenCandidate(13, " world", 0.8),)),
        DraftedToken(2, 14, "!", 0.4, None, None, None, "unchecked"),
    )
    out = OutputToken(13, " world", "recovered", 0.8, (TokenCandidate(13, " world", 0.8), TokenCandidate(15, " there", 0.1)))
    return StepEvent(
        index=i, context_length=10 + i, decision=LengthDecision(3, 3, "constant K = 3", {"k": 3}), draft=draft,
        output=out, new_tokens=(NewToken(11, " Hello", "accepted"), NewToken(13, " world", "recovered")),
        target_forwards=2 if i == 0 else 1, timings=_timings(i),
    )


def step_full_accept(i: int) -> StepEvent:
    """Drafted 2, both accepted -> 2 accepted + 1 bonus (the bonus text has a newline)."""
    draft = (
        DraftedToken(0, 21, ".", 0.9, 0.95, 1.0, 0.5, "accepted"),
        DraftedToken(1, 22, " Bye", 0.5, 0.6, 1.0, 0.1, "accepted"),
    )
    out = OutputToken(23, "\n", "bonus", 0.7, (TokenCandidate(23, "\n", 0.7),))
    return StepEvent(
        index=i, context_length=20 + i, decision=LengthDecision(2, 2, "heuristic", {}), draft=draft, output=out,
        new_tokens=(NewToken(21, ".", "accepted"), NewToken(22, " Bye", "accepted"), NewToken(23, "\n", "bonus")),
        target_forwards=1, timings=_timings(i),
    )


def step_baseline(i: int, text: str = " end", stop: str | None = "eos") -> StepEvent:
    out = OutputToken(31, text, "baseline", 0.5, (TokenCandidate(31, text, 0.5),))
    return StepEvent(
        index=i, context_length=30 + i, decision=LengthDecision(0, 0, "autoregressive: no draft", {}), draft=(),
        output=out, new_tokens=(NewToken(31, text, "baseline"),), target_forwards=1, timings=_timings(i), stop_reason=stop,
    )


def events() -> list[StepEvent]:
    return [step_partial_accept(0), step_full_accept(1), step_baseline(2)]


class _Spans(HTMLParser):
    """Collects (classes, title, text) of every <span class="tok ..."> and every tag name."""

    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.spans: list[dict] = []
        self._stack: list[dict | None] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "span":
            a = dict(attrs)
            classes = (a.get("class") or "").split()
            item = {"classes": classes, "title": a.get("title"), "text": ""} if "tok" in classes else None
            if item:
                self.spans.append(item)
            self._stack.append(item)

    def handle_endtag(self, tag):
        if tag == "span" and self._stack:
            self._stack.pop()

    def handle_data(self, data):
        for item in self._stack:
            if item is not None:
                item["text"] += data


def parse(html_text: str) -> _Spans:
    p = _Spans()
    p.feed(html_text)
    return p


# -- escaping ---------------------------------------------------------------------------------------

def test_prompt_markup_is_escaped():
    html_text = render.token_stream_html(events(), prompt=XSS)
    assert "<img" not in html_text
    assert "&lt;img src=x onerror=&quot;window.__xss=1&quot;&gt;" in html_text
    assert "img" not in parse(html_text).tags


def test_token_text_and_candidates_are_escaped_in_stream_tooltips_and_inspector():
    evil = "<script>alert(1)</script>"
    breaker = '"><marquee>x</marquee>'
    step = StepEvent(
        index=0, context_length=3, decision=LengthDecision(1, 1, f"reason {evil}", {"x": evil}),
        draft=(DraftedToken(0, 1, evil, 0.5, 0.1, 0.2, 0.9, "rejected", (TokenCandidate(1, evil, 0.1),)),),
        output=OutputToken(2, breaker, "recovered", 0.5, (TokenCandidate(2, evil, 0.5),)),
        new_tokens=(NewToken(2, breaker, "recovered"),), target_forwards=1, timings=_timings(0),
    )
    for html_text in (render.token_stream_html([step], prompt=evil, focus_step=0), render.step_inspector_html([step], 0)):
        assert "<script" not in html_text and "<marquee" not in html_text
        tags = parse(html_text).tags
        assert "script" not in tags and "marquee" not in tags
    stream = parse(render.token_stream_html([step]))
    # the attribute-breaking token text stays inside its span, and so does the rejected draft's
    assert any(s["text"] == breaker for s in stream.spans)
    assert any(s["text"] == evil and "tok-rejected" in s["classes"] for s in stream.spans)


def test_status_and_metrics_escape_messages():
    assert "<img" not in render.status_html(XSS, "error")
    assert "&lt;img" in render.status_html(XSS, "error")
    assert "<img" not in render.metrics_html(None, note=XSS)


# -- token kinds ------------------------------------------------------------------------------------

def test_each_new_token_kind_gets_its_class_in_order():
    spans = parse(render.token_stream_html(events(), prompt="Say hi")).spans
    output = [s for s in spans if not {"tok-rejected", "tok-unchecked"} & set(s["classes"])]
    kinds = [next(c[4:] for c in s["classes"] if c.startswith("tok-") and c[4:] in render.TOKEN_KINDS) for s in output]
    assert kinds == ["accepted", "recovered", "accepted", "accepted", "bonus", "baseline"]
    assert [s["text"] for s in output][:2] == [" Hello", " world"]


def test_prompt_is_shown_distinctly():
    p = parse(render.token_stream_html(events(), prompt="Say hi"))
    html_text = render.token_stream_html(events(), prompt="Say hi")
    assert re.search(r'class="tok-prompt">Say hi<', html_text)
    assert all("tok-prompt" not in s["classes"] for s in p.spans)  # the prompt is not an output token


def test_tooltips_carry_probabilities():
    spans = parse(render.token_stream_html(events())).spans
    accepted = spans[0]
    assert "step 0" in accepted["title"] and "draft position 0" in accepted["title"]
    assert "q = 0.600" in accepted["title"] and "p = 0.700" in accepted["title"]
    assert "min(1, p/q) = 1.000" in accepted["title"] and "u = 0.300" in accepted["title"]
    recovered = spans[1]
    assert "recovered" in recovered["title"] and "␣world 0.800" in recovered["title"] and "␣there 0.100" in recovered["title"]
    assert "u = 0.900" in recovered["title"]  # the draw that rejected the draft it replaces


def test_newline_token_renders_as_a_line_break_with_a_mark():
    html_text = render.token_stream_html(events())
    start = html_text.index('class="tok tok-bonus')
    after_tag = html_text[html_text.index(">", html_text.index("drawn from", start)) + 1:]
    assert after_tag.startswith('<span class="nl" aria-hidden="true">↵</span>\n</span>')


# -- rejected drafts --------------------------------------------------------------------------------

def test_rejected_drafts_of_the_focused_step_are_shown_after_its_output():
    evs = [step_partial_accept(0), step_baseline(1, stop=None)]
    html_text = render.token_stream_html(evs, focus_step=0)
    spans = parse(html_text).spans
    classes = [s["classes"] for s in spans]
    i_rec = next(i for i, c in enumerate(classes) if "tok-recovered" in c)
    assert "tok-rejected" in classes[i_rec + 1] and spans[i_rec + 1]["text"] == " wrold"
    assert "tok-unchecked" in classes[i_rec + 2]
    assert "tok-baseline" in classes[i_rec + 3]  # the next step's token comes after the discarded drafts
    # the latest step is the default focus: it has no rejected drafts, so nothing is struck through
    assert "tok-rejected" not in render.token_stream_html(evs)


def test_css_gives_each_kind_a_second_cue_besides_colour():
    css = (Path(__file__).resolve().parents[1] / "assets" / "style.css").read_text(encoding="utf-8")

    def rule(cls: str) -> str:
        match = re.search(r"\." + cls + r"\s*\{([^}]*)\}", css)
        assert match, cls
        return match.group(1)

    assert "line-through" in rule("tok-rejected") and "--sv-purple" in rule("tok-rejected")
    assert "dashed" in rule("tok-unchecked")
    assert "solid" in rule("tok-accepted") and "dotted" in rule("tok-recovered") and "double" in rule("tok-bonus")
    assert "italic" in rule("tok-prompt")
    for colour in ("#0072B2", "#D55E00", "#009E73", "#CC79A7"):
        assert colour in css


def test_legend_lists_every_kind():
    legend = render.legend_html()
    for kind in (*render.TOKEN_KINDS, "rejected", "unchecked", "prompt"):
        assert f"tok-{kind}" in legend


# -- inspector and metrics -------------------------------------------------------------------------

def test_step_inspector_shows_decision_table_output_and_timings():
    html_text = render.step_inspector_html(events(), 0)
    assert "requested <b>3</b>, allowed <b>3</b>" in html_text and "constant K = 3" in html_text
    assert html_text.count("<tr class=\"row-") == 3
    for verdict in ("accepted", "rejected", "unchecked"):
        assert f"row-{verdict}" in html_text
    assert "0.200" in html_text and "0.900" in html_text  # min(1,p/q) and u of the rejected token
    assert "tok-recovered" in html_text and "␣world" in html_text
    assert "verify 80 ms" in html_text and "draft 10 ms" in html_text
    # out-of-range indexes clamp instead of failing
    assert "Step 2</b> of 3" in render.step_inspector_html(events(), 99)
    assert "No steps yet" in render.step_inspector_html([], 0)


def test_metrics_strip_shows_run_metrics():
    m = RunMetrics.from_events(events())
    html_text = render.metrics_html(m)
    assert m.new_tokens == 6 and m.accepted == 3 and m.drafted == 5
    assert ">6<" in html_text and ">60%<" in html_text  # new tokens and acceptance rate 3/5
    assert f">{m.mean_acceptance_length:.2f}<" in html_text
    assert "—" in render.metrics_html(None)


# -- figure -----------------------------------------------------------------------------------------

def test_acceptance_figure_traces():
    fig = acceptance_figure(events())
    assert isinstance(fig, go.Figure)
    names = [t.name for t in fig.data]
    assert names == list(TRACE_NAMES)
    by_name = {t.name: t for t in fig.data}
    assert list(by_name["accepted drafts"].y) == [1, 2, 0]
    assert list(by_name["+ bonus"].y) == [0, 1, 0]
    assert list(by_name["+ recovered"].y) == [1, 0, 0]
    assert list(by_name["+ baseline"].y) == [0, 0, 1]
    assert list(by_name[TRACE_NAMES[4]].y) == pytest.approx(rolling_mean([2, 3, 1]))
    # per-position acceptance over the two drafting steps: position 0 accepted in both, 1 in one, 2 in none
    assert list(by_name["per-position acceptance"].y) == pytest.approx([1.0, 0.5, 0.0])
    assert list(by_name["acceptance-length histogram"].x) == [1, 2, 3]
    assert list(by_name["acceptance-length histogram"].y) == [1, 1, 1]
    assert fig.layout.uirevision == UIREVISION and fig.layout.barmode == "stack"


def test_acceptance_figure_handles_no_events():
    fig = acceptance_figure([])
    assert isinstance(fig, go.Figure) and len(fig.data) == len(TRACE_NAMES)
    assert any("Run a prompt" in (a.text or "") for a in fig.layout.annotations)


def test_draft_length_figure_shows_choice_draft_acceptance_oracle_and_signal():
    from dataclasses import replace

    from engine.events import LengthDecision

    steps = [replace(e, decision=LengthDecision(3, 3, f"reason <{i}>", {"signal": 0.1 * i, "signal_name": "threshold"}))
             for i, e in enumerate(events())]
    fig = draft_length_figure(steps)
    by_name = {t.name: t for t in fig.data}
    assert list(by_name)[:5] == [*LENGTH_TRACE_NAMES, "threshold"]
    # the theory panel: E[tokens per step] for the median drafted length, the bound, the measured point
    theory = list(by_name)[5:]
    assert theory[0] == "E[tokens per step], K = 3" and theory[1].startswith("speedup bound, cost ratio c = ")
    measured = by_name["this run (measured)"]
    # 3 of 5 drafted tokens accepted over the 2 steps that drafted (the baseline step does not count, as in E[...])
    assert list(measured.x) == pytest.approx([3 / 5]) and list(measured.y) == pytest.approx([1 + 3 / 2])
    assert list(by_name["drafted"].y) == [e.num_drafted for e in steps]
    assert list(by_name["accepted"].y) == [1, 2, 0]
    assert list(by_name["chosen length"].y) == [3, 3, 3]
    assert all(k <= e.num_drafted for k, e in zip(by_name[LENGTH_TRACE_NAMES[3]].y, steps))
    assert list(by_name["threshold"].y) == pytest.approx([0.0, 0.1, 0.2])
    assert "reason &lt;1&gt;" in by_name["drafted"].hovertext[1]  # the reason, escaped
    assert "oracle" in fig.layout.title.text


def test_expected_tokens_per_step():
    from specviz.figures import expected_tokens_per_step

    assert expected_tokens_per_step(0.0, 4) == 1.0
    assert expected_tokens_per_step(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    assert expected_tokens_per_step(1.0, 4) == 5.0


def test_phase_figure_shows_each_workers_phases_and_waiting_time():
    from dataclasses import replace

    from engine.events import PhaseTimings, WorkerPhase
    from engine.metrics import worker_time
    from specviz.figures import phase_figure

    plain = [  # draft 0-10 ms, verify 10-100 ms, draft 100-110 ms, verify 110-200 ms
        replace(e, timings=PhaseTimings(0.01, 0.09, 0.0, 0.1 * i, 0.1 * i + 0.1, (
            WorkerPhase("drafter", "draft", 0.1 * i, 0.1 * i + 0.01),
            WorkerPhase("target", "verify", 0.1 * i + 0.01, 0.1 * i + 0.1))))
        for i, e in enumerate(events()[:2])
    ]
    totals = worker_time(plain)
    assert totals["drafter"] == {"busy_s": pytest.approx(0.02), "waiting_s": pytest.approx(0.18)}
    assert totals["target"] == {"busy_s": pytest.approx(0.18), "waiting_s": pytest.approx(0.02)}
    fig = phase_figure(plain)
    draft, verify = fig.data
    assert (draft.name, verify.name) == ("draft", "verify")
    assert list(draft.y) == ["drafter", "drafter"] and list(verify.y) == ["target", "target"]
    assert list(draft.base) == pytest.approx([0.0, 100.0]) and list(draft.x) == pytest.approx([10.0, 10.0])
    assert list(verify.base) == pytest.approx([10.0, 110.0]) and list(verify.x) == pytest.approx([90.0, 90.0])
    assert "drafter: busy 0.02 s, waiting 0.18 s" in fig.layout.title.text
    baseline = phase_figure(events()[2:])  # no phases: the baseline
    assert any("one worker" in (a.text or "") for a in baseline.layout.annotations)
    assert worker_time(events()[2:]) == {}


def test_draft_length_figure_handles_no_events():
    fig = draft_length_figure([])
    assert [t.name for t in fig.data] == list(LENGTH_TRACE_NAMES[:3])
    assert any("Run a prompt" in (a.text or "") for a in fig.layout.annotations)


def test_rolling_mean():
    assert rolling_mean([1, 3, 5], window=2) == [1, 2, 4]


def test_discarded_newline_drafts_do_not_break_the_output_lines():
    step = step_partial_accept(0)
    draft = step.draft[:2] + (DraftedToken(2, 14, "\n", 0.4, None, None, None, "unchecked"),)
    step = StepEvent(step.index, step.context_length, step.decision, draft, step.output, step.new_tokens,
                     step.target_forwards, step.timings)
    html_text = render.token_stream_html([step, step_baseline(1, stop=None)], focus_step=0)
    tail = html_text[html_text.index('class="draft-tail"'):html_text.index("tok-baseline")]
    text_only = re.sub(r'title="[^"]*"', "", tail)  # tooltips may hold newlines; the rendered text may not
    assert "↵" in text_only and "\n" not in text_only


def test_proposer_info_renders_summary_scalars_and_tables_escaped():
    from specviz.ui.render import proposer_info_html

    html = proposer_info_html(
        {
            "summary": "matched <b>3-gram</b>",
            "exit_layer": 4,
            "tables": [{"title": "n-gram table", "columns": ["next", "count", "score"],
                        "rows": [["<img src=x onerror=alert(1)>", 3, 0.5]]}],
        }
    )
    assert "matched &lt;b&gt;3-gram&lt;/b&gt;" in html
    assert "exit_layer = <b>4</b>" in html
    assert "<th>next</th><th>count</th><th>score</th>" in html
    assert "<img" not in html and "&lt;img␣src=x␣onerror=alert(1)&gt;" in html
    assert '<td class="num">3</td>' in html
