"""Plotly figures built from step events (no Gradio): the acceptance history.

Colours are Okabe-Ito (colour-blind safe) and match the token stream: accepted drafts in blue,
the target's own token stacked on top in green (bonus), vermillion (recovered) or grey
(baseline). The layout keeps a constant `uirevision` so zoom and legend toggles survive the
live updates.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.events import StepEvent
from engine.metrics import RunMetrics

BLUE = "#0072B2"
VERMILLION = "#D55E00"
GREEN = "#009E73"
GREY = "#8C8C8C"
ORANGE = "#E69F00"
SKY = "#56B4E9"
PURPLE = "#CC79A7"
BLACK = "#222222"

UIREVISION = "specviz-acceptance"
ROLLING_WINDOW = 8

TRACE_NAMES = (
    "accepted drafts",
    "+ bonus",
    "+ recovered",
    "+ baseline",
    f"rolling mean ({ROLLING_WINDOW} steps)",
    "per-position acceptance",
    "acceptance-length histogram",
)


def rolling_mean(values: Sequence[float], window: int = ROLLING_WINDOW) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def acceptance_figure(
    events: Sequence[StepEvent], title: str | None = None, empty_message: str = "Run a prompt to see the acceptance history"
) -> go.Figure:
    """Per-step acceptance length (stacked: accepted drafts + the target's token), its rolling
    mean, per-position acceptance, and the histogram of acceptance lengths."""
    fig = make_subplots(
        rows=2,
        cols=2,
        specs=[[{"colspan": 2}, None], [{}, {}]],
        row_heights=[0.58, 0.42],
        vertical_spacing=0.2,
        horizontal_spacing=0.14,
        subplot_titles=(
            "",
            "Acceptance by draft position",
            "Acceptance-length histogram",
        ),
    )
    steps = [e.index for e in events]
    lengths = [len(e.new_tokens) for e in events]
    accepted = [sum(1 for t in e.new_tokens if t.kind == "accepted") for e in events]
    hover = [
        f"step {e.index}<br>drafted {e.num_drafted}, accepted {a}<br>+ {e.output.kind}"
        for e, a in zip(events, accepted)
    ]
    fig.add_trace(
        go.Bar(x=steps, y=accepted, name=TRACE_NAMES[0], marker_color=BLUE, hovertext=hover, hoverinfo="text"),
        row=1, col=1,
    )
    for kind, name, colour in (("bonus", TRACE_NAMES[1], GREEN), ("recovered", TRACE_NAMES[2], VERMILLION),
                               ("baseline", TRACE_NAMES[3], GREY)):
        ys = [sum(1 for t in e.new_tokens if t.kind == kind) for e in events]
        fig.add_trace(
            go.Bar(x=steps, y=ys, name=name, marker_color=colour, hovertext=hover, hoverinfo="text",
                   marker_pattern_shape="/" if kind == "recovered" else ("." if kind == "baseline" else "")),
            row=1, col=1,
        )
    fig.add_trace(
        go.Scatter(x=steps, y=rolling_mean(lengths), name=TRACE_NAMES[4], mode="lines",
                   line=dict(color=BLACK, width=2.5, dash="solid"), hovertemplate="step %{x}<br>rolling mean %{y:.2f}<extra></extra>"),
        row=1, col=1,
    )
    metrics = RunMetrics.from_events(events) if events else None
    per_position = metrics.per_position_acceptance if metrics else []
    fig.add_trace(
        go.Bar(x=list(range(len(per_position))), y=per_position, name=TRACE_NAMES[5], marker_color=SKY,
               marker_line=dict(color=BLUE, width=1), hovertemplate="position %{x}<br>accepted in %{y:.0%} of drafting steps<extra></extra>",
               showlegend=False),
        row=2, col=1,
    )
    counts = Counter(lengths)
    xs = list(range(1, max(lengths) + 1)) if lengths else []
    fig.add_trace(
        go.Bar(x=xs, y=[counts.get(x, 0) for x in xs], name=TRACE_NAMES[6], marker_color=ORANGE,
               marker_line=dict(color=BLACK, width=1), hovertemplate="%{y} steps produced %{x} tokens<extra></extra>",
               showlegend=False),
        row=2, col=2,
    )
    fig.update_layout(
        barmode="stack",
        bargap=0.15,
        uirevision=UIREVISION,
        height=520,
        margin=dict(l=50, r=20, t=70 if title else 40, b=50),
        legend=dict(orientation="h", yanchor="bottom", y=1.01, xanchor="left", x=0, font=dict(size=11),
                    traceorder="normal"),
        template="plotly_white",
        font=dict(size=12),
        title=dict(text=title, x=0, y=0.99, yanchor="top", font=dict(size=13)) if title else None,
        hovermode="closest",
    )
    fig.update_xaxes(title_text="step", row=1, col=1, rangemode="tozero", tick0=0,
                     dtick=max(1, math.ceil(len(steps) / 12)))
    fig.update_yaxes(title_text="tokens per step", row=1, col=1, rangemode="tozero", dtick=1 if max(lengths, default=1) <= 8 else None)
    fig.update_xaxes(title_text="draft position", row=2, col=1, dtick=1)
    fig.update_yaxes(title_text="accepted share", row=2, col=1, range=[0, 1.05], tickformat=".0%")
    fig.update_xaxes(title_text="tokens per step", row=2, col=2, dtick=1)
    fig.update_yaxes(title_text="steps", row=2, col=2, rangemode="tozero")
    if not events:
        fig.add_annotation(text=empty_message, xref="paper", yref="paper",
                           x=0.5, y=0.8, showarrow=False, font=dict(size=14, color=GREY))
    elif not per_position:
        fig.add_annotation(text="nothing drafted (autoregressive)", xref="x2 domain", yref="y2 domain",
                           x=0.5, y=0.5, showarrow=False, font=dict(color=GREY))
    return fig
