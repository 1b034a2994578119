"""The diffusion-lattice panel: the lattice figure of one step, the explorer's lattice plot following the step,
the step inspector and draft-length timeline on diffusion steps, and lattices replayed from the SQLite log.
Hand-built events only."""

from __future__ import annotations

import plotly.graph_objects as go

from engine import SamplingConfig, parse_strategy
from engine.events import (
    DraftedToken,
    LatticeColumn,
    LengthDecision,
    NewToken,
    OutputToken,
    PhaseTimings,
    StepEvent,
    TokenCandidate,
)
from specviz.figures import BLUE, TREE_STYLE, draft_length_figure, lattice_figure, lattice_path
from specviz.store import RunStore
from specviz.ui.render import step_inspector_html, token_stream_html

SCRIPT = "<script>alert(1)</script>"

# A block of 5 positions x 3 candidates. The path takes " the" (#1, accepted), " cat" (#2, accepted), SCRIPT from
# outside the top 3 (rejected), " on" (#1, unchecked); the last column was cut by the draft length (ADL).
CANDIDATES = [
    [(" the", 0.6), (" a", 0.3), (" one", 0.1)],
    [(" dog", 0.5), (" cat", 0.4), ("\n", 0.05)],
    [(" sat", 0.7), (" ran", 0.2), ("<i>&", 0.05)],
    [(" on", 0.8), (" in", 0.1), (" by", 0.05)],
    [(" the", 0.9), (" a", 0.05)],
]
PATH = [(0, "accepted"), (1, "accepted"), (None, "rejected"), (0, "unchecked")]  # (rank, verdict) per proposed column


def lattice_step(index: int = 0, candidates=CANDIDATES, path=PATH, reason: str = "ADL: mean accepted 1.5 -> L = 4",
                 signal: float = 1.5) -> StepEvent:
    """A diffusion step from per-column (text, prob) candidates and per-proposed-column (rank, verdict); rank None
    takes SCRIPT, a token outside the candidates. Columns past the path are not proposed."""
    columns, draft = [], []
    for pos, cands in enumerate(candidates):
        tokens = tuple(TokenCandidate(100 * pos + r, text, prob) for r, (text, prob) in enumerate(cands))
        if pos >= len(path):
            columns.append(LatticeColumn(pos, tokens))
            continue
        rank, verdict = path[pos]
        token = TokenCandidate(999, SCRIPT, 0.01) if rank is None else tokens[rank]
        columns.append(LatticeColumn(pos, tokens, token.token_id, token.text, token.prob, rank,
                                     None if pos == 0 else 0.5))
        checked = verdict != "unchecked"
        draft.append(DraftedToken(pos, token.token_id, token.text, token.prob, 0.45 if checked else None,
                                  1.0 if checked else None, None, verdict))
    accepted = tuple(NewToken(d.token_id, d.text, "accepted") for d in draft if d.verdict == "accepted")
    return StepEvent(
        index=index, context_length=12, draft=tuple(draft),
        decision=LengthDecision(len(candidates), len(path), reason, {"signal": signal, "signal_name": "mean accepted"}),
        output=OutputToken(7, " sat", "recovered", 0.6), new_tokens=accepted + (NewToken(7, " sat", "recovered"),),
        target_forwards=1, timings=PhaseTimings(0.01, 0.02, 0.001, 0.05 * index, 0.05 * index + 0.031),
        proposer_info={"summary": "CPS path over 5 positions"}, lattice=tuple(columns),
    )


def chain_step() -> StepEvent:
    draft = (DraftedToken(0, 11, " Hi", 0.6, 0.7, 1.0, 0.3, "accepted"),)
    return StepEvent(index=0, context_length=5, decision=LengthDecision(1, 1, "constant K = 1", {}), draft=draft,
                     output=OutputToken(12, "!", "bonus", 0.9), new_tokens=(NewToken(11, " Hi", "accepted"), NewToken(12, "!", "bonus")),
                     target_forwards=1, timings=PhaseTimings(0.01, 0.02, 0.001, 0.0, 0.031))


def heatmap(fig: go.Figure) -> go.Heatmap:
    (trace,) = [t for t in fig.data if t.type == "heatmap"]
    return trace


def markers(fig: go.Figure) -> dict[str, go.Scatter]:
    return {t.name: t for t in fig.data if t.type == "scatter" and t.mode == "markers"}


def all_texts(fig: go.Figure) -> str:
    """Every string plotly renders: cell texts, hovers, annotations, tick labels and the title."""
    parts = [fig.layout.title.text, *(a.text for a in fig.layout.annotations), *(a.hovertext for a in fig.layout.annotations)]
    parts += [*(fig.layout.xaxis.ticktext or ()), *(fig.layout.yaxis.ticktext or ())]
    for trace in fig.data:
        for attr in ("text", "hovertext"):
            value = getattr(trace, attr, None) or ()
            parts += [str(v) for row in value for v in (row if isinstance(row, (list, tuple)) else [row])]
    return " ".join(p for p in parts if p)


def test_heatmap_is_the_candidate_probabilities_rank_zero_on_top():
    fig = lattice_figure(lattice_step())
    cells = heatmap(fig)
    z = [list(row) for row in cells.z]
    for pos, cands in enumerate(CANDIDATES):
        assert [z[rank][pos] for rank in range(len(cands))] == [p for _, p in cands]
    assert z[2][4] is None  # the last column has two candidates only
    assert z[3] == [None, None, 0.01, None, None]  # the outside row holds the path token outside the top 3
    assert (cells.zmin, cells.zmax) == (0, 1) and cells.colorbar.title.text == "drafter prob"
    assert fig.layout.yaxis.range[0] == 3.5 and fig.layout.yaxis.range[1] < -0.5  # reversed: rank 0 on top
    assert list(fig.layout.xaxis.ticktext[:4]) == ["+1", "+2", "+3", "+4"]
    assert cells.text[0][1] == "␣dog" and cells.text[1][2] == "␣ran" and cells.text[2][1] == "↵"  # visible whitespace
    assert "drafter prob 0.400" in cells.hovertext[1][1] and "candidate #2" in cells.hovertext[1][1]


def test_model_text_is_escaped_everywhere():
    fig = lattice_figure(lattice_step())
    texts = all_texts(fig)
    assert "<script" not in texts and "<i>" not in texts
    assert "&lt;script&gt;" in texts and "&lt;i&gt;&amp;" in texts
    assert heatmap(fig).text[2][2] == "&lt;i&gt;&amp;"


def test_path_passes_through_the_chosen_cells():
    event = lattice_step()
    fig = lattice_figure(event)
    (line,) = [t for t in fig.data if t.type == "scatter" and t.mode == "lines"]
    assert list(line.x) == [0, 1, 2, 3]
    # each point lies inside its cell (rows: the rank; the outside-top-3 row is 3), above the cell's text
    for y, row in zip(line.y, [0, 1, 3, 0]):
        assert row - 0.5 < y < row
    assert [(p.column.position, p.row) for p in lattice_path(event)] == [(0, 0), (1, 1), (2, 3), (3, 0)]
    outlines = [s for s in fig.layout.shapes if s.line.width and s.line.width > 1]
    assert [((s.x0 + s.x1) / 2, round((s.y0 + s.y1) / 2)) for s in outlines] == [(0, 0), (1, 1), (2, 3), (3, 0)]


def test_path_markers_are_styled_by_verdict():
    fig = lattice_figure(lattice_step())
    by_name = markers(fig)
    expected = {"accepted": [0, 1], "rejected": [2], "unchecked": [3]}
    for verdict, xs in expected.items():
        style = TREE_STYLE[verdict]
        trace = by_name[style.name]
        assert list(trace.x) == xs
        assert (trace.marker.color, trace.marker.symbol) == (style.colour, style.symbol)
    assert TREE_STYLE["accepted"].colour == BLUE and TREE_STYLE["rejected"].symbol == "x"
    assert TREE_STYLE["unchecked"].symbol.endswith("-open")
    hover = by_name[TREE_STYLE["rejected"].name].hovertext[0]
    assert "rejected" in hover and "target p = 0.450" in hover and "causal prob = 0.500" in hover
    assert "outside the drafter's top candidates" in hover
    first = by_name[TREE_STYLE["accepted"].name].hovertext[0]
    assert "causal prob = — (not scored)" in first and "drafter prob = 0.600" in first
    assert "target p = — (not checked)" in by_name[TREE_STYLE["unchecked"].name].hovertext[0]


def test_a_path_token_outside_the_candidates_gets_its_own_row():
    fig = lattice_figure(lattice_step())
    assert list(fig.layout.yaxis.ticktext) == ["#1", "#2", "#3", "outside top-3"]
    assert heatmap(fig).text[3][2] == "&lt;script&gt;a…"  # cut to 10 characters (5 columns), escaped
    inside = lattice_figure(lattice_step(path=[(0, "accepted"), (1, "rejected")]))
    assert list(inside.layout.yaxis.ticktext) == ["#1", "#2", "#3"] and len(heatmap(inside).z) == 3


def test_columns_not_proposed_are_veiled_and_explained():
    fig = lattice_figure(lattice_step())
    veils = [s for s in fig.layout.shapes if s.fillcolor == "white"]
    assert [(s.x0, s.x1) for s in veils] == [(3.5, 4.5)]
    (badge,) = [a for a in fig.layout.annotations if a.text == "not proposed"]
    assert badge.x == 4 and badge.y < -0.5  # over the cut column, above the cells
    assert "draft length: ADL: mean accepted 1.5 -&gt; L = 4" in badge.hovertext  # the policy's reason, escaped
    assert "drafter: CPS path over 5 positions" in badge.hovertext
    assert "+5" in fig.layout.xaxis.ticktext[4] and "color" in fig.layout.xaxis.ticktext[4]  # greyed tick
    assert "+5 not proposed: the length policy allowed 4" in fig.layout.title.text
    # a path that ended short of the allowed length (after an end-of-sequence token)
    short = lattice_step(path=PATH[:2])
    short = lattice_figure(StepEvent(**{**short.__dict__, "decision": LengthDecision(5, 4, "ADL", {})}))
    assert "+3…+5 not proposed: the path ended at +2 (end of sequence), short of the allowed 4" in short.layout.title.text
    assert [s.x0 for s in short.layout.shapes if s.fillcolor == "white"] == [1.5, 2.5, 3.5]
    full = lattice_figure(lattice_step(candidates=CANDIDATES[:4]))
    assert not [s for s in full.layout.shapes if s.fillcolor == "white"] and "not proposed" not in full.layout.title.text


def test_title_counts_positions_candidates_and_the_accepted_path():
    title = lattice_figure(lattice_step(index=7)).layout.title.text
    assert title.startswith("Step 7: diffusion lattice, 5 positions × 3 candidates · path accepted 2 of 4")
    assert "+ recovered <b>␣sat</b>" in title


def test_steps_without_a_lattice_have_no_figure():
    assert lattice_figure(chain_step()) is None


def test_explorer_lattice_plot_follows_the_step_and_hides_for_chains():
    from specviz.ui.panels import _lattice_update, _tree_update

    events = [lattice_step(index=0), chain_step(), lattice_step(index=2, path=PATH[:1])]
    events[1] = StepEvent(**{**events[1].__dict__, "index": 1})
    latest, first = _lattice_update(events, None), _lattice_update(events, 0)
    assert latest["visible"] and first["visible"]
    assert "Step 2:" in latest["value"].layout.title.text and "Step 0:" in first["value"].layout.title.text
    assert _lattice_update(events, 1) == {"__type__": "update", "visible": False}
    assert _lattice_update([], None)["visible"] is False
    assert _tree_update(events, 0)["visible"] is False  # a lattice step shows no tree


def test_inspector_panel_returns_the_lattice_plot():
    import gradio as gr

    from specviz.ui.panels import build_inspector_panel

    with gr.Blocks():
        *_, tree_plot, lattice_plot = build_inspector_panel("x-")
    assert lattice_plot.elem_id == "x-lattice-plot" and not lattice_plot.visible
    assert tree_plot.elem_id == "x-draft-tree-plot"


def test_inspector_and_token_stream_show_the_path_as_an_ordinary_chain():
    html = step_inspector_html([lattice_step()], 0)
    assert html.count('class="row-') == 4  # one proposal row per path token
    assert "&lt;script&gt;" in html and "<script" not in html
    assert "CPS path over 5 positions" in html and "requested <b>5</b>, allowed <b>4</b>" in html
    stream = token_stream_html([lattice_step()], "Once", focus_step=0)
    assert stream.count("tok-accepted") == 2 and "tok-rejected" in stream and "tok-unchecked" in stream
    assert "&lt;script&gt;" in stream and "<script" not in stream  # the rejected path token, shown struck through


def test_draft_length_timeline_shows_the_adl_signal():
    events = [lattice_step(index=i, path=PATH[: 4 - i], signal=2.0 - i / 2) for i in range(3)]
    fig = draft_length_figure(events)
    by_name = {t.name: t for t in fig.data}
    assert list(by_name["drafted"].y) == [4, 3, 2] and list(by_name["chosen length"].y) == [4, 3, 2]
    assert list(by_name["accepted"].y) == [2, 2, 2]
    signal = by_name["mean accepted"]
    assert list(signal.y) == [2.0, 1.5, 1.0] and signal.yaxis == "y2"
    assert "ADL: mean accepted 1.5 -&gt; L = 4" in by_name["chosen length"].hovertext[0]


def test_replayed_lattice_draws_the_same_figure(tmp_path):
    store = RunStore(tmp_path / "runs.db")
    run_id = store.start_run(strategy=parse_strategy("draft_model"), sampling=SamplingConfig(), target="t",
                             drafter="d", prompt="p", prompt_tokens=1, max_new_tokens=8)
    event = lattice_step()
    store.log_step(run_id, event, first_seq=0)
    (replayed,) = store.load_events(run_id)
    assert replayed == event
    assert lattice_figure(replayed).to_dict() == lattice_figure(event).to_dict()


def test_length_policy_field_takes_diffusions_adl():
    """length_policy is shared by strategies with different choices: the field must accept diffusion's adl (Gradio
    refuses a value outside a dropdown's choices) and list a strategy's own choices once it is picked."""
    import gradio as gr

    from specviz.ui.controls import PARAM_FIELDS, _field_updates, build_strategy_controls

    with gr.Blocks():
        controls = build_strategy_controls("x-", "Strategy", "prompt_lookup")
    field = controls.fields["length_policy"]
    assert field.preprocess("adl") == "adl" and field.preprocess("feedback") == "feedback"
    updates = dict(zip(PARAM_FIELDS, _field_updates("diffusion")))
    assert updates["length_policy"]["choices"] == ["adl", "constant"] and updates["length_policy"]["value"] == "adl"
    assert updates["max_k"]["value"] == 8 and "ADL" in updates["k"]["info"]  # diffusion's own default and help
    assert "adl" not in _field_updates("draft_model")[PARAM_FIELDS.index("length_policy")]["choices"]
