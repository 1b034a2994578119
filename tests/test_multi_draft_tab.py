"""The "Multi-draft bound" tab: its handler's numbers, figure and error messages, directly, through
gradio_client on a standalone Blocks, and its place in the explorer (no model is loaded)."""

from __future__ import annotations

import html
import json
import os

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from engine import ModelCache  # noqa: E402
from engine.analysis.optimal_acceptance import report  # noqa: E402
from specviz.store import RunStore  # noqa: E402
from specviz.ui import build_app, launch_local  # noqa: E402
from specviz.ui.multi_draft_tab import build_multi_draft_tab, multi_draft_update  # noqa: E402

pytestmark = [
    # Gradio's own queue statistics trip pandas 3 deprecation warnings; nothing in SpecViz.
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

OPTIMUM, ACHIEVED = "optimum α* (LP bound)", "our verifier (exact)"


def traces(fig) -> dict:
    return {t.name: t for t in fig.data}


def test_worked_example_numbers_reach_the_figure_and_the_table():
    fig, result = multi_draft_update("0.5, 0.5", "0.9, 0.1", 2)
    bars = traces(fig)
    assert bars[OPTIMUM].y == pytest.approx((0.69, 1.0, 1.0), abs=1e-9)
    assert bars[ACHIEVED].y == pytest.approx((0.6584428877, 1.0, 1.0), abs=1e-9)
    assert bars["target p"].y == pytest.approx((0.5, 0.5)) and bars["drafter q"].y == pytest.approx((0.9, 0.1))
    assert "2 i.i.d. draws from q" in bars[OPTIMUM].x[0] and "SpecTr k-SEQ" in bars[OPTIMUM].x[0]
    (line,) = fig.layout.shapes  # the one-draft level
    assert line.y0 == line.y1 == pytest.approx(0.6) and "60.0%" in line.name
    assert 'class="status status-ok"' in result and "One draft: Σ min(p, q) = 60.0%" in result
    row = result.split("<tr>")[2]  # the i.i.d. row
    assert ">69.0%<" in row and ">65.8%<" in row and ">3.2%<" in row
    assert "every draft is in {0}" in row and "only 50.0%" in row


def test_table_matches_the_engine_report_and_weights_are_normalised():
    fig, result = multi_draft_update("5 3 1 1", "1; 2; 3; 4", 3.0)  # spaces, semicolons, a float k from the slider
    rep = report([0.5, 0.3, 0.1, 0.1], [0.1, 0.2, 0.3, 0.4], 3)
    assert traces(fig)[OPTIMUM].y == pytest.approx(tuple(r.optimum for r in rep.schemes), abs=1e-12)
    assert traces(fig)[ACHIEVED].y == pytest.approx(tuple(r.achieved for r in rep.schemes), abs=1e-12)
    for r in rep.schemes:
        assert f">{r.optimum:.1%}<" in result and f">{r.achieved:.1%}<" in result
    assert "4 tokens, k = 3" in result


@pytest.mark.parametrize(
    "p, q, k, message",
    [
        ("0.5, <b>x</b>", "0.5, 0.5", 2, "p: '<b>x</b>' is not a number"),
        ("0.5, 0.5", "", 2, "q: is empty"),
        ("0.5, 0.5", "0.2, 0.3, 0.5", 2, "q: has 3 entries but p has 2"),
        ("0.5, -0.5", "0.5, 0.5", 2, "p: contains a negative value"),
        ("0, 0", "0.5, 0.5", 2, "p: is all zero"),
        (", ".join(["1"] * 13), ", ".join(["1"] * 13), 2, "p: has 13 entries"),
        ("0.5, 0.5", "0.5, 0.5", None, "k: must be a whole number of drafts, got None"),
        ("0.5, 0.5", "0.5, 0.5", 7, "k: must be between 1 and 4"),
    ],
)
def test_bad_input_shows_an_escaped_message_and_an_empty_figure(p, q, k, message):
    fig, result = multi_draft_update(p, q, k)
    assert 'class="status status-error"' in result and "Traceback" not in result
    assert html.escape(message, quote=True) in result
    assert "<b>" not in result  # what the person typed never reaches the page as markup
    assert not fig.data and fig.layout.annotations[0].text == "Fix the input above to see the bound"


def test_through_gradio_client():
    gradio_client = pytest.importorskip("gradio_client")
    with gr.Blocks() as demo:
        tab = build_multi_draft_tab()
    assert ">86.0%<" in tab.result.value  # the default example is computed when the tab is built
    try:
        client = gradio_client.Client(launch_local(demo), verbose=False)
        plot, result = client.predict("0.5, 0.5", "0.9, 0.1", 2, api_name="/multi_draft_bound")
        data = {t["name"]: t for t in json.loads(plot["plot"])["data"]}
        assert plot["type"] == "plotly" and data[OPTIMUM]["y"] == pytest.approx([0.69, 1.0, 1.0], abs=1e-9)
        assert ">65.8%<" in result
        _, error = client.predict("1, 2", "x", 2, api_name="/multi_draft_bound")
        assert "q: &#x27;x&#x27; is not a number" in error
    finally:
        demo.close()


def test_the_explorer_has_the_tab_after_history(tmp_path):
    models = ModelCache(loader=lambda spec, progress=None: pytest.fail("building the UI must not load a model"))
    demo = build_app(models, RunStore(tmp_path / "runs.db"))
    tabs = [c["props"] for c in demo.config["components"] if c["type"] == "tabitem"]
    ids = [props.get("elem_id") for props in tabs]
    assert "tab-multi-draft" in ids and ids.index("tab-multi-draft") == ids.index("tab-history") + 1
    assert "multi_draft_bound" in {d.get("api_name") for d in demo.config["dependencies"]}
