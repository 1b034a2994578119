"""Workshop mode without a browser: every figure has transparent backgrounds (the dark theme shows through), the
clipped titles are short enough, the head script carries the theme / projector / keyboard handling and reaches
launch(), the CSS keeps a dark rule for every plot text and a second cue for every colour, and the rendered
HTML has its accessible names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.events import (
    DraftedToken,
    LengthDecision,
    NewToken,
    OutputToken,
    PhaseTimings,
    StepEvent,
    TokenCandidate,
)
from specviz import figures
from specviz.traces import bundled_traces
from specviz.ui import render, workshop

CSS = (Path(__file__).resolve().parent.parent / "assets" / "style.css").read_text(encoding="utf-8")
TRACES = bundled_traces()


def step(index: int = 0) -> StepEvent:
    draft = (
        DraftedToken(0, 5, " the", 0.9, 0.8, 0.88, 0.1, "accepted", (TokenCandidate(5, " the", 0.8),)),
        DraftedToken(1, 6, " cat", 0.7, 0.1, 0.14, 0.5, "rejected", (TokenCandidate(7, " dog", 0.6),)),
        DraftedToken(2, 8, " sat", 0.6, None, None, None, "unchecked", ()),
    )
    new = (NewToken(5, " the", "accepted"), NewToken(7, " dog", "recovered"))
    return StepEvent(index, 10, LengthDecision(3, 3, "constant K", {}), draft, OutputToken(7, " dog", "recovered", 0.6),
                     new, 1, PhaseTimings(0.01, 0.03, 0.002, 0.0, 0.05))


def all_figures():
    events = [step(0), step(1)]
    out = {"acceptance (empty)": figures.acceptance_figure([]), "acceptance": figures.acceptance_figure(events, "x"),
           "draft length (empty)": figures.draft_length_figure([]), "draft length": figures.draft_length_figure(events),
           "phases (empty)": figures.phase_figure([]), "phases": figures.phase_figure(events)}
    if "showcase" in TRACES:
        trace = TRACES["showcase"].events
        tree_step = next(e for e in trace if e.tree)
        out.update({"tree": figures.draft_tree_figure(tree_step), "acceptance (tree run)": figures.acceptance_figure(trace),
                    "draft length (tree run)": figures.draft_length_figure(trace), "phases (tree run)": figures.phase_figure(trace)})
    if "diffusion" in TRACES:
        out["lattice"] = figures.lattice_figure(next(e for e in TRACES["diffusion"].events if e.lattice))
    return out


def test_every_figure_has_transparent_backgrounds():
    for name, fig in all_figures().items():
        assert fig.layout.paper_bgcolor == figures.TRANSPARENT, name
        assert fig.layout.plot_bgcolor == figures.TRANSPARENT, name


def test_titles_fit_their_plots():
    fig = figures.draft_length_figure([step(0), step(1)])
    theory = [a.text for a in fig.layout.annotations if a.text and a.text.startswith("Theory")]
    assert theory and all(len(line) <= 26 for line in theory[0].split("<br>"))  # was one 38-character line
    long_label = "hybrid_tree(drafter=eagle, vocab_trim=4096, depth=5, width=2, nodes=8, min_path_prob=0.2, k=8)"
    title = figures.acceptance_figure([step(0)], title=long_label).layout.title.text
    assert len(title) <= figures.TITLE_CHARS and title.endswith("…")
    assert figures.acceptance_figure([step(0)], title="ar").layout.title.text == "ar"
    phases = figures.phase_figure([step(0)])
    if phases.layout.title.text:
        assert all(len(line) <= 50 for line in phases.layout.title.text.split("<br>"))


def test_figures_keep_a_second_cue_besides_colour():
    assert len(set(figures.STEP_PATTERNS.values())) == len(figures.STEP_PATTERNS)  # accepted solid, others patterned
    assert figures.PHASE_PATTERNS["draft"] != figures.PHASE_PATTERNS["verify"]
    assert len(set(figures.OUTPUT_SYMBOLS.values())) == len(figures.OUTPUT_SYMBOLS)
    assert len({s.symbol for s in figures.TREE_STYLE.values()}) == len(figures.TREE_STYLE)
    fig = figures.acceptance_figure([step(0)])
    shapes = {t.name: t.marker.pattern.shape for t in fig.data if t.type == "bar" and t.name in figures.TRACE_NAMES[:4]}
    assert shapes["+ recovered"] and shapes["+ bonus"] and shapes["+ baseline"] and not shapes["accepted drafts"]


def test_lattice_draws_on_its_cells_in_fixed_ink():
    """The dark theme recolours figures.BLACK (the theme ink); the lattice's path and badge use CELL_INK, kept."""
    if "diffusion" not in TRACES:
        pytest.skip("no recorded diffusion trace")
    fig = figures.lattice_figure(next(e for e in TRACES["diffusion"].events if e.lattice))
    path = next(t for t in fig.data if t.name == "path")
    assert path.line.color == figures.CELL_INK != figures.BLACK
    assert "rgb(34, 34, 34)" in CSS and "rgb(17, 17, 17)" in CSS  # BLACK recoloured, CELL_INK excluded


def test_head_script_handles_theme_projector_and_keys():
    head = workshop.HEAD
    assert head.startswith("<script>") and head.endswith("</script>") and head.count("</script>") == 1
    for needed in ("keydown", "ArrowLeft", "ArrowRight", "step-prev", "step-next", "step-play", "history-",
                   "offsetParent", "localStorage", "classList", "projector", "__theme", "aria-label"):
        assert needed in head, needed
    # never while typing, never trapping focus: the guards are there, and nothing calls focus()
    assert "textarea" in head and "contenteditable" in head and "select" in head
    assert ".focus(" not in head
    assert workshop.KEY_HINT == "Keys: ← → step · space play"


def test_launch_app_passes_the_head_script(monkeypatch):
    import gradio as gr

    from specviz.ui import app

    seen = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: seen.update(kw))
    with gr.Blocks() as demo:
        gr.HTML("x")
    app.launch_app(demo, head="<meta name='extra'>", prevent_thread_lock=True)
    assert seen["head"].startswith(workshop.HEAD) and seen["head"].endswith("<meta name='extra'>")
    assert seen["css"] and "body.projector" in seen["css"] and ".dark .js-plotly-plot" in seen["css"]


def test_toolbar_is_in_the_page():
    import gradio as gr

    with gr.Blocks():
        toolbar = workshop.build_toolbar()
    value = toolbar.value
    assert 'id="sv-theme-toggle"' in value and 'id="sv-projector-toggle"' in value and workshop.KEY_HINT in value
    assert 'aria-pressed="false"' in value and 'role="toolbar"' in value


def test_css_recolours_plot_text_in_dark_and_enlarges_in_projector():
    for selector in ('g[class$="tick"] > text', "text.gtitle", "text.legendtext", "text.annotation-text",
                     ".gridlayer path", ".zerolinelayer path", ".colorbar text"):
        assert re.search(r"\.dark \.js-plotly-plot[^{]*" + re.escape(selector), CSS), selector
    assert "body.projector .token-stream-inner" in CSS
    for kind in ("accepted", "recovered", "bonus", "rejected", "unchecked"):  # the verdict as CSS alt text
        assert re.search(rf"\.tok-{kind}::after \{{ content: \"\" / \" \({kind}\)\"; \}}", CSS), kind


def test_render_has_accessible_names():
    html_text = render.token_stream_html([step(0)], prompt="Say hi")
    assert 'role="region"' in html_text and f'aria-label="{render.STREAM_LABEL}"' in html_text
    assert 'class="draft-tail" role="group" aria-label="discarded draft tokens of step 0"' in html_text
    inspector = render.step_inspector_html([step(0)], 0)
    assert '<caption class="sr-only">Proposal of step 0' in inspector
    assert 'class="timing-bar" role="img" aria-label="time split: draft' in inspector
    info = render.proposer_info_html({"tables": [{"title": "n-gram <table>", "columns": ["a"], "rows": [[1]]}]})
    assert '<caption class="sr-only">n-gram &lt;table&gt;</caption>' in info
    legend = render.legend_html()
    assert legend.count('role="listitem"') == 7
    # the token text itself is untouched (the verdict comes from CSS): copy-paste gives the model's words
    assert '<span class="tok tok-accepted tok-focus" data-step="0" title="' in html_text
