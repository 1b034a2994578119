"""The "Multi-draft bound" tab: on a toy target p and drafter q the person types, the best acceptance
rate ANY lossless verifier could reach with k drafts (the LP bound of engine.analysis.optimal_acceptance),
beside the exact rate of the project's own verifiers (SpecTr's k-SEQ, RSD, SpecInfer's top-k).

`build_multi_draft_tab()` adds the components and their events inside an open `gr.Blocks` (in a
`gr.Tab`); `multi_draft_update(p_text, q_text, k)` is its handler: (figure, result HTML), with an
input error shown as a message in the page (and an empty figure), never a traceback.

Example: p = "0.5, 0.5", q = "0.9, 0.1", k = 2 -> one draft 60%; two i.i.d. drafts: optimum 69%,
k-SEQ 65.8%; two without replacement: optimum and RSD 100%; top-2 chosen: 100%.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.errors import SpecVizError
from engine.analysis.optimal_acceptance import (
    MAX_K,
    MAX_VOCAB,
    MIN_K,
    MIN_VOCAB,
    AcceptanceReport,
    SchemeResult,
    check_k,
    parse_distribution,
    report,
)
from specviz.figures import BLUE, GREEN, GREY, ORANGE, message_figure

from . import render

DEFAULT_P = "0.5, 0.3, 0.2"
DEFAULT_Q = "0.2, 0.3, 0.5"
DEFAULT_K = 2
FULL = 1 - 1e-9  # an optimum at or above this is reported as 100%

SCHEME_NAMES = {  # scheme -> (how the k drafts are drawn, the verifier that checks them)
    "iid": ("{k} i.i.d. draws from q", "SpecTr k-SEQ"),
    "without_replacement": ("{k} draws from q without replacement", "RSD"),
    "chosen_topk": ("the {k} most likely tokens of q", "SpecInfer, multi-round"),
}

EXPLANATION = f"""
**What is the bound?** The drafter proposes k tokens; the target's next token must still follow p exactly
(lossless). A draft can only be accepted when the target's token is one of the drafts, so no verifier can
accept more often than the best way of pairing draft sets with target tokens while keeping both
distributions intact: a small linear programme (an optimal-transport problem). Its value α\\* is the
**optimum** (grey bars); the blue bar is the **exact** rate of the verifier this project runs for that way of
drafting. The dashed line is one draft, Σ min(p, q): the optimum for k = 1, reached by ordinary rejection sampling.

**Why is α\\* not 100%?** Because of a set of tokens H where the drafts pile up: when every draft falls in H but
the target puts less probability there, the target's token is often none of the drafts. α\\* = 1 − max over
H of [P(every draft in H) − p(H)] (the min cut of the same problem). Type {MIN_VOCAB} to {MAX_VOCAB}
non-negative weights per box (they are normalised); k is {MIN_K} to {MAX_K}.
"""


def _pct(x: float) -> str:
    return f"{x:.1%}"


def _tokens(tokens: tuple[int, ...]) -> str:
    return "{" + ", ".join(str(t) for t in tokens) + "}"


def _drafts(scheme: str, k: int) -> str:
    return SCHEME_NAMES[scheme][0].format(k=k)


def _scheme_label(scheme: str, k: int) -> str:
    return f"{_drafts(scheme, k)}<br>({SCHEME_NAMES[scheme][1]})"


def _why(result: SchemeResult) -> str:
    """One sentence (plain text) on what limits the optimum: the min-cut token set."""
    if result.optimum >= FULL:
        return "the drafts can always cover the target's token: α* = 100%."
    b = result.bottleneck
    return (f"with probability {_pct(b.all_drafts_in)} every draft is in {_tokens(b.tokens)}, where the target puts "
            f"only {_pct(b.target_mass)}: then the target's token is none of the drafts at least "
            f"{_pct(b.all_drafts_in - b.target_mass)} of the time.")


def _layout(fig: go.Figure) -> go.Figure:
    fig.update_layout(
        barmode="group", bargap=0.25, height=420, template="plotly_white", font=dict(size=12), hovermode="closest",
        margin=dict(l=50, r=20, t=50, b=40), uirevision="specviz-multi-draft",
        legend=dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0, font=dict(size=11)),
    )
    return fig


def empty_figure(message: str) -> go.Figure:
    """No axes, just `message` in grey, in the bound figure's layout: shown while the input is invalid."""
    return _layout(message_figure(message))


def bound_figure(rep: AcceptanceReport) -> go.Figure:
    """Left: p and q per token. Right: per draft scheme, the optimum beside what our verifier achieves,
    and the one-draft level as a dashed line."""
    fig = make_subplots(rows=1, cols=2, column_widths=[0.38, 0.62], horizontal_spacing=0.1,
                        subplot_titles=("Target p and drafter q", "P(some draft accepted)"))
    tokens = list(range(len(rep.p)))
    for name, values, colour in (("target p", rep.p, GREEN), ("drafter q", rep.q, ORANGE)):
        fig.add_trace(go.Bar(x=tokens, y=values.tolist(), name=name, marker_color=colour,
                             hovertemplate=f"token %{{x}}: {name} %{{y:.1%}}<extra></extra>"), row=1, col=1)
    labels = [_scheme_label(r.scheme, rep.k) for r in rep.schemes]
    fig.add_trace(go.Bar(
        x=labels, y=[r.optimum for r in rep.schemes], name="optimum α* (LP bound)", marker_color="#D9D9D9",
        marker_line=dict(color=GREY, width=1.5), text=[_pct(r.optimum) for r in rep.schemes],
        textposition="outside", hovertext=[html.escape(_why(r)) for r in rep.schemes],
        hovertemplate="optimum %{y:.2%}<br>%{hovertext}<extra></extra>"), row=1, col=2)
    fig.add_trace(go.Bar(
        x=labels, y=[r.achieved for r in rep.schemes], name="our verifier (exact)", marker_color=BLUE,
        text=[_pct(r.achieved) for r in rep.schemes], textposition="outside",
        hovertemplate="our verifier %{y:.2%}<extra></extra>"), row=1, col=2)
    fig.add_hline(y=rep.single_draft, line=dict(color=BLUE, width=2, dash="dash"), showlegend=True,
                  name=f"one draft: Σ min(p, q) = {_pct(rep.single_draft)}", row=1, col=2)
    fig.update_xaxes(title_text="token", dtick=1, row=1, col=1)
    fig.update_yaxes(title_text="probability", rangemode="tozero", tickformat=".0%", row=1, col=1)
    fig.update_yaxes(range=[0, 1.12], tickformat=".0%", row=1, col=2)
    return _layout(fig)


def result_html(rep: AcceptanceReport) -> str:
    """The numbers behind the figure, one row per draft scheme, and what limits each optimum."""
    rows = "".join(
        f"<tr><td>{html.escape(_drafts(r.scheme, rep.k))}</td>"
        f"<td>{html.escape(SCHEME_NAMES[r.scheme][1])}</td>"
        f'<td class="num">{_pct(r.optimum)}</td><td class="num">{_pct(r.achieved)}</td>'
        f'<td class="num">{_pct(max(0.0, r.gap))}</td><td class="top">{html.escape(_why(r))}</td></tr>'
        for r in rep.schemes
    )
    head = "".join(f"<th>{h}</th>" for h in ("drafts", "verifier", "optimum α*", "achieved", "gap", "what limits α*"))
    status = render.status_html(
        f"{len(rep.p)} tokens, k = {rep.k}. One draft: Σ min(p, q) = {_pct(rep.single_draft)}.", "ok")
    return (f'{status}<div class="insp-table-wrap"><table class="insp-table multi-draft-table"><thead><tr>{head}</tr>'
            f"</thead><tbody>{rows}</tbody></table></div>")


def multi_draft_update(p_text: str | None, q_text: str | None, k: Any) -> tuple[go.Figure, str]:
    """The tab's handler: (figure, result HTML) for the typed p, q and k; an input error becomes a message."""
    try:
        rep = report(parse_distribution("p", p_text), parse_distribution("q", q_text), check_k(k))
    except SpecVizError as exc:
        return empty_figure("Fix the input above to see the bound"), render.status_html(str(exc), "error")
    return bound_figure(rep), result_html(rep)


@dataclass
class MultiDraftTab:
    p_box: gr.Textbox
    q_box: gr.Textbox
    k_slider: gr.Slider
    button: gr.Button
    plot: gr.Plot
    result: gr.HTML


def build_multi_draft_tab() -> MultiDraftTab:
    """The tab's components and events, added to the open gr.Blocks (call it inside a gr.Tab)."""
    gr.Markdown(EXPLANATION, elem_classes=["explain"])
    with gr.Row(equal_height=False):
        p_box = gr.Textbox(DEFAULT_P, label="target p (one weight per token)", elem_id="multi-draft-p", scale=3)
        q_box = gr.Textbox(DEFAULT_Q, label="drafter q (same tokens)", elem_id="multi-draft-q", scale=3)
        k_slider = gr.Slider(MIN_K, MAX_K, value=DEFAULT_K, step=1, label="k drafts", elem_id="multi-draft-k", scale=2)
        button = gr.Button("Compute", variant="primary", elem_id="multi-draft-compute", scale=0, min_width=110)
    figure, summary = multi_draft_update(DEFAULT_P, DEFAULT_Q, DEFAULT_K)
    result = gr.HTML(summary, elem_id="multi-draft-result", js_on_load=None)
    plot = gr.Plot(figure, elem_id="multi-draft-plot", show_label=False)
    inputs, outputs = [p_box, q_box, k_slider], [plot, result]
    button.click(multi_draft_update, inputs, outputs, api_name="multi_draft_bound", show_progress="minimal")
    for box in (p_box, q_box):
        box.submit(multi_draft_update, inputs, outputs, api_visibility="undocumented", show_progress="minimal")
    k_slider.release(multi_draft_update, inputs, outputs, api_visibility="undocumented", show_progress="minimal")
    return MultiDraftTab(p_box, q_box, k_slider, button, plot, result)
