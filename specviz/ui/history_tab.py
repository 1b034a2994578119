"""The History tab: the run log as a table; open a run to see it in a RunView, or replay it step by step,
straight from the log (no model involved).

`build_history_tab(store)` adds the components and events inside an open `gr.Blocks` (in a `gr.Tab`,
passed as `tab` so that selecting it refreshes the table). API endpoints: `/history`
(strategy_filter, search_text) and `/open_run` (run_id).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import gradio as gr
import pandas as pd

from engine import SpecVizError, StepEvent
from engine.errors import ConfigError
from specviz.limits import SQLITE_MAX_INT, check_text
from specviz.runner import Runner
from specviz.store import RunStore
from specviz.traces import RunSetup

from . import render
from .controls import explain
from .inputs import STRATEGY_NAMES
from .panels import PLOT_EVERY_STEPS, RunView, build_inspector_panel, build_plot_panel, build_stream_panel, run_state
from .sessions import RunGate
from .whatif_panel import build_whatif_panel

HISTORY_COLUMNS = ["id", "created", "strategy", "status", "prompt", "new tokens", "mean acceptance length",
                   "tokens/s", "source"]
HISTORY_COLUMN_WIDTHS = ["5%", "13%", "24%", "8%", "26%", "6%", "8%", "6%", "4%"]
LIGHT = MappingProxyType(dict(api_visibility="undocumented", concurrency_limit=None))  # log reads: no model, no queue


@dataclass
class HistoryTab:
    store: RunStore
    strategy: gr.Dropdown
    search: gr.Textbox
    refresh: gr.Button
    table: gr.Dataframe
    run_id: gr.Number
    open_button: gr.Button
    replay_button: gr.Button
    status: gr.HTML
    document: gr.Textbox
    view: RunView

    def list_history(self, strategy_filter, search_text) -> pd.DataFrame:
        try:
            search = check_search_text(search_text)
        except SpecVizError as exc:  # shown as a toast; the table keeps what it showed
            raise gr.Error(render.esc(str(exc)), print_exception=False) from None
        rows = self.store.list_runs(limit=200, strategy=None if strategy_filter in (None, "", "all") else strategy_filter,
                                    search=search)
        return history_frame(rows)

    def open_run(self, run_id) -> dict:
        try:
            run, events = load_run(self.store, run_id)
        except SpecVizError as exc:
            return {self.status: render.status_html(str(exc), "error")}
        state = run_state(events, run["prompt"], run.get("strategy_label") or run["strategy"], run["id"], False,
                          RunSetup.from_row(run))
        return {self.status: render.status_html(run_summary(run, events), "ok"), self.run_id: run["id"],
                self.document: document_update(run), **self.view.settle(state, note=run_settings(run))}

    def select_row(self, evt: gr.SelectData) -> dict:
        row = getattr(evt, "row_value", None)
        if not row:
            return {self.status: render.status_html("Could not read that row; type its id instead.", "error")}
        return self.open_run(row[0])

    def replay_run(self, run_id) -> Iterator[dict]:
        try:
            run, events = load_run(self.store, run_id)
        except SpecVizError as exc:
            yield {self.status: render.status_html(str(exc), "error")}
            return
        label = run.get("strategy_label") or run["strategy"]
        delay = min(0.25, 12.0 / max(len(events), 1))
        yield {self.document: document_update(run)}
        for i in range(1, len(events) + 1):
            state = run_state(events[:i], run["prompt"], label, run["id"], i < len(events), RunSetup.from_row(run))
            yield {self.status: render.status_html(f"Replaying run #{run['id']}: step {i} of {len(events)}", "running"),
                   **self.view.render(state, running=i < len(events), plot=(i % PLOT_EVERY_STEPS == 0 or i == len(events)))}
            time.sleep(delay)
        yield {self.status: render.status_html(run_summary(run, events), "ok")}

    def wire(self, tab: gr.Tab, demo: gr.Blocks) -> None:
        filters = [self.strategy, self.search]
        self.refresh.click(self.list_history, filters, self.table, api_name="history", concurrency_limit=None)
        self.strategy.change(self.list_history, filters, self.table, **LIGHT)
        self.search.submit(self.list_history, filters, self.table, **LIGHT)
        tab.select(self.list_history, filters, self.table, **LIGHT)
        opened = [self.status, self.run_id, self.document] + self.view.outputs()
        self.open_button.click(self.open_run, [self.run_id], opened, api_name="open_run", concurrency_limit=None)
        self.run_id.submit(self.open_run, [self.run_id], opened, **LIGHT)
        self.table.select(self.select_row, None, opened, **LIGHT)
        self.replay_button.click(self.replay_run, [self.run_id], [self.status, self.document] + self.view.outputs(),
                                 api_visibility="undocumented", concurrency_limit=4, concurrency_id="replay",
                                 show_progress="hidden")
        demo.load(self.list_history, filters, self.table, **LIGHT)


def build_history_tab(store: RunStore, tab: gr.Tab, demo: gr.Blocks, runner: Runner, gate: RunGate) -> HistoryTab:
    """The tab's components and events, added inside `tab` of the open `demo`; `runner` and `gate` serve the
    What-if panel (re-running a logged step holds the session's one model run, as the Playground does)."""
    explain(
        "Every run is logged step by step in SQLite. Open one to replay it in the panels below — "
        "straight from the log, without running a model."
    )
    with gr.Row():
        strategy = gr.Dropdown(["all"] + STRATEGY_NAMES, value="all", label="strategy", scale=1, min_width=140,
                               elem_id="history-strategy")
        search = gr.Textbox(label="search prompts", placeholder="text in the prompt", scale=3, elem_id="history-search")
        refresh = gr.Button("Refresh", scale=0, min_width=100, elem_id="history-refresh")
    table = gr.Dataframe(value=pd.DataFrame(columns=HISTORY_COLUMNS), headers=HISTORY_COLUMNS, interactive=False,
                         elem_id="history-table", max_height=320, wrap=True, column_widths=HISTORY_COLUMN_WIDTHS)
    with gr.Row(equal_height=False, elem_classes=["history-open-row"]):
        # no precision: Gradio would round NaN / infinity itself and fail without a message (load_run says why)
        run_id = gr.Number(None, step=1, label="run id", minimum=1, scale=0, min_width=140, elem_id="history-run-id")
        with gr.Column(scale=0, min_width=220):
            open_button = gr.Button("Open", variant="primary", size="md", elem_id="history-open")
            replay_button = gr.Button("▶ Replay step by step", size="md", elem_id="history-replay")
        with gr.Column(scale=1):
            status = gr.HTML(render.status_html("Click a row (or type a run id) to open a run."),
                             elem_id="history-status", js_on_load=None)
    document = gr.Textbox(label="Document attached to this run", lines=3, max_lines=10, interactive=False,
                          visible=False, elem_id="history-document")
    stream_panel = build_stream_panel("history-")
    with gr.Row(equal_height=False):
        with gr.Column(scale=6, min_width=380):
            inspector_panel = build_inspector_panel("history-")
            whatif = build_whatif_panel("history-", runner, gate)
        with gr.Column(scale=5, min_width=360):
            plot_panel = build_plot_panel("history-")
    view = RunView.assemble(stream_panel, inspector_panel, plot_panel)
    whatif.wire(view, ("history_what_if_k", "history_fork"), documented=False)  # the Playground's copy is the API's
    history = HistoryTab(store, strategy, search, refresh, table, run_id, open_button, replay_button, status, document, view)
    history.wire(tab, demo)
    return history


# -- what the panels show ------------------------------------------------------------------------------

def history_frame(rows: list[dict]) -> pd.DataFrame:
    out = []
    for r in rows:
        mal, tps = r.get("mean_acceptance_length"), r.get("tokens_per_s")
        out.append({
            "id": r["id"],
            "created": (r.get("created_at") or "")[:19].replace("T", " "),
            "strategy": r.get("strategy_label") or r.get("strategy"),
            "status": r.get("status"),
            "prompt": render.excerpt(r.get("prompt"), 60),
            "new tokens": r.get("new_tokens"),
            "mean acceptance length": None if mal is None else round(mal, 2),
            "tokens/s": None if tps is None else round(tps, 1),
            "source": r.get("source"),
        })
    return pd.DataFrame(out, columns=HISTORY_COLUMNS)


MAX_SEARCH_CHARS = 1_000  # the search box: text in a prompt


def check_search_text(text: Any) -> str | None:
    """The History search box's text, stripped (None: no search), or a ConfigError for text no prompt can hold."""
    text = check_text("search", "" if text is None else text).strip()
    if len(text) > MAX_SEARCH_CHARS:
        raise ConfigError("search", f"is {len(text):,} characters; search for at most {MAX_SEARCH_CHARS:,}")
    return text or None


def load_run(store: RunStore, run_id: Any) -> tuple[dict, list[StepEvent]]:
    try:
        rid = int(run_id)
    except (TypeError, ValueError, OverflowError):  # empty, text, NaN, infinity
        raise ConfigError("run id", "type the id of a run from the table (or click its row)") from None
    if not 1 <= rid <= SQLITE_MAX_INT or (isinstance(run_id, float) and rid != run_id):
        raise ConfigError("run id", "run ids are whole numbers from 1 up: type the id of a run from the table "
                                    "(or click its row)")
    run = store.get_run(rid)
    if run is None:
        raise ConfigError("run id", f"no run #{rid} in the log")
    return run, store.load_events(rid)


def run_summary(run: dict, events: list[StepEvent]) -> str:
    n_tokens = sum(len(e.new_tokens) for e in events)
    return (f"Run #{run['id']} · {run.get('strategy_label') or run['strategy']} · {run.get('status')} · "
            f"{len(events)} steps, {n_tokens} tokens · {(run.get('created_at') or '')[:19].replace('T', ' ')}")


def document_update(run: dict) -> dict:
    """The History's document box: the run's attached document, hidden when it had none."""
    return gr.update(value=run.get("document") or "", visible=bool(run.get("document")))


def run_settings(run: dict) -> str:
    return (f"target {run.get('target')} · temperature {run.get('temperature')} · top_k {run.get('top_k')} · "
            f"top_p {run.get('top_p')} · seed {run.get('seed')} · max new tokens {run.get('max_new_tokens')}"
            + (f" · document: {len(run['document']):,} characters" if run.get("document") else "")
            + (f" · stop: {run.get('stop_reason')}" if run.get("stop_reason") else "")
            + (f" · error: {run.get('error')}" if run.get("error") else ""))
