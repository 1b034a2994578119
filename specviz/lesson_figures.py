"""Plotly figures for the Learn tab (no Gradio): the draft-length trade-off (analytic curves with a trace's measured
point and the oracle's lengths), the target's and the residual distribution at one decision, and `lesson_style`,
which makes any figure (also the shared ones from `specviz.figures`) fit a lesson column.

Lesson figures have transparent backgrounds (a dark theme shows through), text in one ink colour (`INK`) that the
tab's CSS lightens on a dark page, Okabe-Ito colours with a second cue (dash, symbol, pattern), and short titles
that fit a column 700 px wide.
"""

from __future__ import annotations

import html

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from specviz.figures import BLACK, BLUE, GREEN, GREY, ORANGE, PURPLE, VERMILLION
from specviz.lessons import Decision, Measured, best_k, expected_tokens_per_step, speedup_bound, visible

TRANSPARENT = "rgba(0,0,0,0)"
INK = "#4A5361"  # every lesson figure's text; the Learn tab's CSS swaps exactly this colour on a dark page
GRID = "rgba(128,128,128,0.22)"
MAX_K = 12
TITLE_CHARS = 70  # a title longer than this is cut: a 700 px column holds about 80 characters at 12 px


def plot_text(text: str | None, limit: int = 14) -> str:
    """Model text for plotly labels: visible whitespace, cut to `limit`, escaped (plotly renders tags)."""
    shown = visible(text)
    if len(shown) > limit:
        shown = shown[: limit - 1] + "…"
    return html.escape(shown, quote=False)


def lesson_style(fig: go.Figure, title: str | None = None, height: int | None = None) -> go.Figure:
    """Transparent backgrounds, the ink colour, soft grid lines, and a short title (None: no title; the lesson's
    text says the rest). Works on any figure, the shared ones included."""
    fig.update_layout(
        paper_bgcolor=TRANSPARENT, plot_bgcolor=TRANSPARENT, font=dict(color=INK, size=12),
        title=dict(text=title[:TITLE_CHARS] if title else None, x=0, xref="paper", y=0.99, yanchor="top",
                   font=dict(size=13, color=INK)),
        legend=dict(bgcolor=TRANSPARENT, font=dict(color=INK)), hoverlabel=dict(align="left"),
    )
    if height:
        fig.update_layout(height=height)
    fig.update_xaxes(gridcolor=GRID, zerolinecolor=GRID, linecolor=GRID)
    fig.update_yaxes(gridcolor=GRID, zerolinecolor=GRID, linecolor=GRID)
    for annotation in fig.layout.annotations or ():  # subplot titles and notes: same ink, never a white box
        annotation.font = dict(color=INK, size=annotation.font.size or 12)
        if annotation.bgcolor in ("white", "#FFFFFF", "#ffffff"):
            annotation.bgcolor = TRANSPARENT
    for shape in fig.layout.shapes or ():  # white veils read as glare on a dark page: neutral grey instead
        if shape.fillcolor in ("white", "#FFFFFF", "#ffffff"):
            shape.fillcolor = "rgba(140,140,140,0.55)"
    return fig


def shorten_subplot_titles(fig: go.Figure, prefix: str, short: str) -> go.Figure:
    """Replace the subplot titles (annotations) starting with `prefix` by `short`: a long one is clipped in a
    narrow column."""
    for annotation in fig.layout.annotations or ():
        if (annotation.text or "").startswith(prefix):
            annotation.text = short
    return fig


# -- lesson 3: the draft-length trade-off ----------------------------------------------------------------

def tradeoff_figure(a: float, k: int, c: float, measured: Measured) -> go.Figure:
    """Top left: E[tokens per target pass] over K for acceptance a; top right: the speedup bound over K for a and
    cost ratio c, the current K and the best K marked; both with the trace's measured point. Bottom: how often each
    draft length was best in hindsight (the oracle) on the trace."""
    fig = make_subplots(rows=2, cols=2, specs=[[{}, {}], [{"colspan": 2}, None]], row_heights=[0.62, 0.38],
                        vertical_spacing=0.2, horizontal_spacing=0.13,
                        subplot_titles=("Tokens per target pass", "Speedup bound (x plain)",
                                        "Best draft length in hindsight (oracle), per step"))
    ks = list(range(MAX_K + 1))
    _add_curves(fig, a, k, c, ks)
    _add_measured(fig, measured)
    _add_oracle(fig, measured)
    fig.update_xaxes(title_text="draft length K", dtick=2, range=[-0.4, MAX_K + 0.4], row=1, col=1)
    fig.update_xaxes(title_text="draft length K", dtick=2, range=[-0.4, MAX_K + 0.4], row=1, col=2)
    fig.update_yaxes(rangemode="tozero", row=1, col=1)
    fig.update_yaxes(rangemode="tozero", row=1, col=2)
    fig.update_xaxes(title_text="oracle length K'", dtick=1, row=2, col=1)
    fig.update_yaxes(title_text="steps", rangemode="tozero", row=2, col=1)
    fig.update_layout(height=600, margin=dict(l=50, r=20, t=40, b=40), barmode="stack", hovermode="closest",
                      legend=dict(orientation="h", yanchor="top", y=-0.12, xanchor="left", x=0), uirevision="lesson-3")
    return lesson_style(fig)


def _add_curves(fig: go.Figure, a: float, k: int, c: float, ks: list[int]) -> None:
    """The analytic curves over K with the current K (ring) and, on the speedup panel, the best K (triangle)."""
    tokens = [expected_tokens_per_step(a, kk) for kk in ks]
    speed = [speedup_bound(a, kk, c) for kk in ks]
    fig.add_trace(go.Scatter(x=ks, y=tokens, mode="lines", name=f"(1 − a^(K+1)) / (1 − a), a = {a:.2f}",
                             line=dict(color=BLUE, width=2.5),
                             hovertemplate="K = %{x}: %{y:.2f} tokens per pass<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=ks, y=speed, mode="lines", name=f"speedup bound, c = {c:.2f}",
                             line=dict(color=GREEN, width=2.5, dash="dash"),
                             hovertemplate="K = %{x}: at most %{y:.2f}x plain decoding<extra></extra>"), row=1, col=2)
    fig.add_hline(y=1, line=dict(color=GREY, width=1, dash="dot"), row=1, col=2)
    fig.add_trace(go.Scatter(x=[k], y=[tokens[k]], mode="markers", name=f"your K = {k}", hoverinfo="skip",
                             marker=dict(symbol="circle-open", size=15, color=BLACK, line=dict(width=2.5))),
                  row=1, col=1)
    fig.add_trace(go.Scatter(x=[k], y=[speed[k]], mode="markers", showlegend=False, hoverinfo="skip",
                             marker=dict(symbol="circle-open", size=15, color=BLACK, line=dict(width=2.5))),
                  row=1, col=2)
    best = best_k(a, c, MAX_K)
    fig.add_trace(go.Scatter(x=[best], y=[speed[best]], mode="markers", name=f"best K = {best}",
                             marker=dict(symbol="triangle-up", size=13, color=ORANGE, line=dict(color=BLACK, width=1)),
                             hovertemplate="best K = %{x}: %{y:.2f}x<extra></extra>"), row=1, col=2)


def _add_measured(fig: go.Figure, m: Measured) -> None:
    """The recorded trace's point: its tokens per target pass and its measured speedup over the `ar` trace."""
    hover = (f"measured on the recorded trace<br>K = {m.k}, a = {m.a:.2f} (accepted ÷ checked)"
             f"<br>%{{y:.2f}}<extra></extra>")
    fig.add_trace(go.Scatter(x=[m.k], y=[m.mean_acceptance_length], mode="markers", name="measured (trace)",
                             marker=dict(symbol="star", size=16, color=VERMILLION, line=dict(color=BLACK, width=1)),
                             hovertemplate=hover), row=1, col=1)
    fig.add_trace(go.Scatter(x=[m.k], y=[m.speedup], mode="markers", showlegend=False,
                             marker=dict(symbol="star", size=16, color=VERMILLION, line=dict(color=BLACK, width=1)),
                             hovertemplate=hover), row=1, col=2)


def _add_oracle(fig: go.Figure, m: Measured) -> None:
    """Bars: steps per hindsight-best length (K' bins 0..K kept visible, empty ones included)."""
    xs = list(range(m.k + 1))
    fig.add_trace(go.Bar(x=xs, y=[m.oracle_lengths.get(x, 0) for x in xs], name="oracle length (steps)",
                         marker=dict(color=ORANGE, line=dict(color=BLACK, width=1), pattern=dict(shape=".")),
                         hovertemplate="best length %{x}: %{y} steps<extra></extra>"), row=2, col=1)


# -- lesson 2: the target's and the residual distribution --------------------------------------------------

def decision_figure(d: Decision) -> go.Figure:
    """The target's recorded top candidates (p) at the decision, the drafter's q for the drafted token, and at a
    rejection the recorded top of the residual max(0, p − q) renormalised, which the target's own token came from."""
    fig = go.Figure()
    top = list(d.target_top)
    if d.text not in [t for t, _ in top]:  # the drafted token's own p is recorded even outside the top
        top.append((d.text, d.p))
    names = [plot_text(t) for t, _ in top]
    fig.add_trace(go.Bar(y=names, x=[p for _, p in top], orientation="h", name="target p (top recorded + drafted)",
                         marker=dict(color=BLUE), hovertemplate="%{y}: p = %{x:.3f}<extra></extra>"))
    if d.residual_top:
        fig.add_trace(go.Bar(y=[plot_text(t) for t, _ in d.residual_top], x=[p for _, p in d.residual_top],
                             orientation="h", name="residual max(0, p − q), renormalised (top recorded)",
                             marker=dict(color=VERMILLION, pattern=dict(shape="/", fgcolor="white")),
                             hovertemplate="%{y}: residual %{x:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(y=[plot_text(d.text)], x=[d.q], mode="markers", name="drafter q of the drafted token",
                             marker=dict(symbol="diamond", size=14, color=PURPLE, line=dict(color=BLACK, width=1)),
                             hovertemplate="drafted %{y}: q = %{x:.3f}<extra></extra>"))
    order = list(dict.fromkeys([*names, *(plot_text(t) for t, _ in d.residual_top), plot_text(d.text)]))
    fig.update_layout(barmode="group", height=300 + 14 * len(order), margin=dict(l=90, r=20, t=40, b=40),
                      legend=dict(orientation="h", yanchor="top", y=-0.2, xanchor="left", x=0), bargap=0.25,
                      uirevision="lesson-2")
    fig.update_xaxes(title_text="probability", range=[0, 1.02], tickformat=".0%")
    fig.update_yaxes(categoryorder="array", categoryarray=order[::-1], title_text=None)
    return lesson_style(fig, "Where the probability is, at this position")
