"""The Playground tab: one live run, streamed step by step into a RunView, stoppable.

`build_playground_tab(runner, store, examples, gate, demo)` adds the components and events inside an
open `gr.Blocks` (in a `gr.Tab`). Its Run button is the API endpoint `/run`, with the parameters
prompt, strategy, each strategy field (k, drafter, ...), temperature, top_k, top_p, seed,
max_new_tokens, target, raw, document (and device, on a machine with CUDA). A strategy field left out
(None) takes the chosen strategy's own default. Runs wait in the shared "engine" queue (the status line
shows the queue position and the expected wait) and each session holds one run at a time (`gate`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from engine import EMBEDDED_DEFAULT
from specviz.compare import prepare_in_thread
from specviz.prompts import SuitePrompt
from specviz.runner import PreparedRun, RunRequest, Runner, RunUpdate
from specviz.store import RunStore
from specviz.traces import RecordedTrace, RunSetup

from . import render
from .controls import (
    ENGINE_CONCURRENCY,
    QUIET,
    SamplingControls,
    StrategyControls,
    build_device_control,
    build_document_controls,
    build_category_picker,
    build_example_picker,
    build_max_new_tokens,
    build_sampling_controls,
    build_strategy_controls,
    error_status,
    wire_document_upload,
    wire_category_picker,
    wire_example_picker,
)
from .inputs import INPUT_ERRORS, named_handler, read_run_inputs
from .sessions import RunGate
from .whatif_panel import build_whatif_panel
from .warmup import ModelWarmup
from .panels import PLOT_EVERY_STEPS, RunView, build_inspector_panel, build_plot_panel, build_stream_panel, run_state, wait_until_closed

PLAYGROUND_STRATEGY = "hybrid_tree"  # the fastest lossless strategy measured (README)
PLOT_MIN_INTERVAL_S = 0.75
LATE_UPDATE_S = 1.0  # after a Stop, how long a cancelled run's last update may still be on its way  # and at most this often while streaming


class PlotThrottle:
    """When to redraw the plots while streaming: every few steps and seconds, and the last step. Not the first:
    the first token reaches the page sooner without three figures to draw beside it."""

    def __init__(self) -> None:
        self.steps, self.time = 0, 0.0

    def due(self, n_steps: int, done: bool) -> bool:
        now = time.perf_counter()
        if done or (n_steps - self.steps >= PLOT_EVERY_STEPS and now - self.time >= PLOT_MIN_INTERVAL_S):
            self.steps, self.time = n_steps, now
            return True
        return False


@dataclass
class PlaygroundTab:
    runner: Runner
    store: RunStore
    prompt: gr.Textbox
    strategy: StrategyControls
    sampling: SamplingControls
    max_new: gr.Slider
    target: gr.Textbox
    raw: gr.Checkbox
    document: gr.Textbox
    run_button: gr.Button
    stop_button: gr.Button
    status: gr.HTML
    view: RunView
    device: gr.Dropdown | None = None  # only on a machine with CUDA (then also the API parameter "device", last)
    badge: gr.HTML | None = None  # the live model's loading progress (see wire_page_load)

    def named_inputs(self) -> dict[str, Any]:
        """The Run button's inputs under their API names, in the API's order."""
        return {"prompt": self.prompt, **self.strategy.named_inputs(), **self.sampling.named_inputs(),
                "max_new_tokens": self.max_new, "target": self.target, "raw": self.raw, "document": self.document,
                **({"device": self.device} if self.device is not None else {})}

    def run_playground(self, values: dict[str, Any]) -> Iterator[dict]:
        """The `/run` handler: validate, load (showing progress), then stream the run into the view."""
        try:
            inputs = read_run_inputs(values, [self.strategy.keys])
        except INPUT_ERRORS as exc:
            yield {self.status: error_status(exc)}
            return
        (strategy,) = inputs.strategies
        request = RunRequest(prompt=inputs.prompt, strategy=strategy, sampling=inputs.sampling,
                             max_new_tokens=inputs.max_new_tokens, target=inputs.target, raw=bool(values["raw"]),
                             source="ui", document=inputs.document, device=values.get("device") or "cpu")
        label = strategy.label()
        yield {
            self.status: render.status_html("Loading model… (the first load takes ~30 s; later runs reuse it)", "running"),
            **self.view.render(run_state([], inputs.prompt, label, None, True), running=True),
        }
        try:
            prepared = yield from prepare_in_thread(
                self.runner, request, lambda m: {self.status: render.status_html(f"Loading model… {m}", "running")})
        except Exception as exc:
            yield {self.status: error_status(exc), **self.view.render(None, plot=True)}
            return
        yield {self.status: render.status_html(f"Running {label}…", "running")}
        yield from self._stream(prepared, label)

    def _stream(self, prepared: PreparedRun, label: str) -> Iterator[dict]:
        request = prepared.request
        prompt = request.prompt
        setup = RunSetup.of(prompt, request.strategy, request.sampling, request.max_new_tokens, request.target,
                            request.raw, request.document)
        updates = self.runner.stream(prepared)
        throttle = PlotThrottle()
        update: RunUpdate | None = None
        try:
            for update in updates:
                state = run_state(update.events, prompt, label, update.run_id, not update.done, setup)
                if update.done:  # the finished run opens on its most informative step
                    out = self.view.settle(state)
                else:
                    out = self.view.render(state, running=True, plot=throttle.due(len(update.events), update.done))
                if update.done:
                    m = update.metrics
                    out[self.status] = render.status_html(
                        f"Finished run #{update.run_id}: {m.new_tokens} tokens in {m.steps} steps "
                        f"({update.event.stop_reason}).", "ok")
                yield out
        except Exception as exc:  # SpecVizError: the person's message; anything else: logged, summarised
            events = update.events if update else []
            yield {self.status: error_status(exc), **self.view.render(run_state(events, prompt, label, None, False, setup))}
        finally:
            updates.close()  # a Stop (generator closed) marks the run "stopped" in the log

    def after_stop(self, state: dict | None) -> Iterator[dict]:
        if not state or not state.get("running"):  # nothing streamed yet (or already finished)
            yield {self.status: render.status_html("Stopped.", "info")}
            return
        # Cancelling races with the run's next update: wait until the run is closed in the log, then show every
        # logged step; and once more a moment later, over any update the cancelled run had already sent on its way
        # (on a busy machine one can arrive after this one).
        run_id = state.get("run_id")
        if run_id is not None and wait_until_closed(self.store, [run_id]):
            state = {**state, "events": self.store.load_events(run_id)}
        state = {**state, "running": False}
        stopped = render.status_html("Stopped. The partial run is logged with status \"stopped\".", "info")
        yield {self.status: stopped, **self.view.render(state)}
        time.sleep(LATE_UPDATE_S)
        yield {self.status: stopped, **self.view.render(state, plot=False)}

    @staticmethod
    def showcase_state(trace: RecordedTrace, shown: int | None = None) -> dict:
        """A RunView state for the recorded run (its first `shown` steps; None: all)."""
        setup, where = trace.setup, trace.recorded
        return {**run_state(trace.events, setup.prompt, setup.label(), None, False, setup), "shown": shown,
                "note": f"Recorded run, replayed: measured on {where.get('cpu', '?')}, {where.get('date', '?')}"}

    def open_showcase(self, trace: RecordedTrace | None, speed: float, request: gr.Request) -> dict:
        """The page's first seconds: the recorded showcase run unfolding step by step, its prompt in the box."""
        if trace is None:
            return {}
        setup, where = trace.setup, trace.recorded
        state = self.showcase_state(trace)
        message = (f"Playing a recorded run: {trace.title} (recorded {where.get('date', '?')} on {where.get('cpu', '?')}). "
                   "Press Run to run this prompt live; ← → step, space pauses.")
        return {self.prompt: setup.prompt, self.status: render.status_html(message, "info"),
                **self.view.start_playback(state, speed, 0, request)}

    def wire_page_load(self, demo: gr.Blocks, showcase: RecordedTrace | None, warmup: ModelWarmup) -> None:
        """On page load: play the showcase at once, and load the live model in the background, its progress in
        the badge (polled each second until it is ready or failed)."""
        poll = gr.Timer(1.0, active=False)

        def on_load(speed, request: gr.Request):
            warmup.start()
            return {**self.open_showcase(showcase, speed, request), self.badge: warmup.badge_html(),
                    poll: gr.Timer(active=warmup.state == "loading")}

        def on_poll():
            return {self.badge: warmup.badge_html(), poll: gr.Timer(active=warmup.state == "loading")}

        outputs = [self.prompt, self.status, self.badge, poll] + self.view.outputs() + [self.view.timer, self.view.play]
        demo.load(on_load, [self.view.speed], outputs, **QUIET)
        poll.tick(on_poll, None, [self.badge, poll], **QUIET)

    def wire(self, gate: RunGate) -> None:
        inputs = self.named_inputs()
        outputs = [self.status] + self.view.outputs()
        handler = gate.guard(named_handler(self.run_playground, list(inputs), required=["prompt"]),
                             lambda exc: {self.status: error_status(exc)})
        # Gradio's progress tracker on the status line only: the queue position and expected wait while the run
        # waits for the engine, then a thin bar while it streams (the panels stay uncovered).
        run_event = self.run_button.click(
            handler, list(inputs.values()), outputs, api_name="run",
            concurrency_id=ENGINE_CONCURRENCY, concurrency_limit=2, show_progress="full", show_progress_on=[self.status],
        )
        # Cancel first, then render: the page runs a click's listeners one after another, and after_stop waits for
        # the cancelled run to be closed in the log.
        self.stop_button.click(None, None, None, cancels=[run_event], api_visibility="undocumented").then(
            self.after_stop, [self.view.state], outputs, **QUIET)


def build_playground_tab(runner: Runner, store: RunStore, examples: list[SuitePrompt], gate: RunGate,
                         demo: gr.Blocks, showcase: RecordedTrace | None = None,
                         warmup: ModelWarmup | None = None) -> PlaygroundTab:
    """The tab's components and events, added to the open gr.Blocks `demo` (call it inside a gr.Tab); `gate`
    holds each session to one model run at a time (shared with the Compare tab). `showcase`: a recorded run the
    page plays on load; `warmup`: loads the live model in the background from the first page load."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=320, elem_classes=["controls"]):
            badge = gr.HTML(None, elem_id="model-badge", visible=warmup is not None, js_on_load=None)
            # empty, so that the API's prompt stays required; the page load puts the showcase's prompt in it
            prompt = gr.Textbox(label="Prompt", lines=4, max_lines=12, elem_id="prompt",
                                placeholder="Ask the model something, or pick an example below")
            category = build_category_picker(examples, elem_id="example-category")
            example = build_example_picker(examples, elem_id="example")
            strategy = build_strategy_controls("", "Strategy", PLAYGROUND_STRATEGY)
            with gr.Accordion("Sampling", open=True):
                sampling = build_sampling_controls("")
            max_new = build_max_new_tokens("max-new-tokens")
            with gr.Accordion("Advanced", open=False):
                target = gr.Textbox(EMBEDDED_DEFAULT, label="target model", elem_id="target",
                                    info="the embedded default, a local folder, or a Hugging Face id")
                device = build_device_control("device")
                raw = gr.Checkbox(False, label="raw prompt (no chat template)")
            document, document_file = build_document_controls("")
            with gr.Row():
                run_button = gr.Button("Run", variant="primary", elem_id="run")
                stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
            status = gr.HTML(render.status_html("Ready. Type a prompt and press Run."), elem_id="status", js_on_load=None)
        with gr.Column(scale=7, min_width=420):
            stream_panel = build_stream_panel("")
            inspector_panel = build_inspector_panel("")
            whatif = build_whatif_panel("", runner, gate)
    view = RunView.assemble(stream_panel, inspector_panel, build_plot_panel(""))
    whatif.wire(view, ("what_if_k", "fork"))
    wire_example_picker(example, examples, prompt, max_new)
    wire_category_picker(category, examples, example)
    wire_document_upload(document_file, document, status)
    tab = PlaygroundTab(runner, store, prompt, strategy, sampling, max_new, target, raw, document, run_button,
                        stop_button, status, view, device, badge)
    if showcase is not None:  # the first paint already shows the showcase's first step; the page load plays it
        tab.view.show_initially(tab.showcase_state(showcase, shown=1), 0)
    if warmup is not None:
        tab.wire_page_load(demo, showcase, warmup)
    strategy.show_defaults_on_load(demo)
    tab.wire(gate)
    return tab
