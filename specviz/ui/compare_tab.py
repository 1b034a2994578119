"""The Compare tab: two strategies on the same prompt, seed and sampling settings, raced live side by side
(`specviz.compare.CompareRace`), then a summary with speedups against an `ar` run and, under greedy
decoding, a lossless check.

`build_compare_tab(runner, store, examples, gate, demo)` adds the components and events inside an open
`gr.Blocks` (in a `gr.Tab`). Its Compare button is the API endpoint `/compare`, with the parameters prompt,
a_name, a_<field> for every strategy field, b_name, b_<field>..., temperature, top_k, top_p, seed,
max_new_tokens, mode, target, document; a side's field left out (None) takes that side's strategy's own
default. A comparison is one model run for the session's fairness limit (`gate`) and waits in the same
"engine" queue as the Playground's runs. The sides are a list (SIDES): the logic does not name them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from engine import EMBEDDED_DEFAULT, RunMetrics, SamplingConfig, StepEvent
from specviz.compare import BASELINE, CompareRace, RaceSide, SideResult, with_ar_baseline
from specviz.prompts import SuitePrompt
from specviz.runner import RunRequest, Runner, new_group_id
from specviz.store import RunStore

from . import render
from .controls import (
    ENGINE_CONCURRENCY,
    QUIET,
    SamplingControls,
    StrategyControls,
    build_document_controls,
    build_example_picker,
    build_max_new_tokens,
    build_sampling_controls,
    build_strategy_controls,
    error_status,
    explain,
    wire_document_upload,
    wire_example_picker,
)
from .inputs import INPUT_ERRORS, RunInputs, StrategyKeys, named_handler, read_run_inputs
from .panels import wait_until_closed
from .sessions import RunGate

SIDES = (("A", "ar"), ("B", "prompt_lookup"))  # each side's name and default strategy, in the page's order

SUMMARY_COLUMNS = ["side", "strategy", "status", "speedup vs ar", "mean acceptance length", "acceptance rate",
                   "tokens/s", "target forward passes", "new tokens", "wall s", "run id"]
SUMMARY_COLUMN_WIDTHS = ["7%", "27%", "8%", "11%", "9%", "8%", "6%", "8%", "6%", "5%", "5%"]


@dataclass
class CompareSide:
    name: str
    controls: StrategyControls
    stream: gr.HTML
    metrics: gr.HTML


@dataclass
class CompareTab:
    runner: Runner
    store: RunStore
    prompt: gr.Textbox
    sampling: SamplingControls
    max_new: gr.Slider
    mode: gr.Radio
    target: gr.Textbox
    document: gr.Textbox
    run_button: gr.Button
    stop_button: gr.Button
    status: gr.HTML
    sides: list[CompareSide]
    table: gr.Dataframe
    lossless: gr.HTML
    timing_note: gr.Markdown
    state: gr.State

    def named_inputs(self) -> dict[str, Any]:
        """The Compare button's inputs under their API names, in the API's order."""
        strategies = {name: c for side in self.sides for name, c in side.controls.named_inputs().items()}
        return {"prompt": self.prompt, **strategies, **self.sampling.named_inputs(), "max_new_tokens": self.max_new,
                "mode": self.mode, "target": self.target, "document": self.document}

    def outputs(self) -> list:
        return [self.status, *(s.stream for s in self.sides), *(s.metrics for s in self.sides), self.table,
                self.lossless, self.timing_note, self.state]

    def run_compare(self, values: dict[str, Any]) -> Iterator[dict]:
        """The `/compare` handler: validate, prepare every side, race them, then summarise."""
        try:
            inputs = read_run_inputs(values, [side.controls.keys for side in self.sides])
        except INPUT_ERRORS as exc:
            yield {self.status: error_status(exc)}
            return
        mode = "sequential" if values["mode"] == "sequential" else "concurrent"
        race, baseline = self._new_race(inputs, mode)
        yield {self.status: render.status_html("Loading model… (the first load takes ~30 s)", "running"),
               **self._side_outputs(race, running=True), self.table: pd.DataFrame(columns=SUMMARY_COLUMNS),
               self.lossless: "", self.timing_note: ""}
        try:
            for side, message in race.prepare():
                yield {self.status: render.status_html(f"Preparing {side}: {message}", "running")}
        except Exception as exc:
            yield {self.status: error_status(exc), **self._side_outputs(race, running=False, metrics=False)}
            return
        yield from self._stream(race, mode)
        results = race.results
        yield {
            self.status: render.status_html(
                "Done." if all(r.status == "finished" for r in results.values())
                else "Done, with problems: see the summary.", "ok"),
            self.table: summary_frame(results, baseline),
            self.lossless: lossless_html(inputs.sampling, results, baseline, [s for s in results if s != baseline]),
            self.timing_note: timing_note(mode, list(results), baseline),
        }

    def _new_race(self, inputs: RunInputs, mode: str) -> tuple[CompareRace, str]:
        """The race of this request: the page's sides, plus an extra `ar` baseline when no side is `ar`."""
        jobs, baseline = with_ar_baseline([(side.name, s) for side, s in zip(self.sides, inputs.strategies, strict=True)])
        group = new_group_id()
        requests = [RaceSide(name, RunRequest(
            prompt=inputs.prompt, strategy=strategy, sampling=inputs.sampling, max_new_tokens=inputs.max_new_tokens,
            target=inputs.target, source="ui", group_id=group, document=inputs.document)) for name, strategy in jobs]
        return CompareRace(self.runner, requests, mode), baseline

    def _side_outputs(self, race: CompareRace, running: bool, metrics: bool = True) -> dict:
        out = {}
        for side in self.sides:
            out[side.stream] = side_stream(side.name, race.results[side.name].label, [], running=running)
            if metrics:
                out[side.metrics] = render.metrics_html(None)
        return out

    def _stream(self, race: CompareRace, mode: str) -> Iterator[dict]:
        """Live updates of every side while the race runs (closing this generator stops the race)."""
        how = "all at once in separate threads" if mode == "concurrent" else "one after another"
        running_text = f"Running {', '.join(f'{r.label} ({name})' for name, r in race.results.items())} {how}…"
        yield {self.status: render.status_html(running_text, "running")}
        try:
            for batch in race.batches():
                changed = {update.side for update in batch}
                out: dict = {self.state: {s.name: {**vars(race.results[s.name])} for s in self.sides}}
                for side in self.sides:
                    if side.name in changed:
                        r = race.results[side.name]
                        out[side.stream] = side_stream(side.name, r.label, r.events, running=r.running, error=r.error)
                        out[side.metrics] = render.metrics_html(r.metrics, running=r.running)
                if BASELINE in changed:
                    r = race.results[BASELINE]
                    out[self.status] = render.status_html(
                        f"{running_text} Baseline (ar): {len(r.token_ids)} tokens, {r.status}.", "running")
                yield out
        finally:
            # Finished, or closed by Stop: the sides stop after their current step and close their streams (each
            # marks its run "stopped" unless it finished). No join here: Gradio closes generators from its event
            # loop, which must not block.
            race.stop()

    def after_stop(self, state: dict | None) -> dict:
        if state and not any(r.get("status") in ("running", "waiting") for r in state.values()):
            return {self.status: render.status_html("Stopped.", "info")}
        out = {self.status: render.status_html("Stopped. Partial runs are logged with status \"stopped\".", "info")}
        run_ids = [r.get("run_id") for r in (state or {}).values()]
        closed = wait_until_closed(self.store, run_ids)  # no late update from the cancelled handler after this
        for side in self.sides:
            r = (state or {}).get(side.name)
            if r:
                events = self.store.load_events(r["run_id"]) if closed and r.get("run_id") is not None else r["events"]
                out[side.stream] = side_stream(side.name, r["label"], events, running=False, error=r.get("error"))
                out[side.metrics] = render.metrics_html(RunMetrics.from_events(events) if events else None)
        return out

    def wire(self, gate: RunGate) -> None:
        inputs = self.named_inputs()
        handler = gate.guard(named_handler(self.run_compare, list(inputs), required=["prompt"]),
                             lambda exc: {self.status: error_status(exc)})
        event = self.run_button.click(  # queue position and expected wait on the status line (see the Playground)
            handler, list(inputs.values()), self.outputs(), api_name="compare",
            concurrency_id=ENGINE_CONCURRENCY, concurrency_limit=2, show_progress="full", show_progress_on=[self.status],
        )
        panels = [self.status, *(s.stream for s in self.sides), *(s.metrics for s in self.sides)]
        self.stop_button.click(None, None, None, cancels=[event], api_visibility="undocumented").then(
            self.after_stop, [self.state], panels, **QUIET)


def build_compare_tab(runner: Runner, store: RunStore, examples: list[SuitePrompt], gate: RunGate,
                      demo: gr.Blocks) -> CompareTab:
    """The tab's components and events, added to the open gr.Blocks `demo` (call it inside a gr.Tab); `gate` holds
    each session to one model run at a time (shared with the Playground)."""
    explain(
        "Run two strategies on the same prompt, seed and sampling settings, live and side by side. "
        "Speedups are measured against an `ar` (plain autoregressive) run of the same request: "
        "one of the sides if it is `ar`, otherwise an extra baseline run."
    )
    with gr.Row():
        with gr.Column(scale=3, min_width=300):
            prompt = gr.Textbox(label="Prompt", lines=3, elem_id="compare-prompt", placeholder="Same prompt for both sides")
            example = build_example_picker(examples)
            with gr.Accordion("Sampling", open=False):
                sampling = build_sampling_controls("compare-")
            max_new = build_max_new_tokens("compare-max-new-tokens")
            mode = gr.Radio(
                [("concurrent: live side by side", "concurrent"), ("one after another: fairer timings", "sequential")],
                value="concurrent", label="timing", elem_id="compare-mode",
                info="Concurrent runs share the CPU, so each is slower than alone.",
            )
            with gr.Accordion("Advanced", open=False):
                target = gr.Textbox(EMBEDDED_DEFAULT, label="target model")
            document, document_file = build_document_controls("compare-")
            with gr.Row():
                run_button = gr.Button("Compare", variant="primary", elem_id="compare-run")
                stop_button = gr.Button("Stop", variant="stop", elem_id="compare-stop")
            status = gr.HTML(render.status_html("Pick two strategies and press Compare."), elem_id="compare-status",
                             js_on_load=None)
        controls = []
        for name, default in SIDES:
            with gr.Column(scale=4, min_width=300):
                tag = name.lower()
                controls.append(build_strategy_controls(f"compare-{tag}-", f"Strategy {name}", default,
                                                        StrategyKeys(name=f"{tag}_name", prefix=f"{tag}_")))
    sides = _build_side_panels(controls)
    state = gr.State(None)  # each side's result so far, for Stop (which cancels the handler) to show
    tab = CompareTab(runner, store, prompt, sampling, max_new, mode, target, document, run_button, stop_button, status,
                     sides, *_build_summary(), state)
    wire_example_picker(example, examples, prompt, max_new)
    wire_document_upload(document_file, document, status)
    for side_controls in controls:
        side_controls.show_defaults_on_load(demo)
    tab.wire(gate)
    return tab


def _build_side_panels(controls: list[StrategyControls]) -> list[CompareSide]:
    """Each side's token stream and metrics, in columns side by side."""
    gr.HTML(render.legend_html(), elem_classes=["legend-wrap"], js_on_load=None)
    sides = []
    with gr.Row(equal_height=False):
        for (name, _), side_controls in zip(SIDES, controls, strict=True):
            tag = name.lower()
            with gr.Column(min_width=320):
                stream = gr.HTML(side_stream(name, "", [], False), elem_id=f"compare-{tag}-stream",
                                 elem_classes=["token-stream"], js_on_load=None)
                metrics = gr.HTML(render.metrics_html(None), elem_id=f"compare-{tag}-metrics", js_on_load=None)
            sides.append(CompareSide(name, side_controls, stream, metrics))
    return sides


def _build_summary() -> tuple[gr.Dataframe, gr.HTML, gr.Markdown]:
    gr.Markdown("### Summary")
    lossless = gr.HTML("", elem_id="compare-lossless", js_on_load=None)
    table = gr.Dataframe(
        value=pd.DataFrame(columns=SUMMARY_COLUMNS), headers=SUMMARY_COLUMNS, interactive=False,
        elem_id="compare-summary", wrap=True, column_widths=SUMMARY_COLUMN_WIDTHS,
    )
    timing = gr.Markdown("", elem_classes=["explain"], elem_id="compare-timing-note")
    return table, lossless, timing


# -- what the panels show ------------------------------------------------------------------------------

def side_stream(side: str, label: str, events: list[StepEvent], running: bool, error: str | None = None) -> str:
    code = f" <code>{render.esc(label)}</code>" if label else ""
    head = f'<div class="side-head"><span class="side-tag">{render.esc(side)}</span>{code}</div>'
    err = render.status_html(error, "error") if error else ""
    return head + err + render.token_stream_html(events, None, running=running,
                                                 placeholder=f"Strategy {side}'s output appears here.")


def summary_frame(results: dict[str, SideResult], baseline: str) -> pd.DataFrame:
    """One row per side, in the race's order, with its speedup against the baseline side's tokens/s."""
    base = results[baseline].metrics if baseline in results else None
    base_tps = base.tokens_per_s if base is not None else None
    rows = []
    for side, r in results.items():
        m = r.metrics
        tps = m.tokens_per_s if m else None
        if side == baseline:
            speedup = "1.00× (baseline)"
        elif tps and base_tps:
            speedup = f"{tps / base_tps:.2f}×"
        else:
            speedup = "—"
        rows.append({
            "side": side if side != BASELINE else "baseline (extra ar run)",
            "strategy": r.label,
            "status": r.status + (f": {r.error}" if r.error else ""),
            "speedup vs ar": speedup,
            "mean acceptance length": None if not m or m.mean_acceptance_length is None else round(m.mean_acceptance_length, 2),
            "acceptance rate": "—" if not m or m.acceptance_rate is None else f"{m.acceptance_rate:.0%}",
            "tokens/s": None if tps is None else round(tps, 1),
            "target forward passes": m.target_forwards if m else None,
            "new tokens": m.new_tokens if m else None,
            "wall s": None if not m else round(m.wall_s, 2),
            "run id": r.run_id,
        })
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def lossless_html(sampling: SamplingConfig, results: dict[str, SideResult], baseline: str, others: list[str]) -> str:
    """Under greedy decoding every lossless strategy must reproduce the baseline's text exactly."""
    if not sampling.greedy:
        return render.status_html(
            "Lossless check: only under greedy decoding (temperature 0). With sampling, lossless strategies match "
            "the baseline's distribution, not its exact sample.", "info")
    base = results.get(baseline)
    lines = []
    for side in others:
        r = results[side]
        if r.status != "finished" or base is None or base.status != "finished":
            lines.append(f"{side}: not checked (a run did not finish)")
            continue
        a, b = r.token_ids, base.token_ids
        if a == b:
            lines.append(f"{side}: lossless check: identical to baseline ✓")
        else:
            first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            lines.append(f"{side}: lossless check: DIFFERENT from the baseline (first difference at output token {first})")
    ok = all("identical" in line for line in lines)
    return render.status_html(" · ".join(lines) or "Lossless check: nothing to compare.", "ok" if ok else "error")


def timing_note(mode: str, sides: list[str], baseline: str) -> str:
    """How the speedups were measured: against which run, and whether the runs shared the CPU."""
    extra = baseline == BASELINE
    base = ("an extra `ar` baseline run of the same prompt, seed and settings" if extra else "the `ar` side")
    names = [s for s in sides if s != BASELINE] + (["the extra baseline"] if extra else [])
    if mode == "concurrent":
        how = (", ".join(names[:-1]) + " and " + names[-1]
               + " ran **at the same time** (one thread each) on this machine's CPU cores, so each was slower than it "
               "would be alone, and a run that finishes first frees the CPU for the others: the speedups are "
               "approximate. Choose \"one after another\" for fairer timings.")
    else:
        how = "The runs ran **one after another** (" + ", then ".join(names) + "), each with the CPU to itself: the fairer timing."
    return (f"**How the speedup is measured:** tokens/s of each run ÷ tokens/s of {base}, all measured in this "
            f"session. {how} Wall times are engine time (prefill to last token), model loading excluded.")
