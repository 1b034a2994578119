"""Plotly figures built from step events (no Gradio): the acceptance history, the draft-length timeline,
the phase timeline, and the draft tree or diffusion lattice of one step.

Colours are Okabe-Ito (colour-blind safe) and match the token stream: accepted drafts in blue,
the target's own token stacked on top in green (bonus), vermillion (recovered) or grey
(baseline). The layout keeps a constant `uirevision` so zoom and legend toggles survive the
live updates.
"""

from __future__ import annotations

import html
import math
import textwrap
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.events import LatticeColumn, StepEvent
from engine.metrics import RunMetrics, worker_time
from engine.analysis.oracle import oracle_report

BLUE = "#0072B2"
VERMILLION = "#D55E00"
GREEN = "#009E73"
GREY = "#8C8C8C"
ORANGE = "#E69F00"
SKY = "#56B4E9"
PURPLE = "#CC79A7"
# Ink for lines, outlines and labels drawn on the plot's own background: the page's dark theme recolours this exact
# colour to a light one (assets/style.css matches it, rgb(34, 34, 34)), so keep it for anything that must follow the
# theme. CELL_INK never changes: text and lines drawn over light cells or badges (the lattice), readable in both themes.
BLACK = "#222222"
CELL_INK = "#111111"
# Every figure leaves its backgrounds transparent: the page's (light or dark) shows through
TRANSPARENT = "rgba(0,0,0,0)"
BACKGROUNDS = dict(paper_bgcolor=TRANSPARENT, plot_bgcolor=TRANSPARENT)

UIREVISION = "specviz-acceptance"
ROLLING_WINDOW = 8

# A second cue besides colour for the stacked step bars: accepted drafts solid, the target's token patterned by kind
STEP_PATTERNS = {"accepted": "", "bonus": "+", "recovered": "/", "baseline": "."}
TRACE_NAMES = (
    "accepted drafts",
    "+ bonus",
    "+ recovered",
    "+ baseline",
    f"rolling mean ({ROLLING_WINDOW} steps)",
    "per-position acceptance",
    "acceptance-length histogram",
)


SUBPLOT_TITLE_PX = 12  # plotly's default 16 px ran the two bottom titles of the acceptance figure into each other
TITLE_CHARS = 60  # a one-line title over a half-page plot (the legend sits right under it): longer ones are cut


def one_line(text: str, limit: int = TITLE_CHARS) -> str:
    """`text` cut to `limit` characters with an ellipsis (a strategy label with many parameters was cut off at the
    plot's edge; the whole label is in the run's status line).

    >>> one_line("hybrid_tree(drafter=eagle, vocab_trim=4096)", 20)
    'hybrid_tree(drafter…'
    """
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def message_figure(message: str, colour: str = GREY) -> go.Figure:
    """No axes, only `message` (escaped) in the middle, on a transparent background: a plot's place while there is
    nothing to draw (an input to fix, a run not started)."""
    fig = go.Figure()
    fig.add_annotation(text=html.escape(message), xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False,
                       font=dict(size=14, color=colour))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(**BACKGROUNDS)
    return fig


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
    _add_step_bars(fig, events, steps, accepted)
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
    fig.update_annotations(font_size=SUBPLOT_TITLE_PX)  # the subplot titles (the only annotations so far)
    tree_run = any(e.tree for e in events)
    if tree_run:
        _add_tree_shapes(fig, events)
    fig.update_layout(
        barmode="stack",
        bargap=0.15,
        uirevision=UIREVISION,
        height=520,
        margin=dict(l=50, r=60 if tree_run else 20, t=70 if title else 40, b=50),
        legend=dict(orientation="h", yanchor="bottom", y=1.01, xanchor="left", x=0, font=dict(size=11),
                    traceorder="normal"),
        template="plotly_white",
        **BACKGROUNDS,
        font=dict(size=12),
        # the strategy's label carries text a person typed (a drafter name): plotly renders tags in titles
        title=dict(text=html.escape(one_line(title), quote=False), x=0, y=0.99, yanchor="top", font=dict(size=13))
        if title else None,
        hovermode="closest",
    )
    _acceptance_axes(fig, len(steps), max(lengths, default=1))
    if not events:
        fig.add_annotation(text=empty_message, xref="paper", yref="paper",
                           x=0.5, y=0.8, showarrow=False, font=dict(size=14, color=GREY))
    elif not per_position:
        fig.add_annotation(text="nothing drafted (autoregressive)", xref="x2 domain", yref="y2 domain",
                           x=0.5, y=0.5, showarrow=False, font=dict(color=GREY))
    return fig


def _add_step_bars(fig: go.Figure, events: Sequence[StepEvent], steps: list[int], accepted: list[int]) -> None:
    """Row 1: each step's tokens stacked by how they were born (accepted drafts, then bonus / recovered / baseline)."""
    hover = [
        f"step {e.index}<br>drafted {e.num_drafted}, accepted {a}<br>+ {e.output.kind}" + _tree_shape_hover(e)
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
                   marker_pattern_shape=STEP_PATTERNS[kind]),
            row=1, col=1,
        )


def _acceptance_axes(fig: go.Figure, n_steps: int, longest: int) -> None:
    fig.update_xaxes(title_text="step", row=1, col=1, rangemode="tozero", tick0=0, dtick=max(1, math.ceil(n_steps / 12)))
    fig.update_yaxes(title_text="tokens per step", row=1, col=1, rangemode="tozero", dtick=1 if longest <= 8 else None)
    fig.update_xaxes(title_text="draft position", row=2, col=1, dtick=1)
    fig.update_yaxes(title_text="accepted share", row=2, col=1, range=[0, 1.05], tickformat=".0%")
    fig.update_xaxes(title_text="tokens per step", row=2, col=2, dtick=1)
    fig.update_yaxes(title_text="steps", row=2, col=2, rangemode="tozero")


TREE_SHAPE_TRACE_NAMES = ("tree depth", "tree size (right axis)")


def tree_shape(event: StepEvent) -> tuple[int, int, int]:
    """(size, depth, accepted depth) of a tree step's draft tree; size counts drafted nodes (the root excluded)."""
    nodes = event.tree
    return len(nodes) - 1, max(n.depth for n in nodes), sum(1 for n in nodes if n.verdict == "accepted")


def _tree_shape_hover(event: StepEvent) -> str:
    if not event.tree:
        return ""
    size, depth, accepted_depth = tree_shape(event)
    return f"<br>tree: {size} nodes, depth {depth}, accepted depth {accepted_depth}"


def _add_tree_shapes(fig: go.Figure, events: Sequence[StepEvent]) -> None:
    """Tree runs: each step's tree depth as a tick over its bar (the bar's blue part is the accepted depth), and
    the tree size on a right axis (sizes run to tens of nodes, far above the tokens per step)."""
    tree_steps = [e for e in events if e.tree]
    shapes = [tree_shape(e) for e in tree_steps]
    steps = [e.index for e in tree_steps]
    hover = [f"step {e.index}" + _tree_shape_hover(e) for e in tree_steps]
    fig.add_trace(
        go.Scatter(x=steps, y=[depth for _, depth, _ in shapes], name=TREE_SHAPE_TRACE_NAMES[0], mode="markers",
                   marker=dict(symbol="line-ew-open", size=18, color=BLACK, line=dict(width=2.5)),
                   hovertext=hover, hoverinfo="text"),
        row=1, col=1,
    )
    fig.add_trace(go.Scatter(
        x=steps, y=[size for size, _, _ in shapes], name=TREE_SHAPE_TRACE_NAMES[1], mode="lines+markers",
        line=dict(color=PURPLE, width=1.5, dash="dot"), marker=dict(size=5), hovertext=hover, hoverinfo="text",
        xaxis="x", yaxis="y4",
    ))
    fig.update_layout(yaxis4=dict(overlaying="y", anchor="x", side="right", rangemode="tozero", showgrid=False,
                                  title=dict(text="tree size (nodes)", font=dict(size=11))))


LENGTH_TRACE_NAMES = ("drafted", "accepted", "chosen length", "oracle length (hindsight)")
# Two short lines: the theory panel is a third of a half-page plot (one line was cut off at typical widths)
THEORY_TITLE = "Theory: tokens per step<br>and speedup bound"


def draft_length_figure(events: Sequence[StepEvent], empty_message: str = "Run a prompt to see the draft lengths") -> go.Figure:
    """The draft-length timeline: per step the length the policy chose, what was drafted and accepted,
    the hindsight oracle's length, and the policy's internal signal (threshold, predicted rejection
    probability, moving average) on a second axis. Hover a step for the policy's reason."""
    fig = make_subplots(rows=1, cols=2, column_widths=[0.66, 0.34], horizontal_spacing=0.12,
                        specs=[[{"secondary_y": True}, {}]],
                        subplot_titles=("", THEORY_TITLE))
    fig.update_annotations(font_size=SUBPLOT_TITLE_PX)
    steps = [e.index for e in events]
    accepted = [sum(1 for t in e.draft if t.verdict == "accepted") for e in events]
    reasons = [
        "<br>".join(html.escape(part) for part in textwrap.wrap(f"step {e.index}: {e.decision.reason}", 70))
        + f"<br>chose {e.decision.allowed}, drafted {e.num_drafted}, accepted {a}"
        for e, a in zip(events, accepted)
    ]
    fig.add_trace(go.Bar(x=steps, y=[e.num_drafted for e in events], name=LENGTH_TRACE_NAMES[0], marker_color="#D9D9D9",
                         marker_line=dict(color=GREY, width=1), hovertext=reasons, hoverinfo="text"), row=1, col=1, secondary_y=False)
    fig.add_trace(go.Bar(x=steps, y=accepted, name=LENGTH_TRACE_NAMES[1], marker_color=BLUE, hovertext=reasons,
                         hoverinfo="text"), row=1, col=1, secondary_y=False)
    fig.add_trace(go.Scatter(x=steps, y=[e.decision.allowed for e in events], name=LENGTH_TRACE_NAMES[2],
                             mode="lines", line=dict(color=BLACK, width=2, shape="hv"), hovertext=reasons,
                             hoverinfo="text"), row=1, col=1, secondary_y=False)
    report = oracle_report(events)
    if report is not None and any(e.num_drafted for e in events):
        fig.add_trace(go.Scatter(
            x=steps, y=[s.oracle_k for s in report.steps], name=LENGTH_TRACE_NAMES[3], mode="markers",
            marker=dict(symbol="diamond-open", size=8, color=ORANGE, line=dict(width=2)),
            hovertemplate="step %{x}: oracle length %{y}%{text}<extra></extra>",
            text=[" (at least: everything drafted was accepted)" if s.bounded else "" for s in report.steps],
        ), row=1, col=1, secondary_y=False)
    signals = [e.decision.inputs.get("signal") for e in events]
    signal_name = next((e.decision.inputs.get("signal_name") for e in events if "signal_name" in e.decision.inputs), None)
    if signal_name and any(isinstance(s, (int, float)) for s in signals):
        fig.add_trace(go.Scatter(x=steps, y=signals, name=signal_name, mode="lines+markers",
                                 line=dict(color=PURPLE, width=2, dash="dot"), marker=dict(size=4),
                                 hovertemplate=f"step %{{x}}<br>{html.escape(signal_name)}: %{{y:.3f}}<extra></extra>"),
                      row=1, col=1, secondary_y=True)
        fig.update_yaxes(title_text=signal_name if len(signal_name) <= 32 else "policy signal", secondary_y=True,
                         rangemode="tozero", showgrid=False, row=1, col=1)
    _add_expectation(fig, events)
    title = None
    if report is not None and any(e.num_drafted for e in events):
        title = (f"hindsight oracle: {report.oracle_tokens_per_s:.1f} tok/s vs this run's {report.actual_tokens_per_s:.1f}"
                 f"<br>(same cost model; {report.gap:.0%} below the oracle)")  # two lines: never cut at half width
    fig.update_layout(
        barmode="overlay", bargap=0.15, uirevision=UIREVISION + "-length", height=420,
        margin=dict(l=50, r=50, t=70, b=40), template="plotly_white", **BACKGROUNDS, font=dict(size=12), hovermode="closest",
        legend=dict(orientation="h", yanchor="top", y=-0.2, xanchor="left", x=0, font=dict(size=11)),
        title=dict(text=title, x=0, y=1, yref="container", yanchor="top", pad=dict(t=6 + 16 * title.count("<br>")),
                   font=dict(size=12)) if title else None,  # padded down: plotly places a title by its first line
    )
    fig.update_xaxes(title_text="step", rangemode="tozero", dtick=max(1, math.ceil(len(steps) / 12)), row=1, col=1)
    fig.update_yaxes(title_text="tokens", rangemode="tozero", row=1, col=1, secondary_y=False)
    fig.update_xaxes(title_text="acceptance rate a", range=[-0.03, 1.05], tickformat=".0%", dtick=0.25, row=1, col=2)
    fig.update_yaxes(title_text="tokens per step, or x baseline", rangemode="tozero", row=1, col=2)
    if not events:
        fig.add_annotation(text=empty_message, xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False,
                           font=dict(size=14, color=GREY))
    return fig


def expected_tokens_per_step(a: float, k: int) -> float:
    """E[tokens per step] = (1 - a^(K+1)) / (1 - a) for i.i.d. acceptance a and K drafted tokens (K + 1 at a = 1).

    >>> expected_tokens_per_step(0.5, 2)
    1.75
    """
    return float(k + 1) if a >= 1 else (1 - a ** (k + 1)) / (1 - a)


def _add_expectation(fig: go.Figure, events: Sequence[StepEvent]) -> None:
    """The theory panel: E[tokens per step] over a for the run's typical K, the speedup bound
    E / (c K + 1) for its measured cost ratio c, and the run's measured point."""
    drafting = [e for e in events if e.num_drafted]
    if not drafting:
        return
    k = sorted(e.num_drafted for e in drafting)[len(drafting) // 2]  # the median drafted length
    metrics = RunMetrics.from_events(events)
    verify_step = sum(e.timings.verify_s for e in events) / len(events)
    c = (metrics.draft_s / metrics.drafted) / verify_step if verify_step > 0 else 0.0
    grid = [i / 50 for i in range(50)] + [0.999]
    fig.add_trace(go.Scatter(x=grid, y=[expected_tokens_per_step(a, k) for a in grid], mode="lines",
                             name=f"E[tokens per step], K = {k}", line=dict(color=BLUE, width=2),
                             hovertemplate="a = %{x:.0%}: %{y:.2f} tokens per step<extra></extra>"), row=1, col=2)
    fig.add_trace(go.Scatter(x=grid, y=[expected_tokens_per_step(a, k) / (c * k + 1) for a in grid], mode="lines",
                             name=f"speedup bound, cost ratio c = {c:.2f}", line=dict(color=GREEN, width=2, dash="dash"),
                             hovertemplate="a = %{x:.0%}: at most %{y:.2f}x the baseline<extra></extra>"), row=1, col=2)
    a = metrics.acceptance_rate or 0.0
    per_drafting_step = 1 + metrics.accepted / len(drafting)  # like E[...], over the steps that drafted
    fig.add_trace(go.Scatter(x=[a], y=[per_drafting_step], mode="markers", name="this run (measured)",
                             marker=dict(symbol="star", size=13, color=VERMILLION, line=dict(color=BLACK, width=1)),
                             hovertemplate=(f"measured: acceptance rate %{{x:.0%}}, %{{y:.2f}} tokens per drafting step"
                                            f"<br>cost ratio c = {c:.2f} (drafting per token / verification per step)"
                                            "<extra></extra>")), row=1, col=2)


PHASE_COLOURS = {"draft": ORANGE, "verify": BLUE}
PHASE_PATTERNS = {"draft": "/", "verify": ""}  # a second cue besides colour: drafting is hatched


def phase_figure(events: Sequence[StepEvent], empty_message: str = "Run a prompt to see who worked when") -> go.Figure:
    """The phase timeline (Gantt): draft and verify phases per worker on a numeric time axis.

    Plain speculation alternates (each worker waits while the other works); PEARL overlaps them.
    Gaps in a lane are waiting time."""
    fig = go.Figure()
    lanes = ("target", "drafter")
    for kind in ("draft", "verify"):
        rows = [(e.index, p) for e in events for p in e.timings.phases if p.kind == kind]
        fig.add_trace(go.Bar(
            y=[p.worker for _, p in rows], x=[(p.end_s - p.start_s) * 1000 for _, p in rows],
            base=[p.start_s * 1000 for _, p in rows], orientation="h", name=kind, marker_color=PHASE_COLOURS[kind],
            marker_line=dict(width=0.5, color="white"), marker_pattern_shape=PHASE_PATTERNS[kind],
            customdata=[[i, (p.end_s - p.start_s) * 1000] for i, p in rows],
            hovertemplate=f"step %{{customdata[0]}}: {kind} %{{customdata[1]:.1f}} ms<br>from %{{base:.0f}} ms<extra></extra>",
        ))
    totals = worker_time(events)
    title = None
    if totals:
        # one line per worker: a single line was cut off at half-page widths
        title = "<br>".join(f"{w}: busy {t['busy_s']:.2f} s, waiting {t['waiting_s']:.2f} s" for w, t in totals.items())
    fig.update_layout(
        barmode="overlay", height=240, uirevision=UIREVISION + "-phases", template="plotly_white", **BACKGROUNDS,
        font=dict(size=12),
        margin=dict(l=70, r=20, t=58, b=45), hovermode="closest",
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1, font=dict(size=11)),
        # plotly places a multi-line title by its first line: pad it down by the lines above (else cut at the top)
        title=dict(text=title, x=0, xref="paper", y=1, yref="container", yanchor="top",
                   pad=dict(t=6 + 16 * title.count("<br>")), font=dict(size=12)) if title else None,
    )
    fig.update_xaxes(title_text="engine time (ms)", rangemode="tozero")
    fig.update_yaxes(categoryorder="array", categoryarray=list(lanes))
    if not events:
        fig.add_annotation(text=empty_message, xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False,
                           font=dict(size=14, color=GREY))
    elif not totals:
        fig.add_annotation(text="the autoregressive baseline has one worker and no drafting", xref="paper",
                           yref="paper", x=0.5, y=0.5, showarrow=False, font=dict(size=13, color=GREY))
    return fig


# -- the draft tree of one step -------------------------------------------------------------------

class NodeStyle(NamedTuple):
    name: str  # legend entry
    colour: str
    symbol: str
    size: float
    edge_width: float  # of the edge into the node
    opacity: float


# The same colour language as the token stream; symbols give a second cue besides colour
TREE_STYLE = {
    "root": NodeStyle("root (committed)", BLACK, "square", 13, 0.0, 1.0),
    "accepted": NodeStyle("accepted path", BLUE, "circle", 15, 4.5, 1.0),
    "rejected": NodeStyle("rejected (tried)", PURPLE, "x", 11, 1.5, 0.6),
    "unchecked": NodeStyle("unchecked (not reached)", "#B0B0B0", "circle-open", 9, 1.0, 0.8),
}
OUTPUT_COLOURS = {"bonus": GREEN, "recovered": VERMILLION, "baseline": GREY}
OUTPUT_SYMBOLS = {"bonus": "diamond", "recovered": "diamond-x", "baseline": "diamond-open"}  # a cue besides colour
SOURCE_HELP = {"model": "the drafter (a model or a head on the target's features)",
               "retrieval": "copied from earlier text: the context (lookup) or a document (no drafter probability)",
               "both": "the drafter and copied text alike"}
COPIED_SOURCES = ("retrieval", "both")  # nodes a fused tree copied from text get a ring (a second cue besides hover)
TREE_ROW_PX = 26  # vertical room per leaf row, shrunk (down to about 14 px at 80 nodes) to keep the height in bounds
TREE_DENSE_ROW_PX = 18  # below this, only the produced tokens keep their labels (every text stays in the hover)
TREE_HEIGHT = (280, 1000)  # min, max
TREE_CHROME_PX = 130  # title, legend and depth axis
TREE_LABEL_CHARS = 12


def _token_text(text: str, limit: int | None = None) -> str:
    """Model text for plotly: visible whitespace, cut to `limit` characters, HTML-escaped (plotly renders tags
    such as <b> and <a>). quote=False because plotly decodes &lt; &gt; &amp; but shows &quot; literally."""
    shown = "∅" if text == "" else text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥")
    if limit is not None and len(shown) > limit:
        shown = shown[: limit - 1] + "…"
    return html.escape(shown, quote=False)


def tree_rows(parents: Sequence[int]) -> list[float]:
    """A tidy layout: the vertical row of each node of a tree given parents-first (parent -1 for the root).

    Leaves take consecutive rows in depth-first order (children in index order) and a parent sits midway between
    its first and last child, so every subtree owns its own band of rows and no two nodes of a depth overlap."""
    children: list[list[int]] = [[] for _ in parents]
    for node, parent in enumerate(parents):
        if parent >= 0:
            children[parent].append(node)
    rows = [0.0] * len(parents)
    next_leaf, stack = 0, [0]
    while stack:  # pre-order walk: leaves get their rows in reading order
        node = stack.pop()
        if not children[node]:
            rows[node] = next_leaf
            next_leaf += 1
        stack.extend(reversed(children[node]))
    for node in reversed(range(len(parents))):  # children come after parents: place parents bottom-up
        if children[node]:
            rows[node] = (rows[children[node][0]] + rows[children[node][-1]]) / 2
    return rows


def _node_hover(node) -> str:
    token = f"<b>{_token_text(node.text)}</b>"
    if node.verdict == "root":
        return f"{token}<br>root: the last committed token (not drafted)"
    lines = [
        f"{token} · depth {node.depth} · {node.verdict}",
        "drafter q = " + ("—" if node.draft_prob is None else f"{node.draft_prob:.3f}"),
        "path prob = " + ("—" if node.path_prob is None else f"{node.path_prob:.3g}"),
        "target p = " + ("— (its parent was not reached)" if node.target_prob is None else f"{node.target_prob:.3f}"),
        "acceptance prob = " + ("— (not tried)" if node.accept_prob is None else f"{node.accept_prob:.3f}"),
        f"source: {SOURCE_HELP.get(node.source, html.escape(node.source))}",
    ]
    return "<br>".join(lines)


def _output_hover(event: StepEvent) -> str:
    o = event.output
    appended = any(n.kind == o.kind for n in event.new_tokens)
    return (f"<b>{_token_text(o.text)}</b> · + {o.kind}<br>the target's own token after the last accepted node"
            f"<br>probability {o.prob:.3f}" + ("" if appended else "<br>(not appended: the run stopped before it)"))


def _edges(xs: Sequence[float], ys: Sequence[float], pairs: Sequence[tuple[int, int]]) -> tuple[list, list]:
    """Line coordinates for parent-child pairs, segments separated by None (one trace draws them all)."""
    ex, ey = [], []
    for parent, child in pairs:
        ex += [xs[parent], xs[child], None]
        ey += [ys[parent], ys[child], None]
    return ex, ey


def draft_tree_figure(event: StepEvent) -> go.Figure | None:
    """The draft tree of one step, laid out by depth: the accepted path emphasised, rejected branches dimmed,
    unreached nodes grey, and the target's own token (recovered or bonus) after the last accepted node.
    Hover a node for the drafter, path, target and acceptance probabilities. None for chain steps (no tree)."""
    nodes = event.tree
    if not nodes:
        return None
    accepted = [n.index for n in nodes if n.verdict == "accepted"]
    anchor = accepted[-1] if accepted else 0  # the accepted path is a chain from the root: its last node
    out = len(nodes)  # the output token, laid out as one more child of the anchor
    parents = [n.parent for n in nodes] + [anchor]
    ys = tree_rows(parents)
    xs = [n.depth for n in nodes] + [nodes[anchor].depth + 1]
    n_rows = int(max(ys)) + 1
    row_px = min(TREE_ROW_PX, (TREE_HEIGHT[1] - TREE_CHROME_PX) / (n_rows + 1))
    height = max(TREE_HEIGHT[0], round(TREE_CHROME_PX + row_px * (n_rows + 1)))
    dense = row_px < TREE_DENSE_ROW_PX
    shrink = max(0.6, row_px / TREE_ROW_PX)  # markers shrink with the rows so neighbours do not touch
    output_colour = OUTPUT_COLOURS.get(event.output.kind, GREY)

    fig = go.Figure()
    for verdict in ("unchecked", "rejected", "accepted"):  # emphasised edges drawn last, on top
        pairs = [(n.parent, n.index) for n in nodes if n.verdict == verdict]
        if pairs:
            style = TREE_STYLE[verdict]
            ex, ey = _edges(xs, ys, pairs)
            fig.add_trace(go.Scatter(x=ex, y=ey, mode="lines", line=dict(color=style.colour, width=style.edge_width),
                                     opacity=style.opacity, hoverinfo="skip", showlegend=False))
    ex, ey = _edges(xs, ys, [(anchor, out)])
    fig.add_trace(go.Scatter(x=ex, y=ey, mode="lines", line=dict(color=output_colour, width=3, dash="dot"),
                             hoverinfo="skip", showlegend=False))
    for verdict, style in TREE_STYLE.items():
        group = [n for n in nodes if n.verdict == verdict]
        if not group:
            continue
        produced = verdict in ("root", "accepted")
        labelled = produced or not dense
        label = "<b>{}</b>" if produced else "{}"
        fig.add_trace(go.Scatter(
            x=[xs[n.index] for n in group], y=[ys[n.index] for n in group], name=style.name, mode="markers+text",
            marker=dict(symbol=style.symbol, size=style.size * shrink, color=style.colour, opacity=style.opacity,
                        line=dict(color=style.colour, width=1.5)),
            text=[label.format(_token_text(n.text, TREE_LABEL_CHARS)) if labelled else "" for n in group],
            textposition="top center", textfont=dict(size=11, color=BLACK if produced else GREY),
            hovertext=[_node_hover(n) for n in group], hoverinfo="text",
        ))
    copied = [n for n in nodes if n.source in COPIED_SOURCES]
    if copied:
        fig.add_trace(go.Scatter(
            x=[xs[n.index] for n in copied], y=[ys[n.index] for n in copied], name="copied from earlier text",
            mode="markers", marker=dict(symbol="square-open", size=21 * shrink, color=ORANGE, line=dict(width=2)),
            hovertext=[_node_hover(n) for n in copied], hoverinfo="text",
        ))
    fig.add_trace(go.Scatter(
        x=[xs[out]], y=[ys[out]], name=f"+ {event.output.kind} (target's token)", mode="markers+text",
        marker=dict(symbol=OUTPUT_SYMBOLS.get(event.output.kind, "diamond"), size=15 * shrink, color=output_colour,
                    line=dict(color=BLACK, width=1)),
        text=[f"<b>{_token_text(event.output.text, TREE_LABEL_CHARS)}</b>"], textposition="top center",
        textfont=dict(size=11, color=output_colour), hovertext=[_output_hover(event)], hoverinfo="text",
    ))
    size, depth, accepted_depth = tree_shape(event)
    title = (f"Step {event.index}: draft tree of {size} nodes, depth {depth} · accepted depth {accepted_depth} "
             f"+ {event.output.kind} <b>{_token_text(event.output.text, TREE_LABEL_CHARS)}</b>")
    fig.update_layout(
        height=height, template="plotly_white", **BACKGROUNDS, font=dict(size=12), hovermode="closest",
        margin=dict(l=20, r=20, t=80, b=40), title=dict(text=title, x=0, y=0.99, yanchor="top", font=dict(size=12)),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0, font=dict(size=11)),
        hoverlabel=dict(align="left"),
    )
    fig.update_xaxes(title_text="depth (tokens ahead) · hover a node for its probabilities", range=[-0.5, max(xs) + 0.6],
                     tickvals=list(range(max(xs) + 1)), ticktext=["root", *map(str, range(1, max(xs) + 1))],
                     showgrid=False, zeroline=False)
    fig.update_yaxes(visible=False, range=[n_rows - 0.5, -0.9])  # reversed: row 0 on top, room for its label
    return fig


# -- the token lattice of one diffusion step ------------------------------------------------------

# Sequential yellow-orange-brown on the fixed range 0..1, its stops packed towards 0: a weak drafter's candidates
# (probabilities of a few percent) still differ visibly; the blue / purple / grey path markers stay visible on it
LATTICE_COLOURSCALE = [[0.0, "#FFFFF0"], [0.05, "#FFF3C4"], [0.15, "#FEE391"], [0.3, "#FEC44F"], [0.5, "#FE9929"],
                       [0.75, "#D95F0E"], [1.0, "#8C2D04"]]
LATTICE_ROW_PX = 46  # a cell's height: the token text in its middle, the path marker in its upper part
LATTICE_CHROME_PX = 155  # title, legend, the band over the cells for the "not proposed" badge, and axes
LATTICE_MARKER_LIFT = 0.3  # path markers sit this far above a cell's middle (in rows), clear of its text
LATTICE_LABEL_CHARS = (4, 10)  # a cell's text is cut to fit its column: 80 characters over the block, in these bounds


class LatticePathPoint(NamedTuple):
    """One proposed position of a lattice step's path: the column, the row it takes, its verdict."""

    column: LatticeColumn
    row: int  # the candidate's rank, or the "outside top-m" row under the candidates
    verdict: str
    target_prob: float | None


def lattice_path(event: StepEvent) -> list[LatticePathPoint]:
    """The draft path through a step's lattice, one point per proposed column: the candidate it took (its rank, or
    the row under the candidates when it is outside them) and the verifier's verdict on it (event.draft).

    >>> from engine.events import LatticeColumn, TokenCandidate, LengthDecision, OutputToken, PhaseTimings
    >>> cands = (TokenCandidate(5, " a", 0.6), TokenCandidate(6, " b", 0.3))
    >>> step = StepEvent(0, 4, LengthDecision(2, 2, "", {}), (), OutputToken(1, "x", "recovered", 1.0), (), 1,
    ...                  PhaseTimings(0, 0, 0, 0, 0), lattice=(LatticeColumn(0, cands, 6, " b", 0.3, 1),
    ...                  LatticeColumn(1, cands, 9, " z", 0.01, None), LatticeColumn(2, cands)))
    >>> [(p.column.position, p.row, p.verdict) for p in lattice_path(step)]
    [(0, 1, 'unchecked'), (1, 2, 'unchecked')]
    """
    depth = max((len(c.candidates) for c in event.lattice), default=0)
    points = []
    for column in event.lattice:
        if column.path_token_id is None:
            continue
        drafted = event.draft[column.position] if column.position < len(event.draft) else None
        points.append(LatticePathPoint(column, depth if column.path_rank is None else column.path_rank,
                                       drafted.verdict if drafted else "unchecked",
                                       drafted.target_prob if drafted else None))
    return points


def _lattice_cell_hover(column: LatticeColumn, rank: int) -> str:
    cand = column.candidates[rank]
    return (f"position +{column.position + 1} · candidate #{rank + 1}<br><b>{_token_text(cand.text)}</b>"
            f"<br>drafter prob {cand.prob:.3f}" + ("" if column.path_token_id is not None else "<br>(not proposed)"))


def _lattice_path_hover(point: LatticePathPoint) -> str:
    c = point.column
    where = "outside the drafter's top candidates" if c.path_rank is None else f"candidate #{c.path_rank + 1}"
    lines = [
        f"<b>{_token_text(c.path_text or '')}</b> · position +{c.position + 1} · {where}",
        f"path token: {point.verdict}",
        "drafter prob = " + ("—" if c.path_prob is None else f"{c.path_prob:.3f}"),
        "causal prob = " + ("— (not scored)" if c.causal_prob is None else f"{c.causal_prob:.3f}"),
        "target p = " + ("— (not checked)" if point.target_prob is None else f"{point.target_prob:.3f}"),
    ]
    return "<br>".join(lines)


def _lattice_cut_note(event: StepEvent, cut: Sequence[int], proposed: int) -> tuple[str, str]:
    """Why the columns `cut` were not proposed, as (one line for the title, the full account for a hover): the
    draft length the policy allowed (ADL's cut), or, when the path ended short of it, an end-of-sequence token."""
    span = f"+{cut[0] + 1}" if len(cut) == 1 else f"+{cut[0] + 1}…+{cut[-1] + 1}"
    d = event.decision
    if proposed >= d.allowed:
        line = f"{span} not proposed: the length policy allowed {d.allowed}"
    else:
        line = f"{span} not proposed: the path ended at +{proposed} (end of sequence), short of the allowed {d.allowed}"
    account = [f"draft length: {d.reason}", f"drafter: {event.proposer_info.get('summary', '—')}"]
    hover = "<br>".join(html.escape(part, quote=False) for text in account for part in textwrap.wrap(text, 80))
    return html.escape(line, quote=False), hover


def _add_lattice_path(fig: go.Figure, path: list) -> None:
    """The path: a line through the chosen cells, a marker per verdict (legend entries as in the draft tree), and
    the chosen cells outlined in their verdict's colour."""
    xs = [p.column.position for p in path]
    ys = [p.row - LATTICE_MARKER_LIFT for p in path]
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color=CELL_INK, width=2), hoverinfo="skip",
                             showlegend=False, name="path"))
    for verdict in ("accepted", "rejected", "unchecked"):
        group = [(x, y, p) for x, y, p in zip(xs, ys, path) if p.verdict == verdict]
        if not group:
            continue
        style = TREE_STYLE[verdict]
        fig.add_trace(go.Scatter(
            x=[x for x, _, _ in group], y=[y for _, y, _ in group], name=style.name, mode="markers",
            marker=dict(symbol=style.symbol, size=12, color=style.colour, line=dict(color=style.colour, width=2)),
            hovertext=[_lattice_path_hover(p) for _, _, p in group], hoverinfo="text",
        ))
    for x, p in zip(xs, path):
        fig.add_shape(type="rect", x0=x - 0.47, x1=x + 0.47, y0=p.row - 0.47, y1=p.row + 0.47,
                      line=dict(color=TREE_STYLE[p.verdict].colour, width=2.5), layer="above")


def lattice_figure(event: StepEvent) -> go.Figure | None:
    """The token lattice of a diffusion step: a heatmap of the drafter's candidates (positions across, rank 0 on
    top, colour = drafter probability, token text in each cell) with the draft path drawn through the chosen cells
    and marked by verdict as in the draft tree. A path token outside the candidates gets a row of its own under
    them; columns that were not proposed are veiled. None for steps without a lattice."""
    columns = event.lattice
    if not columns:
        return None
    n_pos = len(columns)
    depth = max(len(c.candidates) for c in columns)
    path = lattice_path(event)
    outside = any(p.column.path_rank is None for p in path)
    n_rows = depth + outside
    chars = max(LATTICE_LABEL_CHARS[0], min(LATTICE_LABEL_CHARS[1], 80 // n_pos))

    # the cells: z = drafter probability (None where a column has fewer candidates), the outside row holds path tokens
    z = [[None] * n_pos for _ in range(n_rows)]
    text = [[""] * n_pos for _ in range(n_rows)]
    hover = [[""] * n_pos for _ in range(n_rows)]
    for x, column in enumerate(columns):  # column x is draft position x
        for rank, cand in enumerate(column.candidates):
            z[rank][x] = cand.prob
            text[rank][x] = _token_text(cand.text, chars)
            hover[rank][x] = _lattice_cell_hover(column, rank)
    for p in path:
        if p.column.path_rank is None:
            x = p.column.position
            z[depth][x] = p.column.path_prob
            text[depth][x] = _token_text(p.column.path_text or "", chars)
            hover[depth][x] = _lattice_path_hover(p)
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(n_pos)), y=list(range(n_rows)), text=text, texttemplate="%{text}",
        textfont=dict(size=11), hovertext=hover, hoverinfo="text", hoverongaps=False, xgap=2, ygap=2,
        colorscale=LATTICE_COLOURSCALE, zmin=0, zmax=1, name="candidates", showscale=True,
        colorbar=dict(title=dict(text="drafter prob", side="right"), thickness=12, len=0.9, tickformat=".1f"),
    ))

    _add_lattice_path(fig, path)

    accepted = sum(1 for p in path if p.verdict == "accepted")
    title = (f"Step {event.index}: diffusion lattice, {n_pos} positions × {depth} candidates · path accepted "
             f"{accepted} of {len(path)} + {event.output.kind} <b>{_token_text(event.output.text, TREE_LABEL_CHARS)}</b>")
    # columns not proposed: veiled, a badge over them (hover: the policy's and the drafter's account), a title line
    cut = [c.position for c in columns if c.path_token_id is None]
    for x in cut:
        fig.add_shape(type="rect", x0=x - 0.5, x1=x + 0.5, y0=-0.5, y1=n_rows - 0.5, fillcolor="white",
                      opacity=0.6, line=dict(width=0), layer="above")
    if cut:
        note, why = _lattice_cut_note(event, cut, len(path))
        fig.add_annotation(x=(cut[0] + cut[-1]) / 2, y=-0.75, text="not proposed", showarrow=False,
                           font=dict(size=10, color=CELL_INK), bgcolor="white", bordercolor=GREY, borderpad=2,
                           hovertext=why)
        title += f"<br><span style='font-size:11px;color:{GREY}'>{note} · hover the badge for why</span>"
    fig.update_layout(
        height=LATTICE_CHROME_PX + LATTICE_ROW_PX * n_rows, template="plotly_white", **BACKGROUNDS, font=dict(size=12),
        hovermode="closest", margin=dict(l=20, r=20, t=75, b=40), hoverlabel=dict(align="left"),
        title=dict(text=title, x=0, xref="paper", y=1, yref="container", yanchor="top", pad=dict(t=12),
                   font=dict(size=12)),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0, font=dict(size=11)),
    )
    fig.update_xaxes(title_text="draft position (tokens ahead) · hover a cell for its probabilities",
                     tickvals=list(range(n_pos)), showgrid=False, zeroline=False, range=[-0.5, n_pos - 0.5],
                     ticktext=[f"+{c.position + 1}" if c.path_token_id is not None
                               else f"<span style='color:{GREY}'>+{c.position + 1}</span>" for c in columns])
    fig.update_yaxes(tickvals=list(range(n_rows)), showgrid=False, zeroline=False, range=[n_rows - 0.5, -1.0],
                     ticktext=[f"#{r + 1}" for r in range(depth)] + ([f"outside top-{depth}"] if outside else []))
    return fig
