"""The "What if…" panel under a step inspector: re-run the chosen step of the shown run with K = 1..8, or fork
the run there with another strategy (specviz.whatif does the engine work; this module only draws and wires).

`build_whatif_panel(prefix, runner, gate)` adds the components inside the open column (under the step
inspector); `WhatIfPanel.wire(view, api_names)` wires them to a `RunView`'s state and step slider once the
view is assembled. Both buttons run models: they wait in the shared "engine" queue and hold the session's
one model run (`RunGate`), as the Playground's Run does. Every message reaches the page through
`render.esc` / `render.status_html`; a SpecVizError or an input error becomes the panel's status line.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine import StepEvent
from engine.errors import ConfigError
from specviz.figures import BLUE, GREY, ORANGE
from specviz.runner import Runner
from specviz.whatif import (
    FALLBACK_STRATEGY,
    Continuation,
    ForkReport,
    KOutcome,
    WhatIfReport,
    check_step,
    fork,
    run_from_state,
    what_if_k,
)

from . import render
from .controls import ENGINE_CONCURRENCY, QUIET, error_status, explain
from .inputs import INPUT_ERRORS, STRATEGY_NAMES, max_tokens_from_input, strategy_from_inputs
from .panels import RunView
from .sessions import RunGate

DEFAULT_FORK_TOKENS = 32
MAX_FORK_TOKENS = 256  # a fork runs two continuations one after the other: keep them short
TRANSPARENT = "rgba(0,0,0,0)"  # plot backgrounds: the page's (light or dark) theme shows through
GRID = "rgba(140,140,140,0.25)"


@dataclass
class WhatIfPanel:
    runner: Runner
    gate: RunGate
    accordion: gr.Accordion
    status: gr.HTML
    k_button: gr.Button
    k_table: gr.HTML
    k_plot: gr.Plot
    strategy: gr.Dropdown
    max_new: gr.Number
    fork_button: gr.Button
    fork_result: gr.HTML

    # -- handlers (model work) ------------------------------------------------------------------------

    def run_what_if(self, state: dict | None, step: Any) -> Iterator[dict]:
        """What-if K = 1..8 at the slider's step of the shown run."""
        try:
            setup, events = run_from_state(state)
            index = check_step(events, step)
        except INPUT_ERRORS as exc:
            yield {self.status: error_status(exc)}
            return
        yield {self.status: render.status_html(f"Re-running step {index} once per K (loading models if needed)…",
                                               "running")}
        try:
            report = what_if_k(self.runner, setup, events, index)
        except Exception as exc:  # SpecVizError: the person's message; anything else: logged, summarised
            yield {self.status: error_status(exc)}
            return
        yield {self.status: render.status_html(whatif_summary(report), "ok"), self.k_table: whatif_table_html(report),
               self.k_plot: gr.update(value=whatif_figure(report), visible=True)}

    def run_fork(self, state: dict | None, step: Any, strategy: Any, max_new_tokens: Any) -> Iterator[dict]:
        """Fork the shown run at the slider's step: the chosen strategy and the run's own, one after the other."""
        try:
            setup, events = run_from_state(state)
            index = check_step(events, step)
            other = strategy_from_inputs(strategy, {})
            budget = max_tokens_from_input(max_new_tokens)
            if budget > MAX_FORK_TOKENS:
                raise ConfigError("max tokens", f"a fork runs two continuations: ask for at most {MAX_FORK_TOKENS}")
        except INPUT_ERRORS as exc:
            yield {self.status: error_status(exc)}
            return
        yield {self.status: render.status_html(f"Forking at step {index}: {setup.strategy} again, then {other.name}, "
                                               f"{budget} tokens each…", "running")}
        try:
            report = fork(self.runner, setup, events, index, other, budget)
        except Exception as exc:
            yield {self.status: error_status(exc)}
            return
        yield {self.status: render.status_html(fork_summary(report), "ok"),
               self.fork_result: fork_html(report, context_tail(events, index))}

    def suggest_strategy(self, state: dict | None, current: str | None) -> dict:
        """On opening the panel: a fork strategy that differs from the run's (the person's own choice kept)."""
        setup = (state or {}).get("setup")
        run_strategy = getattr(setup, "strategy", None)
        if current and current != run_strategy:
            return gr.update()
        return gr.update(value=contrast_strategy(run_strategy))

    # -- wiring ---------------------------------------------------------------------------------------

    def wire(self, view: RunView, api_names: tuple[str, str] = ("what_if_k", "fork"), documented: bool = True) -> None:
        """Wire the buttons to `view`'s state and step slider. `api_names`: the two API endpoints' names (a second
        copy of the panel needs its own, and is best left out of the API page: documented=False)."""
        refuse = self._refuse
        # model work: the shared engine queue, the queue position on the panel's status line
        heavy = dict(concurrency_id=ENGINE_CONCURRENCY, concurrency_limit=2, show_progress="full",
                     show_progress_on=[self.status], **({} if documented else {"api_visibility": "undocumented"}))
        self.k_button.click(self.gate.guard(self.run_what_if, refuse), [view.state, view.slider],
                            [self.status, self.k_table, self.k_plot], api_name=api_names[0], **heavy)
        self.fork_button.click(self.gate.guard(self.run_fork, refuse),
                               [view.state, view.slider, self.strategy, self.max_new],
                               [self.status, self.fork_result], api_name=api_names[1], **heavy)
        self.accordion.expand(self.suggest_strategy, [view.state, self.strategy], [self.strategy], **QUIET)

    def _refuse(self, exc: Exception) -> dict:
        return {self.status: error_status(exc)}


def build_whatif_panel(prefix: str, runner: Runner, gate: RunGate) -> WhatIfPanel:
    """The panel's components, added to the open column (call `wire` once the RunView is assembled)."""
    with gr.Accordion("What if… (re-run this step, or fork the run here)", open=False,
                      elem_id=f"{prefix}whatif") as accordion:
        explain(
            "Ask the real engine about the step chosen above, from exactly the context it had. **What if K = 1..8** "
            "re-runs that one step with a chain drafter of fixed length K: more K can mean more tokens per target "
            "pass, but each extra drafted token costs drafter time and is wasted after a rejection. **Fork** "
            "continues from the same point with another strategy (and the run's own again, for a fair side by "
            "side). Under greedy decoding every lossless strategy must write the same text."
        )
        status = gr.HTML(render.status_html("Pick a step of a finished run, then ask."), elem_id=f"{prefix}whatif-status",
                         js_on_load=None)
        k_button = gr.Button("What if K = 1..8 here?", size="sm", elem_id=f"{prefix}whatif-k")
        k_table = gr.HTML("", elem_id=f"{prefix}whatif-table", js_on_load=None)
        k_plot = gr.Plot(None, visible=False, elem_id=f"{prefix}whatif-plot", show_label=False)
        with gr.Row(equal_height=True):
            strategy = gr.Dropdown(STRATEGY_NAMES, value=FALLBACK_STRATEGY, label="fork with strategy", scale=3,
                                   min_width=160, elem_id=f"{prefix}fork-strategy")
            max_new = gr.Number(DEFAULT_FORK_TOKENS, step=1, minimum=1, maximum=MAX_FORK_TOKENS, label="max tokens",
                                scale=1, min_width=100, elem_id=f"{prefix}fork-max-tokens")
            fork_button = gr.Button("Fork from here", size="sm", scale=1, min_width=130, elem_id=f"{prefix}fork")
        fork_result = gr.HTML("", elem_id=f"{prefix}fork-result", js_on_load=None)
    return WhatIfPanel(runner, gate, accordion, status, k_button, k_table, k_plot, strategy, max_new, fork_button,
                       fork_result)


# -- what the panel shows (pure functions of the reports) ----------------------------------------------

def contrast_strategy(run_strategy: str | None) -> str:
    """A fork strategy other than the run's: draft_model, or the autoregressive baseline for a draft_model run."""
    return "ar" if run_strategy == FALLBACK_STRATEGY else FALLBACK_STRATEGY


def context_tail(events: Sequence[StepEvent], step: int, chars: int = 80) -> str:
    """The last characters of the output before `step` (where the fork starts)."""
    text = "".join(t.text for e in events[:step] for t in e.new_tokens)
    return text if len(text) <= chars else "…" + text[-chars:]


def _ms(seconds: float) -> str:
    """Milliseconds, without the unit (the column header says ms)."""
    return f"{seconds * 1000:.1f}" if seconds < 0.1 else f"{seconds * 1000:.0f}"


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _draft_spans(draft, new_tokens) -> str:
    """A step's drafted tokens coloured by verdict, then the target's own token coloured by its kind."""
    spans = [f'<span class="tok tok-{render.esc(d.verdict)}" title="{render.esc(d.verdict)}">'
             f'{render.esc(render.visible_text(d.text))}</span>' for d in draft]
    own = [t for t in new_tokens if t.kind != "accepted"]
    spans += [f' → <span class="tok tok-{render.esc(t.kind)}" title="{render.esc(render.KIND_HELP.get(t.kind, t.kind))}">'
              f'{render.esc(render.visible_text(t.text))}</span>' for t in own]
    return "".join(spans) or '<span class="muted">nothing drafted</span>'


def _check_cell(o: KOutcome) -> str:
    if o.agrees is None:
        return '<td class="muted" title="greedy only, and only for a draft that begins the recorded one">—</td>'
    mark = "✓" if o.agrees else "✗"
    verdict = "agrees" if o.agrees else "disagrees"
    return (f'<td title="the recorded step predicts {o.recorded_accepted} accepted: this re-run {verdict}">{mark} '
            f'{o.recorded_accepted}</td>')


def _recorded_draft(rec: StepEvent) -> str:
    """The recorded step's draft: its chain, or for a tree its size and the accepted path."""
    if not rec.tree:
        return _draft_spans(rec.draft, rec.new_tokens)
    path = [d for d in rec.draft if d.verdict == "accepted"]
    return (f'<span class="muted">a tree of {len(rec.draft)} nodes; kept: </span>'
            + _draft_spans(path, rec.new_tokens))


def _recorded_row(report: WhatIfReport) -> str:
    rec = report.recorded
    t = rec.timings
    step_s = t.end_s - t.start_s
    label = "tree" if rec.tree else f"K={report.recorded_k}"
    return (f'<tr style="font-weight:600"><td title="the step as the run recorded it">run<br>{render.esc(label)}</td>'
            f'<td>{_recorded_draft(rec)}</td>'
            f'<td class="num">{rec.num_accepted}</td><td class="num">{len(rec.new_tokens)}</td><td class="num">1</td>'
            f'<td class="num">{_ms(t.draft_s)}</td><td class="num">{_ms(t.verify_s)}</td>'
            f'<td class="num">{_rate(len(rec.new_tokens) / step_s if step_s > 0 else None)}</td><td></td></tr>')


def whatif_table_html(report: WhatIfReport) -> str:
    """One row per K (the recorded step first): draft with verdicts, tokens, passes, measured times, tokens/s."""
    head = ('<tr><th>K</th><th>draft → target\'s token</th><th title="drafted tokens kept">acc.</th>'
            '<th title="tokens produced by the step">tok.</th><th title="target forward passes">passes</th>'
            '<th title="drafter time, ms">draft ms</th><th title="verification time, ms">verify ms</th>'
            '<th>tok/s</th><th title="does the recorded step agree? (greedy, same draft: its verdicts predict the accepted count)">check</th></tr>')
    rows = [_recorded_row(report)]
    for o in report.outcomes:
        mark = ' style="box-shadow: inset 3px 0 0 var(--sv-orange)"' if o.k == report.recorded_k else ""
        rows.append(f'<tr{mark}><td class="num">{o.k}</td><td>{_draft_spans(o.draft, o.new_tokens)}</td>'
                    f'<td class="num">{o.accepted}</td><td class="num">{o.produced}</td><td class="num">{o.target_forwards}</td>'
                    f'<td class="num">{_ms(o.draft_s)}</td><td class="num">{_ms(o.verify_s)}</td>'
                    f'<td class="num">{_rate(o.tokens_per_s)}</td>{_check_cell(o)}</tr>')
    stand_in = ("" if report.own_strategy else
                f" {render.esc(report.run_strategy)} has no chain length K: {FALLBACK_STRATEGY} stands in.")
    clamp = (f" K above {report.budget - 1} is clamped: the run had {report.budget} tokens of budget left here."
             if report.budget - 1 < max(o.k for o in report.outcomes) else "")
    note = (f'<div class="small muted">Each row is one real step from the {report.context_length}-token context of step '
            f'{report.step}, with {render.esc(short_name(report.strategy))} at a constant K.'
            f'{stand_in}{clamp} Times: the fastest of {report.repeats} re-runs on this machine (the first row was timed during the '
            f'run itself, perhaps on a busier or colder machine: compare the K rows with each other).</div>')
    return (f'<div class="insp-table-wrap"><table class="insp-table whatif-table">{head}{"".join(rows)}</table></div>'
            f"{note}")


def whatif_summary(report: WhatIfReport) -> str:
    best = max(report.outcomes, key=lambda o: o.tokens_per_s or 0.0)
    line = (f"Step {report.step}: fastest here K = {best.k} ({_rate(best.tokens_per_s)} tokens/s, {best.produced} "
            f"tokens); {len(report.outcomes)} re-runs in {report.seconds:.1f} s.")
    checked = report.checked
    if checked:
        agreeing = sum(1 for o in checked if o.agrees)
        line += (f" The recorded step already answered {len(checked)} of them: {agreeing} agree"
                 + (" ✓" if agreeing == len(checked) else " ✗ (numerical noise between the two computations?)"))
    elif not report.greedy:
        line += " Sampled decoding: each K draws anew, so the recorded step predicts none of them."
    return line


def whatif_figure(report: WhatIfReport) -> go.Figure:
    """Tokens produced and tokens/s per K, side by side; the recorded K in orange (and hatched)."""
    ks = [o.k for o in report.outcomes]
    recorded = [o.k == report.recorded_k for o in report.outcomes]
    colours = [ORANGE if r else BLUE for r in recorded]
    patterns = ["/" if r else "" for r in recorded]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("tokens produced", "tokens/s of the step"),
                        horizontal_spacing=0.14)
    for col, values, fmt in ((1, [o.produced for o in report.outcomes], "%{y}"),
                             (2, [o.tokens_per_s or 0.0 for o in report.outcomes], "%{y:.1f}")):
        fig.add_trace(go.Bar(x=ks, y=values, marker=dict(color=colours, pattern=dict(shape=patterns)),
                             texttemplate=fmt, textposition="outside", cliponaxis=False, showlegend=False,
                             hovertemplate=f"K = %{{x}}: {fmt}<extra></extra>"), row=1, col=col)
    title = "What if K were…" + (f" (orange: the run's K = {report.recorded_k})" if report.recorded_k in ks else "")
    fig.update_layout(height=280, margin=dict(l=40, r=20, t=80, b=40), paper_bgcolor=TRANSPARENT,
                      plot_bgcolor=TRANSPARENT, font=dict(size=12, color=GREY), bargap=0.25,
                      title=dict(text=title, x=0, y=0.98, yanchor="top", font=dict(size=12)))
    fig.update_xaxes(title_text="K", dtick=1, gridcolor=GRID, zeroline=False)
    fig.update_yaxes(gridcolor=GRID, rangemode="tozero", zeroline=False)
    return fig


def short_name(label: str) -> str:
    """A strategy label's name only: "draft_model(k=4, ...)" -> "draft_model"."""
    return label.split("(", 1)[0]


def _side_html(tag: str, title: str, side: Continuation) -> str:
    # the stream's own colours and tooltips, without its outline of the last step (no step is chosen here)
    stream = render.token_stream_html(list(side.events), None, placeholder="no tokens").replace(" tok-focus", "")
    return (f'<div><div class="side-head"><span class="side-tag">{render.esc(tag)}</span> {render.esc(title)} '
            f'<code title="{render.esc(side.strategy)}">{render.esc(short_name(side.strategy))}</code></div>{stream}</div>')


def _lossless_line(report: ForkReport) -> str:
    check = report.lossless_check
    if check is None:
        return ('<div class="small">Sampled (or lossy) decoding: the two continuations are separate draws, so the texts '
                'may differ; each follows the target\'s own distribution.</div>')
    if check:
        return ('<div class="status status-ok" role="status"><span class="status-icon">✓</span> Identical text: greedy '
                'speculative decoding is lossless, whichever strategy drafts.</div>')
    first = next((i for i, (a, b) in enumerate(zip(report.original.token_ids, report.other.token_ids)) if a != b),
                 min(len(report.original.token_ids), len(report.other.token_ids)))
    return (f'<div class="status status-error" role="alert"><span class="status-icon">✗</span> The texts differ from '
            f'token {first} on: under greedy decoding they should not (a near tie the two computations broke '
            f'differently?).</div>')


def _recorded_line(report: ForkReport) -> str:
    match = report.matches_recorded
    if match is None:
        return ""
    n = min(len(report.original.token_ids), len(report.recorded_ids))
    mark = "✓ matches" if match else "✗ differs from"
    return f'<div class="small muted">A (the run\'s own strategy again) {mark} the run\'s own continuation over {n} tokens.</div>'


def _mean_length(side: Continuation) -> str:
    return "—" if side.mean_acceptance_length is None else f"{side.mean_acceptance_length:.2f}"


def _costs_html(report: ForkReport) -> str:
    rows = []
    for tag, side in (("A", report.original), ("B", report.other)):
        name = f'<code>{render.esc(short_name(side.strategy))}</code>'
        rows.append(f'<tr><td title="{render.esc(side.strategy)}">{tag} {name}</td><td class="num">{len(side.token_ids)}</td>'
                    f'<td class="num">{side.steps}</td><td class="num">{side.target_forwards}</td>'
                    f'<td class="num">{_mean_length(side)}</td>'
                    f'<td class="num">{side.wall_s:.2f} s</td><td class="num">{_rate(side.tokens_per_s)}</td></tr>')
    head = ("<tr><th>strategy</th><th>tokens</th><th>steps</th><th>target passes</th><th>mean accept. length</th>"
            "<th>wall time</th><th>tokens/s</th></tr>")
    note = ('<div class="small muted">Each side prefilled the context itself (counted in its wall time); they ran '
            'one after the other on the same machine. Hover a strategy for its parameters.</div>')
    return f'<div class="insp-table-wrap"><table class="insp-table">{head}{"".join(rows)}</table></div>{note}'


def fork_html(report: ForkReport, tail: str) -> str:
    """Both continuations side by side (tokens coloured as in the stream), the lossless check and the costs."""
    start = (f'<div class="small muted">Forked at step {report.step} ({report.context_length}-token context), after '
             f'<span class="tok-prompt">{render.esc(tail) or "the prompt"}</span></div>')
    own = _side_html("A", "the run's own strategy again:", report.original)
    other = _side_html("B", "forked with", report.other)
    sides = ('<div class="whatif-fork" style="display:grid; grid-template-columns: repeat(auto-fit, minmax(240px, 1fr)); '
             f'gap: 10px; margin: 6px 0">{own}{other}</div>')
    return start + sides + _lossless_line(report) + _recorded_line(report) + _costs_html(report)


def fork_summary(report: ForkReport) -> str:
    a, b = report.original, report.other
    faster = "B" if (b.tokens_per_s or 0) > (a.tokens_per_s or 0) else "A"
    return (f"Forked at step {report.step}: A {short_name(a.strategy)} {_rate(a.tokens_per_s)} tokens/s, "
            f"B {short_name(b.strategy)} {_rate(b.tokens_per_s)} tokens/s ({faster} faster here).")
