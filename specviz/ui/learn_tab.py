"""The "Learn" tab: seven short lessons, one idea and one interaction each, on the recorded traces (no model is
loaded). One lesson is visible at a time; a stepper (Previous / Next lesson and a lesson picker) moves between
them, and a `?lesson=N` link opens lesson N (the page's address follows the lesson shown, so it can be shared).

`build_learn_tab(demo, tabs)` adds the tab's content inside an open `gr.Tab` and registers its page-load event on
`demo`; `tabs` (the app's `gr.Tabs`, optional) lets lesson 7's buttons switch to the Playground and the Sampling
lab and lets a `?lesson=N` link open this tab. The lesson texts and computations live in `specviz.lessons`, the
figures in `specviz.lesson_figures`; this module holds the Gradio wiring and the lessons' HTML (model text always
through `render.esc`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from engine.events import StepEvent
from specviz import lessons as L
from specviz.figures import BLACK, GREEN, VERMILLION, draft_length_figure, draft_tree_figure, lattice_figure
from specviz.lesson_figures import decision_figure, lesson_style, shorten_subplot_titles, tradeoff_figure
from specviz.traces import RecordedTrace, bundled_traces

from . import render
from .controls import QUIET

PLAYGROUND_TAB = "playground"
SAMPLING_LAB_TAB = "sampling-lab"
LEARN_TAB = "learn"
REQUIRED_TRACES = ("showcase", "chain_sampled", "chain_greedy", "chain_adaptive", "chain_confidence", "tree",
                   "diffusion", "ar")
CURRENT = ' aria-current="step"'
TRACE_LABELS = {"showcase": "hybrid_tree (head + copy)", "chain_greedy": "chain, K = 4", "chain_sampled":
                "chain, K = 4, sampled", "chain_adaptive": "chain, heuristic K", "chain_confidence": "chain, confidence K",
                "tree": "dynamic tree", "diffusion": "diffusion lattice", "ar": "plain (ar)"}
CONTEXT_CHARS = 160  # the tail of the committed text shown before a step

# Scoped to the lesson stepper's HTML (Gradio's css_template), and the page-wide rules for plots on a dark page:
# lesson figures draw all text in INK (rgb(74, 83, 97)), swapped here for a light ink; black marks likewise.
STEPPER_CSS = """
ol { display: flex; flex-wrap: wrap; gap: 4px 6px; list-style: none; margin: 0; padding: 0; }
li { border: 1px solid var(--border-color-primary); border-radius: 999px; padding: 2px 10px; font-size: 0.85rem;
     color: var(--body-text-color-subdued); }
li[aria-current="step"] { border: 2px solid var(--color-accent); color: var(--body-text-color); font-weight: 700; }
"""
PAGE_CSS = """<style id="learn-css">
.dark .learn-plot text[style*="fill: rgb(74, 83, 97)"] { fill: #D5DAE1 !important; }
.dark .learn-plot .scatterlayer [style*="fill: rgb(34, 34, 34)"] { fill: #E5E7EB !important; }
.dark .learn-plot .scatterlayer [style*="stroke: rgb(34, 34, 34)"] { stroke: #E5E7EB !important; }
.dark .learn-plot .legend [style*="stroke: rgb(34, 34, 34)"] { stroke: #E5E7EB !important; }
.dark .learn-plot .layer-above path[style*="stroke: rgb(34, 34, 34)"] { stroke: #E5E7EB !important; }
.lesson-text p { font-size: 1rem; line-height: 1.55; }
.lesson-now { border-left: 4px solid var(--color-accent); padding: 6px 10px; margin: 4px 0;
  background: var(--background-fill-secondary); border-radius: 4px; line-height: 1.5; }
.lesson-now .phase-title { font-weight: 700; }
.l1 { font-size: 0.95rem; }
.l1-context { font-family: var(--sv-mono, monospace); white-space: pre-wrap; overflow-wrap: anywhere;
  border: 1px dashed var(--border-color-primary); border-radius: 6px; padding: 6px 8px; margin-bottom: 10px; }
.l1-label { font-family: var(--font); font-size: 0.72rem; text-transform: uppercase; letter-spacing: 0.05em;
  color: var(--body-text-color-subdued); margin-right: 6px; }
.l1-lane { display: flex; flex-wrap: wrap; gap: 8px; align-items: stretch; }
.l1-slot { min-width: 96px; flex: 1 1 96px; border: 2px solid var(--border-color-primary); border-radius: 8px;
  padding: 6px; text-align: center; }
.l1-slot.pending { border-style: dashed; opacity: 0.55; }
.l1-slot.drafted { border-color: #E69F00; }
.l1-slot.accepted { border-color: #0072B2; }
.l1-slot.rejected { border-color: #CC79A7; border-style: double; border-width: 4px; }
.l1-slot.unchecked { border-style: dashed; opacity: 0.7; }
.l1-slot.target { border-color: #009E73; }
.l1-slot.target.recovered { border-color: #D55E00; border-style: dotted; border-width: 3px; }
.l1-pos { font-size: 0.72rem; color: var(--body-text-color-subdued); }
.l1-token { font-family: var(--sv-mono, monospace); font-size: 1.05rem; margin: 4px 0; display: inline-block; }
.l1-note { font-size: 0.78rem; color: var(--body-text-color-subdued); }
.l1-verdict { font-size: 0.82rem; font-weight: 700; margin-top: 2px; }
.l1-pass { margin: 10px 0 4px; padding: 6px 8px; border-radius: 6px; font-size: 0.88rem;
  background: rgba(0, 114, 178, 0.12); border: 1px solid rgba(0, 114, 178, 0.5); }
.l1-commit { margin-top: 10px; font-family: var(--sv-mono, monospace); white-space: pre-wrap; overflow-wrap: anywhere; }
.l1-phases { display: flex; flex-wrap: wrap; gap: 4px; margin-top: 10px; font-size: 0.75rem; }
.l1-phases span { padding: 1px 6px; border-radius: 4px; border: 1px solid var(--border-color-primary);
  color: var(--body-text-color-subdued); }
.l1-phases span[aria-current="step"] { border: 2px solid var(--color-accent); color: var(--body-text-color); font-weight: 700; }
.l2-bar { width: 100%; max-width: 680px; color: var(--body-text-color); }
.learn-table-wrap { overflow-x: auto; max-width: 100%; }
.learn-table { border-collapse: collapse !important; font-size: 0.86rem !important; width: 100%; margin: 4px 0 !important; }
.learn-table th, .learn-table td { border: none !important; border-bottom: 1px solid var(--border-color-primary) !important;
  padding: 3px 6px !important; text-align: left; vertical-align: top; background: transparent; }
.learn-table th { font-weight: 600; color: var(--body-text-color-subdued); }
.learn-table td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.l2-numbers { display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: 0.95rem; margin: 2px 0 6px; }
.l2-numbers b { font-variant-numeric: tabular-nums; }
.learn-table tr.chosen td { font-weight: 700; background: rgba(0, 114, 178, 0.10); }
.learn-reasons { max-height: 260px; overflow-y: auto; }
.learn-rec { font-size: 1.05rem; line-height: 1.5; }
.learn-rec code { font-size: 1.05rem; }
</style>"""


@dataclass
class LearnTab:
    """The tab's navigation and the components app.py may wire further."""

    picker: gr.Dropdown
    previous: gr.Button
    next: gr.Button
    progress: gr.HTML
    columns: list[gr.Column]
    to_playground: gr.Button
    to_sampling_lab: gr.Button


def build_learn_tab(demo: gr.Blocks, tabs: gr.Tabs | None = None,
                    traces: dict[str, RecordedTrace] | None = None) -> LearnTab | None:
    """The Learn tab's content (inside an open gr.Tab); None when the recorded traces are missing (a notice says
    so)."""
    traces = bundled_traces() if traces is None else traces
    missing = [name for name in REQUIRED_TRACES if name not in traces]
    if missing:
        gr.Markdown(f"The lessons need the recorded traces ({', '.join(missing)} missing): run "
                    "`specviz record-traces`.")
        return None
    # the stepper: previous, picker, next, and the lesson list
    with gr.Row(elem_id="learn-stepper", equal_height=True):
        previous = gr.Button("← Previous lesson", elem_id="learn-prev", interactive=False, scale=1, min_width=140)
        picker = gr.Dropdown([(f"{x.number}. {x.title}", x.number) for x in L.LESSONS], value=1, label="Lesson",
                             elem_id="learn-picker", scale=3, interactive=True)
        following = gr.Button("Next lesson →", elem_id="learn-next", variant="primary", scale=1, min_width=140)
    progress = gr.HTML(progress_html(1), elem_id="learn-progress", css_template=STEPPER_CSS, head=PAGE_CSS,
                       js_on_load=ARIA_JS)
    # the lessons, one column each, only the current one visible
    builders: list[Callable[[dict[str, RecordedTrace]], Any]] = [
        _lesson_slow_motion, _lesson_decision, _lesson_tradeoff, _lesson_trees, _lesson_lattice, _lesson_policies,
        _lesson_choose]
    columns, switch = [], None
    for lesson, builder in zip(L.LESSONS, builders, strict=True):
        with gr.Column(visible=lesson.number == 1, elem_id=f"lesson-{lesson.number}",
                       elem_classes=["lesson"]) as column:
            switch = builder(traces) or switch
        columns.append(column)
    tab = LearnTab(picker, previous, following, progress, columns, *switch)
    _wire_stepper(demo, tab, tabs)
    return tab


# -- the stepper ---------------------------------------------------------------------------------------

def progress_html(current: int) -> str:
    """The lesson list, the current one marked (aria-current and a ▶ besides the outline)."""
    items = "".join(
        f'<li{CURRENT if x.number == current else ""}>'
        f'{"▶ " if x.number == current else ""}{x.number}. {render.esc(x.title)}</li>' for x in L.LESSONS)
    return (f'<nav aria-label="Lessons: lesson {current} of {L.N_LESSONS}"><ol>{items}</ol></nav>')


def show_lesson(n: object) -> list:
    """Updates for lesson n: the picker, the list, Previous / Next (disabled at the ends), one visible column."""
    n = L.clamp_lesson(n)
    return [n, progress_html(n), gr.Button(interactive=n > 1), gr.Button(interactive=n < L.N_LESSONS),
            *[gr.Column(visible=i == n) for i in range(1, L.N_LESSONS + 1)]]


PLOT_LABELS = {
    "learn2-plot": "Bar chart: the target's recorded top probabilities at this position, the residual after a "
                   "rejection, and the drafter's q for the drafted token",
    "learn3-plot": "Curves over the draft length K: tokens per target pass and the speedup bound, with the measured "
                   "point of the recorded trace, and a histogram of the hindsight-best lengths",
    "learn4-tree": "Draft tree of the selected step of the tree trace, accepted path emphasised",
    "learn4-chain": "The chain trace's draft at the same point of the text, drawn as a one-branch tree",
    "learn5-plot": "Token lattice of the selected diffusion step with the draft path and its verdicts",
    "learn6-plot": "Draft length per step for the selected policy, with the hindsight oracle's lengths",
}
# The stepper row is a group for assistive technology; the plots are images with a sentence (Gradio has no
# parameter for either)
ARIA_JS = ("const doc = element.ownerDocument; const row = doc.getElementById('learn-stepper');"
           "if (row) { row.setAttribute('role', 'group'); row.setAttribute('aria-label', 'Lesson stepper'); }"
           f"const labels = {json.dumps(PLOT_LABELS)};"
           "for (const [id, label] of Object.entries(labels)) { const el = doc.getElementById(id);"
           " if (el) { el.setAttribute('role', 'img'); el.setAttribute('aria-label', label); } }")
URL_SYNC_JS = """(n) => {
  const url = new URL(window.location.href);
  url.searchParams.set('lesson', String(n));
  window.history.replaceState(null, '', url);
}"""


def _wire_stepper(demo: gr.Blocks, tab: LearnTab, tabs: gr.Tabs | None) -> None:
    """Previous / Next / the picker show a lesson and put it in the address; `?lesson=N` opens it on load."""
    outputs = [tab.picker, tab.progress, tab.previous, tab.next, *tab.columns]
    for trigger, fn in ((tab.previous.click, lambda n: show_lesson(L.step_lesson(n, -1))),
                        (tab.next.click, lambda n: show_lesson(L.step_lesson(n, 1))),
                        (tab.picker.input, show_lesson)):
        trigger(fn, tab.picker, outputs, **QUIET).then(None, tab.picker, None, js=URL_SYNC_JS, **QUIET)

    def open_from_link(request: gr.Request) -> list:
        """A `?lesson=N` link: lesson N, and the Learn tab itself when the app passed its tabs."""
        n = L.lesson_from_query(dict(request.query_params) if request is not None else None)
        if n is None:
            return [gr.skip()] * (len(outputs) + (tabs is not None))
        return show_lesson(n) + ([gr.Tabs(selected=LEARN_TAB)] if tabs is not None else [])

    demo.load(open_from_link, None, outputs + ([tabs] if tabs is not None else []), **QUIET)
    if tabs is not None:
        tab.to_playground.click(lambda: gr.Tabs(selected=PLAYGROUND_TAB), None, tabs, **QUIET)
        tab.to_sampling_lab.click(lambda: gr.Tabs(selected=SAMPLING_LAB_TAB), None, tabs, **QUIET)


def _lesson_header(lesson: L.Lesson) -> None:
    """The lesson's title and its guided text (left column start)."""
    gr.HTML(f'<h2 style="margin:6px 0 2px">Lesson {lesson.number} of {L.N_LESSONS} · {render.esc(lesson.title)}</h2>',
            js_on_load=None)


def _guide(lesson: L.Lesson) -> None:
    gr.Markdown(lesson.text, elem_classes=["lesson-text"])
    gr.Markdown(f"**Try this:** {lesson.try_this}", elem_classes=["lesson-text"])


def _plot(fig: go.Figure, elem_id: str) -> gr.Plot:
    return gr.Plot(fig, show_label=False, elem_id=elem_id, elem_classes=["learn-plot"])


def now_html(text: str, title: str | None = None) -> str:
    """The 'what you see now' box under the guided text (announced politely to screen readers)."""
    head = f'<span class="phase-title">{render.esc(title)}:</span> ' if title else ""
    return f'<div class="lesson-now" role="status" aria-live="polite">{head}{render.esc(text)}</div>'


# -- lesson 1: one step in slow motion -----------------------------------------------------------------

def _slot_html(event: StepEvent, phase: L.Phase, i: int) -> str:
    """Draft position i at this phase: hidden, drafted (q), scored (p), then its verdict."""
    d = event.draft[i]
    if i >= phase.drafted:
        return (f'<div class="l1-slot pending" aria-hidden="true"><div class="l1-pos">+{i + 1}</div>'
                '<div class="l1-token">?</div></div>')
    verdict = None
    if i < phase.checked:
        verdict = d.verdict
    elif phase.checked and event.draft[phase.checked - 1].verdict == "rejected":
        verdict = "unchecked"
    css = verdict or "drafted"
    token_cls = f"tok tok-{verdict}" if verdict else "tok"
    q = "—" if d.draft_prob is None else f"{d.draft_prob:.2f}"
    notes = [f"drafter q = {q}"]
    if phase.scored:
        notes.append("target p = " + ("— (not needed)" if d.target_prob is None else f"{d.target_prob:.2f}"))
        if d.target_top and verdict != "unchecked":
            notes.append(f"target's top: “{render.esc(L.visible(d.target_top[0].text))}”")
    mark = {"accepted": "✓ accepted", "rejected": "✗ rejected", "unchecked": "– unchecked"}.get(verdict or "", "")
    return (f'<div class="l1-slot {css}"><div class="l1-pos">draft +{i + 1}</div>'
            f'<div class="l1-token"><span class="{token_cls}">{render.esc(L.visible(d.text))}</span></div>'
            + "".join(f'<div class="l1-note">{n}</div>' for n in notes)
            + (f'<div class="l1-verdict">{mark}</div>' if mark else "") + "</div>")


def _target_slot_html(event: StepEvent, phase: L.Phase) -> str:
    """The target's own token: a placeholder until the output phase."""
    o = event.output
    if not phase.output:
        hint = "scored, not yet used" if phase.scored else "the target's token"
        return (f'<div class="l1-slot pending"><div class="l1-pos">target</div><div class="l1-token">?</div>'
                f'<div class="l1-note">{hint}</div></div>')
    return (f'<div class="l1-slot target {render.esc(o.kind)}"><div class="l1-pos">target&#39;s token</div>'
            f'<div class="l1-token"><span class="tok tok-{render.esc(o.kind)}">{render.esc(L.visible(o.text))}</span>'
            f'</div><div class="l1-note">p = {o.prob:.2f}</div><div class="l1-verdict">+ {render.esc(o.kind)}</div></div>')


def slow_motion_html(events: Sequence[StepEvent], prompt: str, step: int, phase_index: int) -> str:
    """Lesson 1's visual: the context, the draft slots, the target pass, the target's token, the committed text,
    and the list of phases with the current one marked."""
    event = events[step]
    phases = L.slow_motion_phases(event)
    phase = phases[max(0, min(phase_index, len(phases) - 1))]
    before = L.context_text(events, step)
    tail = before[-CONTEXT_CHARS:] if before else prompt[-CONTEXT_CHARS:]
    label = "output so far" if before else "prompt"
    parts = [f'<div class="l1" role="img" aria-label="{render.esc(phase.title + ". " + phase.caption)}">',
             f'<div class="l1-context"><span class="l1-label">{label}</span>{"…" if len(tail) >= CONTEXT_CHARS else ""}'
             f'{render.esc(tail)}</div><div class="l1-lane">']
    parts += [_slot_html(event, phase, i) for i in range(event.num_drafted)]
    parts.append(_target_slot_html(event, phase) + "</div>")
    if phase.scored:  # the single target pass over all positions
        parts.append(f'<div class="l1-pass">One target pass scored {event.num_drafted + 1} positions in '
                     f'{event.timings.verify_s * 1000:.0f} ms (drafting took {event.timings.draft_s * 1000:.0f} ms).</div>')
    if phase.committed:
        new = "".join(f'<span class="tok tok-{render.esc(t.kind)}">{render.esc(t.text)}</span>' for t in event.new_tokens)
        parts.append(f'<div class="l1-commit"><span class="l1-label">committed</span>{render.esc(before[-60:])}{new}</div>')
    chips = "".join(f'<span{CURRENT if p is phase else ""}>{render.esc(p.title)}</span>' for p in phases)
    parts.append(f'<div class="l1-phases" aria-hidden="true">{chips}</div></div>')
    return "".join(parts)


def slow_motion_caption(events: Sequence[StepEvent], step: int, phase_index: int) -> str:
    phases = L.slow_motion_phases(events[step])
    phase = phases[max(0, min(phase_index, len(phases) - 1))]
    return now_html(phase.caption, f"Step {step}, phase {phase_index + 1} of {len(phases)} · {phase.title}")


def _lesson_slow_motion(traces: dict[str, RecordedTrace]) -> None:
    lesson, trace = L.LESSONS[0], traces["chain_greedy"]
    events, prompt = trace.events, trace.setup.prompt
    first = 1 if len(events) > 1 else 0  # step 0 starts from the prompt alone; step 1 shows a typical step
    _lesson_header(lesson)
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            _guide(lesson)
            with gr.Row():
                button = gr.Button("Next phase ▶", variant="primary", elem_id="learn1-next-phase")
            slider = gr.Slider(0, len(events) - 1, value=first, step=1, label=f"Step of “{trace.title}”",
                               elem_id="learn1-step")
        with gr.Column(scale=3, min_width=420):
            caption = gr.HTML(slow_motion_caption(events, first, 0), elem_id="learn1-caption", js_on_load=None)
            visual = gr.HTML(slow_motion_html(events, prompt, first, 0), elem_id="learn1-visual", js_on_load=None)
    phase = gr.State(0)

    def next_phase(step: float, current: int) -> list:
        s, p = L.advance(events, int(step), int(current))
        return [s, p, slow_motion_html(events, prompt, s, p), slow_motion_caption(events, s, p)]

    def pick_step(step: float) -> list:
        s = max(0, min(int(step), len(events) - 1))
        return [0, slow_motion_html(events, prompt, s, 0), slow_motion_caption(events, s, 0)]

    button.click(next_phase, [slider, phase], [slider, phase, visual, caption], **QUIET)
    slider.input(pick_step, slider, [phase, visual, caption], trigger_mode="always_last", **QUIET)


# -- lesson 2: accept or reject --------------------------------------------------------------------------

def uniform_bar_svg(d: L.Decision) -> str:
    """A 0-1 bar: the keep zone [0, min(1, p/q)] (solid), the reject zone (hatched), the uniform draw u (a pointer),
    with the numbers in text; role=img with the whole decision in words."""
    x0, width = 20, 600
    thr = max(0.0, min(1.0, d.threshold))
    tx = x0 + width * thr
    verdict = "kept" if d.verdict == "accepted" else "rejected"
    if d.u is None:
        words = f"no uniform draw recorded; threshold {thr:.2f}; {verdict}"
    else:
        words = f"u = {d.u:.2f} {'≤' if d.u <= thr else '>'} threshold min(1, p/q) = {thr:.2f}: {verdict}"
    parts = [f'<svg class="l2-bar" viewBox="0 0 640 104" role="img" aria-label="{render.esc(words)}">',
             '<defs><pattern id="l2-hatch" width="8" height="8" patternUnits="userSpaceOnUse" '
             f'patternTransform="rotate(45)"><rect width="8" height="8" fill="{VERMILLION}" fill-opacity="0.15"/>'
             f'<line x1="0" y1="0" x2="0" y2="8" stroke="{VERMILLION}" stroke-width="3"/></pattern></defs>',
             f'<rect x="{x0}" y="34" width="{width * thr:.1f}" height="28" fill="{GREEN}" fill-opacity="0.55"/>',
             f'<rect x="{tx:.1f}" y="34" width="{width * (1 - thr):.1f}" height="28" fill="url(#l2-hatch)"/>',
             f'<rect x="{x0}" y="34" width="{width}" height="28" fill="none" stroke="currentColor" stroke-opacity="0.5"/>',
             f'<line x1="{tx:.1f}" y1="26" x2="{tx:.1f}" y2="70" stroke="currentColor" stroke-width="2" stroke-dasharray="4 3"/>',
             f'<text x="{min(max(tx, 110), 530):.1f}" y="20" text-anchor="middle" fill="currentColor" font-size="13">'
             f'min(1, p/q) = {thr:.2f}</text>']
    if thr > 0.12:
        parts.append(f'<text x="{x0 + 6}" y="53" fill="currentColor" font-size="12">keep ✓</text>')
    if thr < 0.88:
        parts.append(f'<text x="{x0 + width - 6}" y="53" text-anchor="end" fill="currentColor" font-size="12">reject ✗</text>')
    if d.u is not None:
        ux = x0 + width * d.u
        parts += [f'<line x1="{ux:.1f}" y1="30" x2="{ux:.1f}" y2="66" stroke="{BLACK}" stroke-width="3"/>',
                  f'<polygon points="{ux - 7:.1f},80 {ux + 7:.1f},80 {ux:.1f},68" fill="currentColor"/>',
                  f'<text x="{min(max(ux, 40), 600):.1f}" y="97" text-anchor="middle" fill="currentColor" '
                  f'font-size="13" font-weight="700">u = {d.u:.2f}</text>']
    parts += [f'<text x="{x0}" y="80" fill="currentColor" font-size="11" text-anchor="middle">0</text>',
              f'<text x="{x0 + width}" y="80" fill="currentColor" font-size="11" text-anchor="middle">1</text>', "</svg>"]
    return "".join(parts)


def decision_html(d: L.Decision) -> str:
    """The numbers of the decision, the 0-1 bar, the verdict in words, and (at a rejection) what replaced it."""
    ratio = "∞" if d.q == 0 else f"{d.p / d.q:.2f}"
    rows = [("target p", f"{d.p:.3f}"), ("drafter q", f"{d.q:.3f}"), ("p / q", ratio),
            ("min(1, p/q)", f"{d.threshold:.3f}"), ("u", "—" if d.u is None else f"{d.u:.3f}")]
    numbers = " ".join(f"<span>{k} = <b>{v}</b></span>" for k, v in rows)
    mark = "✓ accepted" if d.verdict == "accepted" else "✗ rejected"
    parts = [f'<div><b>Step {d.step}, draft position {d.position + 1}: '
             f'<span class="tok tok-{render.esc(d.verdict)}">{render.esc(L.visible(d.text))}</span> {mark}</b></div>',
             f'<div class="l2-numbers">{numbers}</div>', uniform_bar_svg(d)]
    if d.verdict == "rejected":
        parts.append(f'<p>Instead the target drew <span class="tok tok-recovered">{render.esc(L.visible(d.output_text))}'
                     "</span> from the residual max(0, p − q), renormalised. Only the top candidates of each "
                     "distribution are recorded, so the bars below do not sum to 100%.</p>")
    return "".join(parts)


def decision_sentence(d: L.Decision) -> str:
    """The decision in one or two plain sentences."""
    if d.u is None:
        return f"Greedy check: the token is kept only if it is the target's top choice; here it was {d.verdict}."
    if d.p >= d.q:
        why = f"p ≥ q, so the keep probability is 1: any u keeps it (u = {d.u:.2f})."
    elif d.verdict == "accepted":
        why = f"p < q, so it is kept with probability {d.threshold:.2f}; the draw u = {d.u:.2f} fell below: kept."
    else:
        why = f"p < q, so it is kept with probability {d.threshold:.2f}; the draw u = {d.u:.2f} fell above: rejected."
    return f"The target gives this token p = {d.p:.2f}, the drafter gave it q = {d.q:.2f}. {why}"


def _lesson_decision(traces: dict[str, RecordedTrace]) -> None:
    lesson, events = L.LESSONS[1], traces["chain_sampled"].events
    key = L.default_decision(events)
    d = L.decision_at(events, key)
    _lesson_header(lesson)
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            _guide(lesson)
            picker = gr.Dropdown(L.decision_choices(events), value=key, label="Drafted token (sampled at temperature 0.8)",
                                 elem_id="learn2-token", interactive=True)
            caption = gr.HTML(now_html(decision_sentence(d)), elem_id="learn2-caption", js_on_load=None)
        with gr.Column(scale=3, min_width=420):
            visual = gr.HTML(decision_html(d), elem_id="learn2-visual", js_on_load=None)
            plot = _plot(decision_figure(d), "learn2-plot")

    def pick(choice: str) -> list:
        dd = L.decision_at(events, choice)
        return [now_html(decision_sentence(dd)), decision_html(dd), decision_figure(dd)]

    picker.input(pick, picker, [caption, visual, plot], **QUIET)


# -- lesson 3: draft length and cost -----------------------------------------------------------------------

def measured_html(m: L.Measured, title: str) -> str:
    """The trace's measured numbers behind the star, and why the measured speedup sits below the bound."""
    oracle = ", ".join(f"K' = {k}: {n}" for k, n in m.oracle_lengths.items())
    rows = [
        ("acceptance a (accepted ÷ checked)", f"{m.a:.2f}"),
        ("acceptance rate (accepted ÷ drafted)", f"{m.acceptance_rate:.0%}"),
        ("tokens per target pass (mean acceptance length)", f"{m.mean_acceptance_length:.2f}"),
        ("drafter cost per token", f"{m.draft_ms_per_token:.1f} ms"),
        ("one plain target step (the ar trace)", f"{m.plain_step_ms:.1f} ms"),
        ("cost ratio c", f"{m.c:.2f}"),
        ("one verification pass of K + 1 positions", f"{m.verify_ms:.1f} ms ({m.verify_ratio:.2f}x a plain step)"),
        ("measured speed", f"{m.tokens_per_s:.1f} vs {m.baseline_tokens_per_s:.1f} tok/s plain = {m.speedup:.2f}x"),
        ("oracle lengths (steps)", oracle + (f"; {m.oracle_bounded} fully accepted" if m.oracle_bounded else "")),
    ]
    body = "".join(f'<tr><th scope="row">{render.esc(k)}</th><td class="num">{render.esc(v)}</td></tr>' for k, v in rows)
    return (f'<div><b>Measured on “{render.esc(title)}”</b></div><div class="learn-table-wrap">'
            f'<table class="learn-table">{body}</table></div>'
            '<p class="l1-note">The bound prices a verification pass like one plain target step; on this CPU it cost '
            f'{m.verify_ratio:.2f}x that, which is part of why the star sits where it does.</p>')


def tradeoff_sentence(a: float, k: int, c: float) -> str:
    tokens, bound, best = L.expected_tokens_per_step(a, k), L.speedup_bound(a, k, c), L.best_k(a, c)
    verdict = "faster than" if bound > 1 else "no faster than"
    return (f"With a = {a:.2f}, K = {k} and c = {c:.2f}: {tokens:.2f} tokens per target pass, at most {bound:.2f}x "
            f"plain decoding ({verdict} plain). The best K for these a and c is {best}.")


def _lesson_tradeoff(traces: dict[str, RecordedTrace]) -> None:
    lesson, trace = L.LESSONS[2], traces["chain_greedy"]
    m = L.measure(trace.events, traces["ar"].events)
    a0, k0, c0 = round(m.a, 2), max(1, m.k), round(m.c, 2)
    _lesson_header(lesson)
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            _guide(lesson)
            a = gr.Slider(0.0, 0.99, value=a0, step=0.01, label="acceptance a", elem_id="learn3-a")
            k = gr.Slider(1, 12, value=k0, step=1, label="draft length K", elem_id="learn3-k")
            c = gr.Slider(0.0, 1.0, value=c0, step=0.01, label="drafter cost ratio c", elem_id="learn3-c")
            caption = gr.HTML(now_html(tradeoff_sentence(a0, k0, c0)), elem_id="learn3-caption", js_on_load=None)
        with gr.Column(scale=3, min_width=420):
            plot = _plot(tradeoff_figure(a0, k0, c0, m), "learn3-plot")
            gr.HTML(measured_html(m, trace.title), elem_id="learn3-measured", js_on_load=None)

    def update(av: float, kv: float, cv: float) -> list:
        return [now_html(tradeoff_sentence(float(av), int(kv), float(cv))), tradeoff_figure(float(av), int(kv), float(cv), m)]

    for slider in (a, k, c):
        slider.input(update, [a, k, c], [caption, plot], trigger_mode="always_last", **QUIET)


# -- lesson 4: trees vs chains -----------------------------------------------------------------------------

def summary_table_html(rows: Sequence[L.RunSummary], chosen: str | None = None) -> str:
    """The traces side by side; speed also as a multiple of the plain (ar) trace's when it is among them."""
    plain = next((r.tokens_per_s for r in rows if r.name == "ar"), None)
    head = ("<tr><th>trace</th><th>tokens per target pass</th><th>acceptance rate</th><th>target passes</th>"
            "<th>drafted per step</th><th>tok/s</th>" + ("<th>x plain</th>" if plain else "") + "</tr>")
    body = "".join(
        f'<tr class="{"chosen" if r.name == chosen else ""}"><td title="{render.esc(r.title)}">'
        f'{"▶ " if r.name == chosen else ""}{render.esc(TRACE_LABELS.get(r.name, r.name))}</td>'
        f'<td class="num">{r.mean_acceptance_length:.2f}</td>'
        f'<td class="num">{"—" if r.acceptance_rate is None else f"{r.acceptance_rate:.0%}"}</td>'
        f'<td class="num">{r.target_passes}</td><td class="num">{r.drafted_per_step:.1f}</td>'
        f'<td class="num">{r.tokens_per_s:.1f}</td>'
        + (f'<td class="num">{r.tokens_per_s / plain:.2f}x</td>' if plain else "") + "</tr>" for r in rows)
    return f'<div class="learn-table-wrap"><table class="learn-table">{head}{body}</table></div>'


def tree_pair(tree: Sequence[StepEvent], chain: Sequence[StepEvent], step: int) -> tuple[go.Figure, go.Figure, str]:
    """The tree step, the chain step at the same point of the text, and a sentence comparing them."""
    t = tree[max(0, min(step, len(tree) - 1))]
    c = L.matching_chain_step(t, chain)
    tree_fig = _tree_style(draft_tree_figure(t), f"Tree (step {t.index}): {len(t.tree) - 1} drafted nodes")
    chain_fig = _tree_style(draft_tree_figure(L.chain_as_tree(c, L.last_token_before(chain, c))),
                            f"Chain (step {c.index}): {c.num_drafted} drafted tokens")
    same = "at the same point of the text" if c.context_length == t.context_length else "covering the same point"
    sentence = (f"From context position {t.context_length}: the tree checked {len(t.tree) - 1} nodes and kept "
                f"{t.num_accepted} + 1 {t.output.kind}; the chain step {same} checked {c.num_drafted} and kept "
                f"{c.num_accepted} + 1 {c.output.kind}. Both took one target pass.")
    return tree_fig, chain_fig, sentence


def _tree_style(fig: go.Figure | None, title: str) -> go.Figure:
    """A shared draft-tree figure in a lesson column: short title, legend under the plot."""
    fig = fig or go.Figure()
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.3, xanchor="left", x=0),
                      margin=dict(l=20, r=20, t=40, b=90))
    fig.update_xaxes(title_text="depth (tokens ahead)", title_standoff=4)
    return lesson_style(fig, title, height=max(300, (fig.layout.height or 300) + 50))


def _lesson_trees(traces: dict[str, RecordedTrace]) -> None:
    lesson = L.LESSONS[3]
    tree, chain = traces["tree"].events, traces["chain_greedy"].events
    first = 1 if len(tree) > 1 else 0
    tree_fig, chain_fig, sentence = tree_pair(tree, chain, first)
    rows = [L.summarise(n, traces[n].title, traces[n].events) for n in ("tree", "chain_greedy", "ar")]
    _lesson_header(lesson)
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            _guide(lesson)
            slider = gr.Slider(0, len(tree) - 1, value=first, step=1, label="Step of the tree trace", elem_id="learn4-step")
            caption = gr.HTML(now_html(sentence), elem_id="learn4-caption", js_on_load=None)
        with gr.Column(scale=3, min_width=420):
            gr.HTML(summary_table_html(rows, "tree"), elem_id="learn4-table", js_on_load=None)
            tree_plot = _plot(tree_fig, "learn4-tree")
            chain_plot = _plot(chain_fig, "learn4-chain")

    def pick(step: float) -> list:
        tf, cf, s = tree_pair(tree, chain, int(step))
        return [now_html(s), tf, cf]

    slider.input(pick, slider, [caption, tree_plot, chain_plot], trigger_mode="always_last", **QUIET)


# -- lesson 5: the diffusion lattice -----------------------------------------------------------------------

def lattice_view(events: Sequence[StepEvent], step: int) -> tuple[go.Figure, str]:
    event = events[max(0, min(step, len(events) - 1))]
    fig = lattice_figure(event)
    if fig is None:  # a step that drafted nothing (the token budget ran out): say so instead of empty axes
        fig = go.Figure()
        fig.add_annotation(text="nothing drafted at this step: no lattice", x=0.5, y=0.5, xref="paper",
                           yref="paper", showarrow=False, font=dict(size=14))
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.16, xanchor="left", x=0),
                      margin=dict(l=20, r=20, t=60, b=70))
    fig.update_xaxes(title_text="draft position (tokens ahead)")
    accepted = event.num_accepted
    title = f"Step {event.index}: {len(event.lattice)} positions, path accepted {accepted} of {event.num_drafted}"
    fig = lesson_style(fig, title, height=(fig.layout.height or 300) + 40)
    story = "".join(f"<p>{render.esc(line)}</p>" for line in L.lattice_story(event))
    return fig, f'<div class="lesson-now" role="status" aria-live="polite">{story}</div>'


def _lesson_lattice(traces: dict[str, RecordedTrace]) -> None:
    lesson, events = L.LESSONS[4], traces["diffusion"].events
    fig, story = lattice_view(events, 0)
    _lesson_header(lesson)
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            _guide(lesson)
            slider = gr.Slider(0, len(events) - 1, value=0, step=1, label="Step of the diffusion trace",
                               elem_id="learn5-step")
            caption = gr.HTML(story, elem_id="learn5-caption", js_on_load=None)
        with gr.Column(scale=3, min_width=420):
            plot = _plot(fig, "learn5-plot")

    def pick(step: float) -> list:
        f, s = lattice_view(events, int(step))
        return [s, f]

    slider.input(pick, slider, [caption, plot], trigger_mode="always_last", **QUIET)


# -- lesson 6: adaptive draft length -------------------------------------------------------------------------

def policy_figure(events: Sequence[StepEvent]) -> go.Figure:
    """The shared draft-length figure, fitted to a lesson column: no long title, a short theory-panel title."""
    fig = draft_length_figure(events)
    shorten_subplot_titles(fig, "Theory", "Theory vs this run")
    fig.update_layout(margin=dict(l=50, r=50, t=40, b=40))
    return lesson_style(fig, None, height=440)


def reasons_html(events: Sequence[StepEvent]) -> str:
    """Every step's length decision and its reason (model-free text from the policy, escaped)."""
    rows = "".join(
        f'<tr><td class="num">{e.index}</td><td class="num">{e.decision.allowed}</td><td class="num">{e.num_drafted}</td>'
        f'<td class="num">{e.num_accepted}</td><td>{render.esc(L.step_reason(e))}</td></tr>' for e in events)
    return ('<div class="learn-reasons learn-table-wrap" tabindex="0" role="region" '
            'aria-label="Each step: chosen length and the reason"><table class="learn-table"><tr><th>step</th><th>chose K</th><th>drafted</th><th>accepted</th>'
            f"<th>reason</th></tr>{rows}</table></div>")


def policies_table_html(rows: Sequence[L.PolicyRow], chosen: str) -> str:
    head = ("<tr><th>policy</th><th>mean K</th><th>acceptance rate</th><th>tokens per target pass</th><th>tok/s</th>"
            "<th>below the oracle</th></tr>")
    body = "".join(
        f'<tr class="{"chosen" if r.label == chosen else ""}"><td>{"▶ " if r.label == chosen else ""}'
        f'{render.esc(r.label.split(" (")[0])}</td><td class="num">{r.mean_k:.1f}</td><td class="num">{r.acceptance_rate:.0%}</td>'
        f'<td class="num">{r.mean_acceptance_length:.2f}</td><td class="num">{r.tokens_per_s:.1f}</td>'
        f'<td class="num">{"—" if r.oracle_gap is None else f"{r.oracle_gap:.0%}"}</td></tr>' for r in rows)
    return f'<div class="learn-table-wrap"><table class="learn-table">{head}{body}</table></div>'


def _lesson_policies(traces: dict[str, RecordedTrace]) -> None:
    lesson = L.LESSONS[5]
    rows = [L.policy_row(label, name, traces[name].events) for label, name in L.POLICIES.items()]
    first = next(iter(L.POLICIES))
    _lesson_header(lesson)
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            _guide(lesson)
            radio = gr.Radio(list(L.POLICIES), value=first, label="Length policy", elem_id="learn6-policy")
            table = gr.HTML(policies_table_html(rows, first), elem_id="learn6-table", js_on_load=None)
        with gr.Column(scale=3, min_width=420):
            plot = _plot(policy_figure(traces[L.POLICIES[first]].events), "learn6-plot")
            reasons = gr.HTML(reasons_html(traces[L.POLICIES[first]].events), elem_id="learn6-reasons", js_on_load=None)

    def pick(label: str) -> list:
        events = traces[L.POLICIES.get(label, "chain_greedy")].events
        return [policies_table_html(rows, label), policy_figure(events), reasons_html(events)]

    radio.input(pick, radio, [table, plot, reasons], **QUIET)


# -- lesson 7: choosing a strategy -------------------------------------------------------------------------

def recommendation_html(rec: L.Recommendation, traces: dict[str, RecordedTrace]) -> str:
    """The recommendation, its reason, and the recorded evidence with where and when it was recorded."""
    names = [n for n in rec.evidence if n in traces] + ([] if "ar" in rec.evidence else ["ar"])
    rows = [L.summarise(n, traces[n].title, traces[n].events) for n in names]
    where = {n: traces[n].recorded for n in rec.evidence if n in traces}
    machines = sorted({f"{r.get('date', '?')} on {r.get('cpu', '?')}, {r.get('torch_threads', '?')} threads"
                       for r in where.values()})
    return (f'<div class="learn-rec" role="status" aria-live="polite">Try <code>{render.esc(rec.strategy)}</code> '
            f"({render.esc(rec.settings)}): {render.esc(rec.reason)}.</div>"
            f"<p><b>Evidence</b> (recorded traces, same prompt except the showcase):</p>{summary_table_html(rows)}"
            f'<p class="l1-note">Recorded {render.esc("; ".join(machines))}. Speeds depend on the machine: '
            "measure on yours in the Playground.</p>")


def _lesson_choose(traces: dict[str, RecordedTrace]) -> tuple[gr.Button, gr.Button]:
    lesson = L.LESSONS[6]
    first = L.recommend("none", False, "greedy")
    _lesson_header(lesson)
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            _guide(lesson)
            repeated = gr.Radio([(v, k) for k, v in L.REPEATED_CHOICES.items()], value="none",
                                label="Is there repeated text or a document to copy from?", elem_id="learn7-repeated")
            head = gr.Radio([(v, k) for k, v in L.HEAD_CHOICES.items()], value=False,
                            label="Is a draft head trained for your target model?", elem_id="learn7-head")
            sampling = gr.Radio([(v, k) for k, v in L.SAMPLING_CHOICES.items()], value="greedy",
                                label="Sampling or greedy?", elem_id="learn7-sampling")
        with gr.Column(scale=3, min_width=420):
            result = gr.HTML(recommendation_html(first, traces), elem_id="learn7-result", js_on_load=None)
            with gr.Row():
                to_playground = gr.Button("Try it in the Playground", variant="primary", elem_id="learn7-playground")
                to_lab = gr.Button("Is it really lossless? → Sampling lab", elem_id="learn7-sampling-lab")

    def pick(r: str, h: bool, s: str) -> str:
        return recommendation_html(L.recommend(r, bool(h), s), traces)

    for radio in (repeated, head, sampling):
        radio.input(pick, [repeated, head, sampling], result, **QUIET)
    return to_playground, to_lab
