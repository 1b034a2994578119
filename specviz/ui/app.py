"""The Gradio 6 explorer: Playground, Compare and History tabs over the real engine.

`build_app(models, store)` returns the `gr.Blocks` (queue configured); `launch_app(demo, ...)`
launches it with the project's theme and CSS (in Gradio 6 those go to `launch()`).

Every handler validates its inputs first (strategy, sampling, max_new_tokens, prompt) and shows
`SpecVizError` messages in the page (status line + toast), never a traceback. Model and prompt
text reach the page only through `specviz.ui.render`, which escapes it.
"""

from __future__ import annotations

import inspect
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from engine import (
    EMBEDDED_DEFAULT,
    ModelCache,
    RunMetrics,
    SamplingConfig,
    SpecVizError,
    StepEvent,
    StrategyConfig,
    check_max_new_tokens,
    describe_strategies,
    parse_strategy,
)
from engine.errors import ConfigError, PromptError
from specviz.figures import acceptance_figure, draft_length_figure, draft_tree_figure, lattice_figure, phase_figure
from specviz.prompts import SuitePrompt, load_prompt_suite
from specviz.runner import MAX_DOCUMENT_BYTES, PreparedRun, RunRequest, Runner, RunUpdate, new_group_id, read_document_file
from specviz.store import RunStore

from . import render
from .multi_draft_tab import build_multi_draft_tab

log = logging.getLogger("specviz.ui")

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "assets"
CSS_FILE = ASSETS / "style.css"

ENGINE_CONCURRENCY = "engine"  # heavy handlers (model runs) share this concurrency group
MAX_NEW_TOKENS_UI = 1024
DEFAULT_MAX_NEW_TOKENS = 64
PLOT_EVERY_STEPS = 4  # Gradio re-sends figures whole: refresh the plot every few steps while streaming
PLOT_MIN_INTERVAL_S = 0.75

STRATEGY_INFO = {s["name"]: s for s in describe_strategies()}
STRATEGY_NAMES = list(STRATEGY_INFO)
STRATEGY_DEFAULT_LABEL = {name: parse_strategy(name).label() for name in STRATEGY_NAMES}
# Every parameter of every strategy, in first-seen order: the explorer builds one field for each and shows
# the fields of the chosen strategy.
PARAM_INFO: dict[str, dict[str, Any]] = {}
for _info in STRATEGY_INFO.values():
    for _field, _meta in _info["parameters"].items():
        PARAM_INFO.setdefault(_field, _meta)
PARAM_FIELDS = tuple(PARAM_INFO)
# A choice field shared by strategies offers every strategy's choices (length_policy: only diffusion has adl), so
# Gradio's own check passes any strategy's value (API calls included); picking a strategy narrows the list to its
# own, and parse_strategy refuses a choice its strategy lacks.
PARAM_CHOICES: dict[str, list] = {}
for _info in STRATEGY_INFO.values():
    for _field, _meta in _info["parameters"].items():
        for _choice in _meta.get("choices") or ():
            if _choice not in PARAM_CHOICES.setdefault(_field, []):
                PARAM_CHOICES[_field].append(_choice)


# -- helpers shared by handlers --------------------------------------------------------------------

def load_example_prompts() -> list[SuitePrompt]:
    """The project's prompt suite; [] when the file is absent or unreadable (examples are then hidden)."""
    try:
        return load_prompt_suite()
    except (OSError, ValueError, TypeError):
        return []


def _example_choices(examples: list[SuitePrompt]) -> list[tuple[str, str]]:
    return [(f"{row.category} · {render.excerpt(row.prompt, 70)}", row.id) for row in examples]


def _as_int(name: str, value: Any) -> Any:
    """Gradio numbers arrive as int, float or None; hand parse_strategy ints (or the raw value to reject)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ConfigError(name, "is empty; enter a value")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def strategy_from_inputs(name: str, values: dict[str, Any]) -> StrategyConfig:
    """Validated strategy config from the dropdown and the per-strategy fields (only its own fields)."""
    if name not in STRATEGY_INFO:
        raise ConfigError("strategy", f"unknown strategy {name!r}; choose one of {', '.join(STRATEGY_NAMES)}")
    params: dict[str, Any] = {}
    for field, meta in STRATEGY_INFO[name]["parameters"].items():
        if field not in values:
            continue
        value = values[field]
        if meta["type"] == "int":
            value = _as_int(field, value)
        elif value is None or not str(value).strip():
            raise ConfigError(field, "is empty; enter a value")
        params[field] = value
    return parse_strategy(name, params)


def sampling_from_inputs(temperature: Any, top_k: Any, top_p: Any, seed: Any) -> SamplingConfig:
    if temperature is None:
        raise ConfigError("temperature", "is empty; enter a value")
    if top_p is None:
        raise ConfigError("top_p", "is empty; enter a value")
    return SamplingConfig(
        temperature=float(temperature), top_k=_as_int("top_k", top_k), top_p=float(top_p), seed=_as_int("seed", seed)
    )


def max_tokens_from_input(value: Any) -> int:
    return check_max_new_tokens(_as_int("max_new_tokens", value))


def check_prompt_text(prompt: Any) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError("the prompt is empty: type something (or pick an example) first")
    return prompt


def _error_message(exc: BaseException) -> str:
    if isinstance(exc, SpecVizError):
        return str(exc)
    log.exception("unexpected error in a UI handler", exc_info=exc)
    return f"internal error ({type(exc).__name__}): {exc}".strip()


def _toast(message: str) -> None:
    gr.Warning(render.esc(message))  # toasts render HTML: escape what the person or the model typed


_DONE = object()


def _prepare_in_thread(runner: Runner, request: RunRequest) -> Iterator[str]:
    """Runner.prepare in a worker thread; yields its progress messages, returns the PreparedRun."""
    messages: queue.Queue = queue.Queue()
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["prepared"] = runner.prepare(request, progress=lambda m: messages.put(str(m)))
        except BaseException as exc:  # re-raised in the handler thread
            box["error"] = exc
        finally:
            messages.put(_DONE)

    threading.Thread(target=work, name="specviz-prepare", daemon=True).start()
    while True:
        msg = messages.get()
        if msg is _DONE:
            break
        yield msg
    if "error" in box:
        raise box["error"]
    return box["prepared"]


def wait_until_closed(store: RunStore, run_ids: list[int | None], timeout_s: float = 15.0) -> bool:
    """Wait until these runs are no longer "running" in the log (their streams were closed); True if they are."""
    pending = {r for r in run_ids if r is not None}
    deadline = time.monotonic() + timeout_s
    while pending:
        pending = {r for r in pending if (store.get_run(r) or {}).get("status") == "running"}
        if not pending:
            break
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _run_state(events: list[StepEvent], prompt: str, label: str, run_id: int | None, running: bool) -> dict:
    return {"events": list(events), "prompt": prompt, "label": label, "run_id": run_id, "running": running}


def _slider_update(n_events: int, value: int | None = None) -> dict:
    top = max(1, n_events - 1)
    value = max(0, n_events - 1) if value is None else max(0, min(value, n_events - 1))
    return gr.update(minimum=0, maximum=top, value=value, step=1, interactive=n_events > 0)


def _step_figure_update(events: list[StepEvent], focus: int | None, draw: Callable[[StepEvent], Any]) -> dict:
    """`draw`'s figure of the focused step (the latest by default); hidden where it draws nothing (None)."""
    if not events:
        return gr.update(visible=False)
    index = len(events) - 1 if focus is None else max(0, min(int(focus), len(events) - 1))
    figure = draw(events[index])
    return gr.update(value=figure, visible=True) if figure is not None else gr.update(visible=False)


def _tree_update(events: list[StepEvent], focus: int | None) -> dict:
    """The draft tree of the focused step; hidden for steps without a tree (chains)."""
    return _step_figure_update(events, focus, draft_tree_figure)


def _lattice_update(events: list[StepEvent], focus: int | None) -> dict:
    """The token lattice of the focused step; hidden for steps without one (all but diffusion drafting)."""
    return _step_figure_update(events, focus, lattice_figure)


# -- a run view: token stream, metrics, inspector, plot ------------------------------------------

@dataclass
class RunView:
    """The panels that show one run; the Playground streams into one, History replays into another."""

    stream: gr.HTML
    metrics: gr.HTML
    slider: gr.Slider
    prev: gr.Button
    next: gr.Button
    inspector: gr.HTML
    tree_plot: gr.Plot
    lattice_plot: gr.Plot
    plot: gr.Plot
    length_plot: gr.Plot
    phase_plot: gr.Plot
    state: gr.State

    def render(self, state: dict | None, focus: int | None = None, *, running: bool = False, plot: bool = True,
               note: str | None = None) -> dict:
        """Output dict for all panels from a run state (events, prompt, ...)."""
        events = (state or {}).get("events") or []
        prompt = (state or {}).get("prompt")
        label = (state or {}).get("label")
        metrics = RunMetrics.from_events(events) if events else None
        out = {
            self.state: state,
            self.stream: render.token_stream_html(events, prompt, focus_step=focus, running=running),
            self.metrics: render.metrics_html(metrics, running=running, note=note),
            self.slider: _slider_update(len(events), focus),
            self.inspector: render.step_inspector_html(events, focus),
            self.tree_plot: _tree_update(events, focus),
            self.lattice_plot: _lattice_update(events, focus),
        }
        if plot:
            out[self.plot] = acceptance_figure(
                events, title=label,
                empty_message="Waiting for the first step…" if running else "Run a prompt to see the acceptance history",
            )
            out[self.length_plot] = draft_length_figure(
                events, empty_message="Waiting for the first step…" if running else "Run a prompt to see the draft lengths"
            )
            out[self.phase_plot] = phase_figure(
                events, empty_message="Waiting for the first step…" if running else "Run a prompt to see who worked when"
            )
        return out

    def outputs(self) -> list:
        return [self.state, self.stream, self.metrics, self.slider, self.inspector, self.tree_plot, self.lattice_plot,
                self.plot, self.length_plot, self.phase_plot]

    def wire_navigation(self) -> None:
        """Slider and Previous / Next: pick a step (works during and after a run; no model involved)."""

        def show(step, state):
            events = (state or {}).get("events") or []
            i = int(step or 0)
            return (
                render.step_inspector_html(events, i),
                render.token_stream_html(events, (state or {}).get("prompt"), focus_step=i,
                                         running=bool((state or {}).get("running"))),
                _tree_update(events, i),
                _lattice_update(events, i),
            )

        def move(delta, step, state):
            events = (state or {}).get("events") or []
            i = max(0, min(int(step or 0) + delta, len(events) - 1)) if events else 0
            return _slider_update(len(events), i), *show(i, state)

        step_panels = [self.inspector, self.stream, self.tree_plot, self.lattice_plot]
        self.slider.input(show, [self.slider, self.state], step_panels, trigger_mode="always_last",
                          concurrency_limit=None, api_visibility="undocumented", show_progress="hidden")
        self.prev.click(lambda s, st: move(-1, s, st), [self.slider, self.state], [self.slider, *step_panels],
                        concurrency_limit=None, api_visibility="undocumented", show_progress="hidden")
        self.next.click(lambda s, st: move(1, s, st), [self.slider, self.state], [self.slider, *step_panels],
                        concurrency_limit=None, api_visibility="undocumented", show_progress="hidden")


def named_handler(fn: Callable[..., Iterator], names: list[str]) -> Callable[..., Iterator]:
    """`fn(*values)` as a streaming handler whose API parameters carry these names.

    The strategy fields are built from the strategy registry, so the handlers take them as *values; Gradio
    names API parameters from the signature, which this sets explicitly.
    """

    def handler(*values):
        yield from fn(*values)

    handler.__signature__ = inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in names]
    )
    handler.__name__ = fn.__name__
    return handler


def _explain(text: str) -> gr.Markdown:
    return gr.Markdown(text, elem_classes=["explain"])


def build_stream_panel(prefix: str) -> tuple[gr.HTML, gr.HTML]:
    gr.HTML(render.legend_html(), elem_classes=["legend-wrap"])
    stream = gr.HTML(render.token_stream_html([]), elem_id=f"{prefix}token-stream", elem_classes=["token-stream"],
                     js_on_load=None)
    _explain(
        "Each output token is coloured by how it was born; hover one for its probabilities. Blue tokens were "
        "drafted cheaply and kept; each step the target adds one token of its own (green bonus after a fully "
        "accepted draft, vermillion recovered at a rejection). Struck-through tokens after the outlined step "
        "were drafted but rejected there."
    )
    metrics = gr.HTML(render.metrics_html(None), elem_id=f"{prefix}metrics", js_on_load=None)
    _explain(
        "**Mean acceptance length** = tokens produced per target forward pass (1 + accepted ÷ steps): 1.0 means no "
        "gain, 3.0 means each expensive target pass yielded three tokens. Whether that also saves time depends on "
        "what the drafter costs."
    )
    return stream, metrics


def build_inspector_panel(prefix: str) -> tuple[gr.Slider, gr.Button, gr.Button, gr.HTML, gr.Plot, gr.Plot]:
    gr.Markdown("### Step inspector")
    _explain(
        "One step = draft up to K tokens, then check them all in **one** target forward pass. Each drafted token "
        "is kept when a uniform draw u ≤ min(1, p/q) (p: target probability, q: drafter probability); the first "
        "refusal ends the check and the target supplies its own token there. Tree strategies draw the step's draft "
        "tree; diffusion strategies its token lattice (each position's candidates, coloured by the drafter's "
        "probability, and the path through them that the target checked)."
    )
    slider = gr.Slider(0, 1, value=0, step=1, label="Step", elem_id=f"{prefix}step-slider", interactive=False)
    with gr.Row():
        prev = gr.Button("◀ Previous", size="sm", elem_id=f"{prefix}step-prev")
        nxt = gr.Button("Next ▶", size="sm", elem_id=f"{prefix}step-next")
    # Tree strategies only: shown above the proposal table, which lists a tree's nodes one per row
    tree_plot = gr.Plot(None, visible=False, elem_id=f"{prefix}draft-tree-plot", show_label=False)
    # Diffusion strategies only, in the same place (a step has a tree or a lattice, never both)
    lattice_plot = gr.Plot(None, visible=False, elem_id=f"{prefix}lattice-plot", show_label=False)
    inspector = gr.HTML(render.step_inspector_html([]), elem_id=f"{prefix}step-inspector", js_on_load=None)
    return slider, prev, nxt, inspector, tree_plot, lattice_plot


def build_plot_panel(prefix: str) -> tuple[gr.Plot, gr.Plot, gr.Plot]:
    gr.Markdown("### Acceptance history")
    _explain(
        "Top: tokens produced at each step (blue = accepted drafts, stacked with the target's own token) and a "
        "rolling mean. Bottom left: how often each draft position survives (position i needs 0..i-1 accepted "
        "first). Bottom right: how many steps produced 1, 2, 3… tokens."
    )
    plot = gr.Plot(acceptance_figure([]), elem_id=f"{prefix}acceptance-plot", show_label=False)
    gr.Markdown("### Draft length")
    _explain(
        "The length the policy chose at each step (line; hover for its reason), what was drafted (grey) and accepted "
        "(blue), and the policy's own signal on the right axis (the confidence threshold, the predicted chance of a "
        "rejection, the moving average of accepted lengths). Orange diamonds: the oracle, the length that would have "
        "given the most tokens per second in hindsight, priced with this run's measured drafter and verification "
        "costs (analysis only: no policy can know it in advance)."
    )
    length_plot = gr.Plot(draft_length_figure([]), elem_id=f"{prefix}draft-length-plot", show_label=False)
    gr.Markdown("### Phase timeline")
    _explain(
        "Who worked when, on the engine's clock: orange = drafting, blue = the target verifying, gaps = waiting. "
        "Plain speculation alternates, so each worker waits while the other works; PEARL lets the drafter draft "
        "the next block while the target verifies this one."
    )
    phase_plot = gr.Plot(phase_figure([]), elem_id=f"{prefix}phase-plot", show_label=False)
    return plot, length_plot, phase_plot


# -- strategy controls ---------------------------------------------------------------------------

@dataclass
class StrategyControls:
    strategy: gr.Dropdown
    about: gr.Markdown
    fields: dict[str, gr.components.Component]

    def inputs(self) -> list:
        return [self.strategy] + [self.fields[f] for f in PARAM_FIELDS]

    def values(self, strategy: str, *field_values: Any) -> StrategyConfig:
        return strategy_from_inputs(strategy, dict(zip(PARAM_FIELDS, field_values)))


def _about(name: str) -> str:
    info = STRATEGY_INFO.get(name)
    if info is None:
        return ""
    tag = "lossless" if info["lossless"] else "lossy"
    return f"**{name}** ({tag}): {info['description']}"


def _field_updates(name: str) -> list:
    """Show the strategy's own fields with its defaults, help and choices (strategies share fields); hide the rest."""
    params = STRATEGY_INFO.get(name, {}).get("parameters", {})
    updates = []
    for field in PARAM_FIELDS:
        meta = params.get(field)
        if meta is None:
            updates.append(gr.update(visible=False))
            continue
        choices = {"choices": list(meta["choices"])} if meta.get("choices") else {}
        updates.append(gr.update(visible=True, value=meta["default"], info=meta.get("help"), **choices))
    return updates


def _param_field(prefix: str, field: str, meta: dict[str, Any], visible: bool) -> gr.components.Component:
    """One input for a strategy parameter, typed from its config: numbers, choices or free text."""
    common = dict(label=field, info=meta.get("help"), visible=visible, elem_id=f"{prefix}param-{field.replace('_', '-')}")
    if meta["type"] == "int":
        return gr.Number(meta["default"], precision=0, min_width=110, **common)
    if meta["type"] == "float":
        return gr.Number(meta["default"], min_width=110, **common)
    if meta.get("choices"):
        return gr.Dropdown(PARAM_CHOICES[field], value=meta["default"], min_width=150, **common)
    return gr.Textbox(str(meta["default"]), min_width=180, **common)


def build_strategy_controls(prefix: str, label: str, default: str) -> StrategyControls:
    params = STRATEGY_INFO[default]["parameters"]
    strategy = gr.Dropdown(
        choices=[(f"{n}{'' if STRATEGY_INFO[n]['lossless'] else ' (lossy)'}", n) for n in STRATEGY_NAMES],
        value=default, label=label, elem_id=f"{prefix}strategy",
    )
    about = gr.Markdown(_about(default), elem_classes=["explain", "strategy-about"])
    with gr.Row(elem_classes=["param-row"]):
        fields = {
            field: _param_field(prefix, field, params.get(field, meta), field in params)
            for field, meta in PARAM_INFO.items()
        }
    controls = StrategyControls(strategy, about, fields)
    strategy.change(
        lambda name: [_about(name)] + _field_updates(name),
        strategy, [about] + [fields[f] for f in PARAM_FIELDS],
        api_visibility="undocumented", concurrency_limit=None, show_progress="hidden",
    )
    return controls


@dataclass
class SamplingControls:
    temperature: gr.Slider
    top_k: gr.Number
    top_p: gr.Slider
    seed: gr.Number

    def inputs(self) -> list:
        return [self.temperature, self.top_k, self.top_p, self.seed]


def build_sampling_controls(prefix: str) -> SamplingControls:
    temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="temperature",
                            info="0 = greedy (always the most likely token); above 0 samples", elem_id=f"{prefix}temperature")
    top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top_p", info="nucleus sampling; 1 = off")
    with gr.Row():
        top_k = gr.Number(0, precision=0, minimum=0, label="top_k", info="0 = off", min_width=100)
        seed = gr.Number(0, precision=0, minimum=0, label="seed", info="same seed, same sample", min_width=100)
    return SamplingControls(temperature, top_k, top_p, seed)


def build_document_controls(prefix: str) -> tuple[gr.Textbox, gr.File]:
    """The document attached to a run: pasted text, or a text file loaded into the same box."""
    with gr.Accordion("Document (for retrieval drafting)", open=False, elem_id=f"{prefix}document-accordion"):
        _explain(
            "The **rasd** strategy drafts from this text: it finds the last few tokens of the text so far in the "
            "document and proposes what follows them there, where the drafter model finds it likely enough (tau); "
            "the drafter can then add tokens of its own (drafter_tokens). **rasd_tree** merges several retrieved "
            "continuations into the drafter's tree instead. "
            f"Other strategies ignore it. Paste text or upload a UTF-8 text file of at most {MAX_DOCUMENT_BYTES // 1_000_000} MB."
        )
        document = gr.Textbox("", label="Document", lines=4, max_lines=12, elem_id=f"{prefix}document",
                              placeholder="Paste the document here, or upload a text file below")
        upload = gr.File(label="Upload a text file", file_count="single", type="filepath", height=100,
                         elem_id=f"{prefix}document-file")
    return document, upload


def load_document_file(path: str) -> tuple[Any, str]:
    """An uploaded file into the document box, or a clear message (binary, too large, unreadable)."""
    try:
        text = read_document_file(path)
    except SpecVizError as exc:
        _toast(str(exc))
        return gr.skip(), render.status_html(str(exc), "error")
    return text, render.status_html(f"Loaded the document {Path(path).name}: {len(text):,} characters.", "ok")


def document_or_none(text: Any) -> str | None:
    return text if isinstance(text, str) and text.strip() else None


# -- the app --------------------------------------------------------------------------------------

HEADER = """
<div class="sv-header">
  <div class="sv-title">SpecViz <span class="sv-sub">— watch speculative decoding think</span></div>
  <div class="sv-intro">A small drafter guesses several tokens ahead; the big target model checks all the guesses
  in one forward pass and keeps the longest prefix it agrees with. Same output distribution, fewer target
  passes. Everything below is a real engine running on this machine's CPU.</div>
</div>
"""


def build_app(models: ModelCache, store: RunStore) -> gr.Blocks:
    runner = Runner(models, store)
    examples = load_example_prompts()
    examples_by_id = {row.id: row for row in examples}

    with gr.Blocks(title="SpecViz — speculative decoding explorer", analytics_enabled=False) as demo:
        gr.HTML(HEADER, js_on_load=None)
        with gr.Tabs():
            # ---------------------------------------------------------------- Playground
            with gr.Tab("Playground", id="playground", elem_id="tab-playground"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=4, min_width=320, elem_classes=["controls"]):
                        prompt_box = gr.Textbox(label="Prompt", lines=4, max_lines=12, elem_id="prompt",
                                            placeholder="Ask the model something, or pick an example below")
                        example = gr.Dropdown(choices=_example_choices(examples), value=None, label="Example prompts",
                                              visible=bool(examples), elem_id="example")
                        controls = build_strategy_controls("", "Strategy", "prompt_lookup")
                        with gr.Accordion("Sampling", open=True):
                            sampling = build_sampling_controls("")
                        max_new = gr.Slider(1, MAX_NEW_TOKENS_UI, value=DEFAULT_MAX_NEW_TOKENS, step=1,
                                            label="max new tokens", elem_id="max-new-tokens")
                        with gr.Accordion("Advanced", open=False):
                            target_box = gr.Textbox(EMBEDDED_DEFAULT, label="target model", elem_id="target",
                                                info="the embedded default, a local folder, or a Hugging Face id")
                            raw_box = gr.Checkbox(False, label="raw prompt (no chat template)")
                        document_box, document_file = build_document_controls("")
                        with gr.Row():
                            run_btn = gr.Button("Run", variant="primary", elem_id="run")
                            stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
                        status = gr.HTML(render.status_html("Ready. Type a prompt and press Run."), elem_id="status",
                                         js_on_load=None)
                    with gr.Column(scale=7, min_width=420):
                        stream, metrics = build_stream_panel("")
                        slider, prev, nxt, inspector, tree_plot, lattice_plot = build_inspector_panel("")
                plot, length_plot, phase_plot = build_plot_panel("")
                view = RunView(stream, metrics, slider, prev, nxt, inspector, tree_plot, lattice_plot, plot, length_plot,
                               phase_plot, gr.State(None))
                view.wire_navigation()

            # ---------------------------------------------------------------- Compare
            with gr.Tab("Compare", id="compare", elem_id="tab-compare"):
                _explain(
                    "Run two strategies on the same prompt, seed and sampling settings, live and side by side. "
                    "Speedups are measured against an `ar` (plain autoregressive) run of the same request: "
                    "one of the sides if it is `ar`, otherwise an extra baseline run."
                )
                with gr.Row():
                    with gr.Column(scale=3, min_width=300):
                        c_prompt = gr.Textbox(label="Prompt", lines=3, elem_id="compare-prompt",
                                              placeholder="Same prompt for both sides")
                        c_example = gr.Dropdown(choices=_example_choices(examples), value=None, label="Example prompts",
                                                visible=bool(examples))
                        with gr.Accordion("Sampling", open=False):
                            c_sampling = build_sampling_controls("compare-")
                        c_max_new = gr.Slider(1, MAX_NEW_TOKENS_UI, value=DEFAULT_MAX_NEW_TOKENS, step=1,
                                              label="max new tokens", elem_id="compare-max-new-tokens")
                        c_mode = gr.Radio(
                            [("concurrent: live side by side", "concurrent"),
                             ("one after another: fairer timings", "sequential")],
                            value="concurrent", label="timing", elem_id="compare-mode",
                            info="Concurrent runs share the CPU, so each is slower than alone.",
                        )
                        with gr.Accordion("Advanced", open=False):
                            c_target = gr.Textbox(EMBEDDED_DEFAULT, label="target model")
                        c_document, c_document_file = build_document_controls("compare-")
                        with gr.Row():
                            c_run = gr.Button("Compare", variant="primary", elem_id="compare-run")
                            c_stop = gr.Button("Stop", variant="stop", elem_id="compare-stop")
                        c_status = gr.HTML(render.status_html("Pick two strategies and press Compare."),
                                           elem_id="compare-status", js_on_load=None)
                    with gr.Column(scale=4, min_width=300):
                        side_a = build_strategy_controls("compare-a-", "Strategy A", "ar")
                    with gr.Column(scale=4, min_width=300):
                        side_b = build_strategy_controls("compare-b-", "Strategy B", "prompt_lookup")
                gr.HTML(render.legend_html(), elem_classes=["legend-wrap"], js_on_load=None)
                with gr.Row(equal_height=False):
                    with gr.Column(min_width=320):
                        a_stream = gr.HTML(_side_stream("A", "", [], False),
                                           elem_id="compare-a-stream", elem_classes=["token-stream"], js_on_load=None)
                        a_metrics = gr.HTML(render.metrics_html(None), elem_id="compare-a-metrics", js_on_load=None)
                    with gr.Column(min_width=320):
                        b_stream = gr.HTML(_side_stream("B", "", [], False),
                                           elem_id="compare-b-stream", elem_classes=["token-stream"], js_on_load=None)
                        b_metrics = gr.HTML(render.metrics_html(None), elem_id="compare-b-metrics", js_on_load=None)
                c_state = gr.State(None)
                gr.Markdown("### Summary")
                c_lossless = gr.HTML("", elem_id="compare-lossless", js_on_load=None)
                c_table = gr.Dataframe(
                    value=pd.DataFrame(columns=SUMMARY_COLUMNS), headers=SUMMARY_COLUMNS, interactive=False,
                    elem_id="compare-summary", wrap=True, column_widths=SUMMARY_COLUMN_WIDTHS,
                )
                c_timing_note = gr.Markdown("", elem_classes=["explain"], elem_id="compare-timing-note")

            # ---------------------------------------------------------------- History
            with gr.Tab("History", id="history", elem_id="tab-history") as history_tab:
                _explain(
                    "Every run is logged step by step in SQLite. Open one to replay it in the panels below — "
                    "straight from the log, without running a model."
                )
                with gr.Row():
                    h_strategy = gr.Dropdown(["all"] + STRATEGY_NAMES, value="all", label="strategy", scale=1,
                                             min_width=140, elem_id="history-strategy")
                    h_search = gr.Textbox(label="search prompts", placeholder="text in the prompt", scale=3,
                                          elem_id="history-search")
                    h_refresh = gr.Button("Refresh", scale=0, min_width=100, elem_id="history-refresh")
                h_table = gr.Dataframe(value=pd.DataFrame(columns=HISTORY_COLUMNS), headers=HISTORY_COLUMNS,
                                       interactive=False, elem_id="history-table", max_height=320, wrap=True,
                                       column_widths=HISTORY_COLUMN_WIDTHS)
                with gr.Row(equal_height=False, elem_classes=["history-open-row"]):
                    h_run_id = gr.Number(None, precision=0, label="run id", minimum=1, scale=0, min_width=140,
                                         elem_id="history-run-id")
                    with gr.Column(scale=0, min_width=220):
                        h_open = gr.Button("Open", variant="primary", size="md", elem_id="history-open")
                        h_replay = gr.Button("▶ Replay step by step", size="md", elem_id="history-replay")
                    with gr.Column(scale=1):
                        h_status = gr.HTML(render.status_html("Click a row (or type a run id) to open a run."),
                                           elem_id="history-status", js_on_load=None)
                h_document = gr.Textbox(label="Document attached to this run", lines=3, max_lines=10, interactive=False,
                                        visible=False, elem_id="history-document")
                h_stream, h_metrics = build_stream_panel("history-")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=6, min_width=380):
                        h_slider, h_prev, h_next, h_inspector, h_tree_plot, h_lattice_plot = build_inspector_panel(
                            "history-")
                    with gr.Column(scale=5, min_width=360):
                        h_plot, h_length_plot, h_phase_plot = build_plot_panel("history-")
                h_view = RunView(h_stream, h_metrics, h_slider, h_prev, h_next, h_inspector, h_tree_plot, h_lattice_plot,
                                 h_plot, h_length_plot, h_phase_plot, gr.State(None))
                h_view.wire_navigation()

            # ---------------------------------------------------------------- Multi-draft bound
            with gr.Tab("Multi-draft bound", id="multi-draft", elem_id="tab-multi-draft"):
                build_multi_draft_tab()

        # ==================================================================== handlers
        def pick_example(example_id, current_max):
            row = examples_by_id.get(str(example_id)) if example_id is not None else None
            if row is None:
                return gr.skip(), gr.skip()
            return row.prompt, max(1, min(row.max_new_tokens, MAX_NEW_TOKENS_UI))

        example.change(pick_example, [example, max_new], [prompt_box, max_new], api_visibility="undocumented",
                       concurrency_limit=None, show_progress="hidden")
        c_example.change(pick_example, [c_example, c_max_new], [c_prompt, c_max_new], api_visibility="undocumented",
                         concurrency_limit=None, show_progress="hidden")

        document_file.upload(load_document_file, document_file, [document_box, status],
                             api_visibility="undocumented", concurrency_limit=None, show_progress="hidden")
        c_document_file.upload(load_document_file, c_document_file, [c_document, c_status],
                               api_visibility="undocumented", concurrency_limit=None, show_progress="hidden")

        # ---- Playground: one live run
        def run_playground(prompt, strategy, *values):
            params, (temperature, top_k, top_p, seed, max_new_tokens, target, raw, document) = (
                values[: len(PARAM_FIELDS)], values[len(PARAM_FIELDS):]
            )
            prompt_text, strategy_name, target_model, raw_prompt = prompt, strategy, target, raw
            try:
                check_prompt_text(prompt_text)
                strategy = controls.values(strategy_name, *params)
                sampling_cfg = sampling_from_inputs(temperature, top_k, top_p, seed)
                max_tokens = max_tokens_from_input(max_new_tokens)
            except (SpecVizError, ValueError, TypeError) as exc:
                message = _error_message(exc)
                _toast(message)
                yield {status: render.status_html(message, "error")}
                return
            request = RunRequest(
                prompt=prompt_text, strategy=strategy, sampling=sampling_cfg, max_new_tokens=max_tokens,
                target=(target_model or EMBEDDED_DEFAULT).strip() or EMBEDDED_DEFAULT, raw=bool(raw_prompt), source="ui",
                document=document_or_none(document),
            )
            label = strategy.label()
            yield {
                status: render.status_html("Loading model… (the first load takes ~30 s; later runs reuse it)", "running"),
                **view.render(_run_state([], prompt_text, label, None, True), running=True),
            }
            prep = _prepare_in_thread(runner, request)
            try:
                while True:
                    yield {status: render.status_html(f"Loading model… {next(prep)}", "running")}
            except StopIteration as stop:
                prepared: PreparedRun = stop.value
            except Exception as exc:
                message = _error_message(exc)
                _toast(message)
                yield {status: render.status_html(message, "error"), **view.render(None, plot=True)}
                return
            yield {status: render.status_html(f"Running {label}…", "running")}
            updates = runner.stream(prepared)
            last_plot_steps, last_plot_time = 0, 0.0
            update: RunUpdate | None = None
            try:
                for update in updates:
                    n = len(update.events)
                    now = time.perf_counter()
                    plot_now = update.done or n == 1 or (
                        n - last_plot_steps >= PLOT_EVERY_STEPS and now - last_plot_time >= PLOT_MIN_INTERVAL_S
                    )
                    state = _run_state(update.events, prompt_text, label, update.run_id, not update.done)
                    out = view.render(state, running=not update.done, plot=plot_now)
                    if plot_now:
                        last_plot_steps, last_plot_time = n, now
                    if update.done:
                        m = update.metrics
                        out[status] = render.status_html(
                            f"Finished run #{update.run_id}: {m.new_tokens} tokens in {m.steps} steps "
                            f"({update.event.stop_reason}).", "ok")
                    yield out
            except Exception as exc:  # SpecVizError: the person's message; anything else: logged, summarised
                message = _error_message(exc)
                _toast(message)
                events = update.events if update else []
                yield {status: render.status_html(message, "error"),
                       **view.render(_run_state(events, prompt_text, label, None, False))}
            finally:
                updates.close()  # a Stop (generator closed) marks the run "stopped" in the log

        run_inputs = [prompt_box] + controls.inputs() + sampling.inputs() + [max_new, target_box, raw_box, document_box]
        run_outputs = [status] + view.outputs()
        run_event = run_btn.click(
            named_handler(run_playground, ["prompt", "strategy", *PARAM_FIELDS, "temperature", "top_k", "top_p", "seed",
                                           "max_new_tokens", "target", "raw", "document"]),
            run_inputs, run_outputs, api_name="run", concurrency_id=ENGINE_CONCURRENCY,
            concurrency_limit=2, show_progress="hidden",
        )

        def after_stop(state):
            if not state or not state.get("running"):  # nothing streamed yet (or already finished)
                return {status: render.status_html("Stopped.", "info")}
            # Cancelling races with the run's next update: wait until the run is closed in the log, after which
            # no late update can overwrite this one, then show every logged step.
            run_id = state.get("run_id")
            if run_id is not None and wait_until_closed(store, [run_id]):
                state = {**state, "events": store.load_events(run_id)}
            state = {**state, "running": False}
            return {status: render.status_html("Stopped. The partial run is logged with status \"stopped\".", "info"),
                    **view.render(state)}

        # Cancel first, then render: the page runs a click's listeners one after another, and after_stop waits for
        # the cancelled run to be closed in the log.
        stop_btn.click(None, None, None, cancels=[run_event], api_visibility="undocumented").then(
            after_stop, [view.state], run_outputs, api_visibility="undocumented", concurrency_limit=None,
            show_progress="hidden",
        )

        # ---- Compare: two live runs in two threads (+ the ar baseline when neither side is ar)
        def run_compare(prompt, *values):
            n = len(PARAM_FIELDS)
            a_name, a_params, b_name, b_params = values[0], values[1 : 1 + n], values[1 + n], values[2 + n : 2 + 2 * n]
            temperature, top_k, top_p, seed, max_new_tokens, mode, target, document = values[2 + 2 * n:]
            prompt_text, target_model = prompt, target
            try:
                check_prompt_text(prompt_text)
                strat_a = side_a.values(a_name, *a_params)
                strat_b = side_b.values(b_name, *b_params)
                sampling_cfg = sampling_from_inputs(temperature, top_k, top_p, seed)
                max_tokens = max_tokens_from_input(max_new_tokens)
            except (SpecVizError, ValueError, TypeError) as exc:
                message = _error_message(exc)
                _toast(message)
                yield {c_status: render.status_html(message, "error")}
                return
            yield from compare_runs(prompt_text, strat_a, strat_b, sampling_cfg, max_tokens,
                                    "sequential" if mode == "sequential" else "concurrent",
                                    (target_model or EMBEDDED_DEFAULT).strip() or EMBEDDED_DEFAULT, document_or_none(document))

        def compare_runs(prompt_text, strat_a, strat_b, sampling_cfg, max_tokens, mode, target_model, document):
            group = new_group_id()
            jobs: list[tuple[str, StrategyConfig]] = [("A", strat_a), ("B", strat_b)]
            if strat_a.name != "ar" and strat_b.name != "ar":
                jobs.append(("baseline", parse_strategy("ar")))
            baseline_side = "A" if strat_a.name == "ar" else ("B" if strat_b.name == "ar" else "baseline")
            panels = {"A": (a_stream, a_metrics), "B": (b_stream, b_metrics)}
            labels = {side: s.label() for side, s in jobs}
            yield {
                c_status: render.status_html("Loading model… (the first load takes ~30 s)", "running"),
                a_stream: _side_stream("A", labels["A"], [], running=True),
                b_stream: _side_stream("B", labels["B"], [], running=True),
                a_metrics: render.metrics_html(None), b_metrics: render.metrics_html(None),
                c_table: pd.DataFrame(columns=SUMMARY_COLUMNS), c_lossless: "", c_timing_note: "",
            }
            prepared: dict[str, PreparedRun] = {}
            try:
                for side, strat in jobs:  # prepare one at a time: model loads and tokenizers stay single-threaded
                    request = RunRequest(prompt=prompt_text, strategy=strat, sampling=sampling_cfg,
                                         max_new_tokens=max_tokens, target=target_model, source="ui", group_id=group,
                                         document=document)
                    prep = _prepare_in_thread(runner, request)
                    try:
                        while True:
                            yield {c_status: render.status_html(f"Preparing {side}: {next(prep)}", "running")}
                    except StopIteration as stop:
                        prepared[side] = stop.value
            except Exception as exc:
                message = _error_message(exc)
                _toast(message)
                yield {c_status: render.status_html(message, "error"),
                       a_stream: _side_stream("A", labels["A"], [], running=False),
                       b_stream: _side_stream("B", labels["B"], [], running=False)}
                return

            results: dict[str, dict] = {side: {"events": [], "run_id": None, "status": "waiting", "metrics": None,
                                               "token_ids": [], "error": None} for side, _ in jobs}
            messages: queue.Queue = queue.Queue()
            stop_flag = threading.Event()

            def drive(side: str) -> None:
                results[side]["status"] = "running"
                stream_it = runner.stream(prepared[side])
                try:
                    for upd in stream_it:
                        messages.put((side, upd))
                        if stop_flag.is_set():
                            break
                except Exception as exc:  # reported in the page
                    messages.put((side, exc))
                finally:
                    stream_it.close()
                    messages.put((side, _DONE))

            def drive_all(sides: list[str]) -> None:
                for side in sides:
                    if stop_flag.is_set():
                        messages.put((side, _DONE))
                        continue
                    drive(side)

            sides = [side for side, _ in jobs]
            if mode == "concurrent":
                threads = [threading.Thread(target=drive, args=(s,), name=f"specviz-compare-{s}", daemon=True) for s in sides]
            else:
                threads = [threading.Thread(target=drive_all, args=(sides,), name="specviz-compare-seq", daemon=True)]
            for t in threads:
                t.start()
            how = ("all at once in separate threads" if mode == "concurrent" else "one after another")
            running_text = f"Running {', '.join(labels[s] + ' (' + s + ')' for s in sides)} {how}…"
            yield {c_status: render.status_html(running_text, "running")}
            pending = set(sides)
            try:
                while pending:
                    try:
                        batch = [messages.get(timeout=0.5)]
                    except queue.Empty:
                        continue
                    while True:
                        try:
                            batch.append(messages.get_nowait())
                        except queue.Empty:
                            break
                    changed: set[str] = set()
                    for side, item in batch:
                        r = results[side]
                        if item is _DONE:
                            pending.discard(side)
                            if r["status"] == "running":
                                r["status"] = "stopped"
                        elif isinstance(item, BaseException):
                            r["status"], r["error"] = "error", _error_message(item)
                        else:
                            r["events"] = list(item.events)
                            r["run_id"] = item.run_id
                            r["metrics"] = item.metrics
                            r["token_ids"] = list(item.token_ids)
                            if item.done:
                                r["status"] = "finished"
                        changed.add(side)
                    out: dict = {c_state: {s: {**results[s], "label": labels[s]} for s in panels}}
                    for side in changed & set(panels):
                        r = results[side]
                        s_stream, s_metrics = panels[side]
                        out[s_stream] = _side_stream(side, labels[side], r["events"], running=r["status"] == "running",
                                                     error=r["error"])
                        out[s_metrics] = render.metrics_html(r["metrics"], running=r["status"] == "running")
                    if "baseline" in changed:
                        rb = results["baseline"]
                        done = len(rb["token_ids"])
                        out[c_status] = render.status_html(
                            f"{running_text} Baseline (ar): {done} tokens, {rb['status']}.", "running")
                    if out:
                        yield out
            finally:
                # Finished, or closed by Stop: the threads stop after their current step and close their streams
                # (each marks its run "stopped" unless it finished). No join here: Gradio closes generators from
                # its event loop, which must not block.
                stop_flag.set()
            yield {
                c_status: render.status_html(
                    "Done." if all(r["status"] == "finished" for r in results.values())
                    else "Done, with problems: see the summary.", "ok"),
                c_table: summary_frame(jobs, results, baseline_side),
                c_lossless: lossless_html(sampling_cfg, results, baseline_side, [s for s in ("A", "B") if s != baseline_side]),
                c_timing_note: timing_note(mode, baseline_side),
            }

        compare_inputs = ([c_prompt] + side_a.inputs() + side_b.inputs() + c_sampling.inputs()
                          + [c_max_new, c_mode, c_target, c_document])
        compare_outputs = [c_status, a_stream, b_stream, a_metrics, b_metrics, c_table, c_lossless, c_timing_note, c_state]
        compare_names = (["prompt", "a_name", *(f"a_{f}" for f in PARAM_FIELDS), "b_name", *(f"b_{f}" for f in PARAM_FIELDS),
                          "temperature", "top_k", "top_p", "seed", "max_new_tokens", "mode", "target", "document"])
        compare_event = c_run.click(named_handler(run_compare, compare_names), compare_inputs, compare_outputs, api_name="compare",
                                    concurrency_id=ENGINE_CONCURRENCY, concurrency_limit=2, show_progress="hidden")
        def after_compare_stop(state):
            if state and not any(r.get("status") in ("running", "waiting") for r in state.values()):
                return {c_status: render.status_html("Stopped.", "info")}
            out = {c_status: render.status_html("Stopped. Partial runs are logged with status \"stopped\".", "info")}
            run_ids = [r.get("run_id") for r in (state or {}).values()]
            closed = wait_until_closed(store, run_ids)  # no late update from the cancelled handler after this
            for side, (s_stream, s_metrics) in (("A", (a_stream, a_metrics)), ("B", (b_stream, b_metrics))):
                r = (state or {}).get(side)
                if r:
                    events = store.load_events(r["run_id"]) if closed and r.get("run_id") is not None else r["events"]
                    out[s_stream] = _side_stream(side, r["label"], events, running=False, error=r.get("error"))
                    out[s_metrics] = render.metrics_html(RunMetrics.from_events(events) if events else None)
            return out

        c_stop.click(None, None, None, cancels=[compare_event], api_visibility="undocumented").then(
            after_compare_stop, [c_state], [c_status, a_stream, b_stream, a_metrics, b_metrics],
            api_visibility="undocumented", concurrency_limit=None, show_progress="hidden",
        )

        # ---- History
        def list_history(strategy_filter, search_text):
            rows = store.list_runs(limit=200, strategy=None if strategy_filter in (None, "", "all") else strategy_filter,
                                   search=(search_text or "").strip() or None)
            return history_frame(rows)

        history_inputs = [h_strategy, h_search]
        h_refresh.click(list_history, history_inputs, h_table, api_name="history", concurrency_limit=None)
        h_strategy.change(list_history, history_inputs, h_table, api_visibility="undocumented", concurrency_limit=None)
        h_search.submit(list_history, history_inputs, h_table, api_visibility="undocumented", concurrency_limit=None)
        history_tab.select(list_history, history_inputs, h_table, api_visibility="undocumented", concurrency_limit=None)

        def open_run(run_id):
            try:
                run, events = _load_run(store, run_id)
            except SpecVizError as exc:
                return {h_status: render.status_html(str(exc), "error")}
            state = _run_state(events, run["prompt"], run.get("strategy_label") or run["strategy"], run["id"], False)
            return {h_status: render.status_html(_run_summary(run, events), "ok"), h_run_id: run["id"],
                    h_document: _document_update(run), **h_view.render(state, note=_run_settings(run))}

        h_open_outputs = [h_status, h_run_id, h_document] + h_view.outputs()
        h_open.click(open_run, [h_run_id], h_open_outputs, api_name="open_run", concurrency_limit=None)
        h_run_id.submit(open_run, [h_run_id], h_open_outputs, api_visibility="undocumented", concurrency_limit=None)

        def select_row(evt: gr.SelectData):
            row = getattr(evt, "row_value", None)
            if not row:
                return {h_status: render.status_html("Could not read that row; type its id instead.", "error")}
            return open_run(row[0])

        h_table.select(select_row, None, h_open_outputs, api_visibility="undocumented", concurrency_limit=None)

        def replay_run(run_id):
            try:
                run, events = _load_run(store, run_id)
            except SpecVizError as exc:
                yield {h_status: render.status_html(str(exc), "error")}
                return
            label = run.get("strategy_label") or run["strategy"]
            delay = min(0.25, 12.0 / max(len(events), 1))
            yield {h_document: _document_update(run)}
            for i in range(1, len(events) + 1):
                state = _run_state(events[:i], run["prompt"], label, run["id"], i < len(events))
                yield {h_status: render.status_html(f"Replaying run #{run['id']}: step {i} of {len(events)}", "running"),
                       **h_view.render(state, running=i < len(events),
                                       plot=(i % PLOT_EVERY_STEPS == 0 or i == len(events)))}
                time.sleep(delay)
            yield {h_status: render.status_html(_run_summary(run, events), "ok")}

        h_replay.click(replay_run, [h_run_id], [h_status, h_document] + h_view.outputs(), api_visibility="undocumented",
                       concurrency_limit=4, concurrency_id="replay", show_progress="hidden")
        demo.load(list_history, history_inputs, h_table, api_visibility="undocumented", concurrency_limit=None)

    demo.queue(default_concurrency_limit=2, max_size=16)
    return demo


# -- compare helpers -----------------------------------------------------------------------------

SUMMARY_COLUMNS = ["side", "strategy", "status", "speedup vs ar", "mean acceptance length", "acceptance rate",
                   "tokens/s", "target forward passes", "new tokens", "wall s", "run id"]
SUMMARY_COLUMN_WIDTHS = ["7%", "27%", "8%", "11%", "9%", "8%", "6%", "8%", "6%", "5%", "5%"]


def _side_stream(side: str, label: str, events: list[StepEvent], running: bool, error: str | None = None) -> str:
    code = f" <code>{render.esc(label)}</code>" if label else ""
    head = f'<div class="side-head"><span class="side-tag">{render.esc(side)}</span>{code}</div>'
    err = render.status_html(error, "error") if error else ""
    return head + err + render.token_stream_html(events, None, running=running,
                                                 placeholder=f"Strategy {side}'s output appears here.")


def summary_frame(jobs: list[tuple[str, StrategyConfig]], results: dict[str, dict], baseline_side: str) -> pd.DataFrame:
    base = results.get(baseline_side, {}).get("metrics")
    base_tps = base.tokens_per_s if base is not None else None
    rows = []
    for side, strat in jobs:
        r = results[side]
        m: RunMetrics | None = r["metrics"]
        tps = m.tokens_per_s if m else None
        if side == baseline_side:
            speedup = "1.00× (baseline)"
        elif tps and base_tps:
            speedup = f"{tps / base_tps:.2f}×"
        else:
            speedup = "—"
        rows.append({
            "side": side if side != "baseline" else "baseline (extra ar run)",
            "strategy": strat.label(),
            "status": r["status"] + (f": {r['error']}" if r["error"] else ""),
            "speedup vs ar": speedup,
            "mean acceptance length": None if not m or m.mean_acceptance_length is None else round(m.mean_acceptance_length, 2),
            "acceptance rate": "—" if not m or m.acceptance_rate is None else f"{m.acceptance_rate:.0%}",
            "tokens/s": None if tps is None else round(tps, 1),
            "target forward passes": m.target_forwards if m else None,
            "new tokens": m.new_tokens if m else None,
            "wall s": None if not m else round(m.wall_s, 2),
            "run id": r["run_id"],
        })
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def lossless_html(sampling: SamplingConfig, results: dict[str, dict], baseline_side: str, others: list[str]) -> str:
    """Under greedy decoding every lossless strategy must reproduce the baseline's text exactly."""
    if not sampling.greedy:
        return render.status_html(
            "Lossless check: only under greedy decoding (temperature 0). With sampling, lossless strategies match "
            "the baseline's distribution, not its exact sample.", "info")
    base = results.get(baseline_side, {})
    lines = []
    for side in others:
        r = results[side]
        if r["status"] != "finished" or base.get("status") != "finished":
            lines.append(f"{side}: not checked (a run did not finish)")
            continue
        a, b = r["token_ids"], base["token_ids"]
        if a == b:
            lines.append(f"{side}: lossless check: identical to baseline ✓")
        else:
            first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            lines.append(f"{side}: lossless check: DIFFERENT from the baseline (first difference at output token {first})")
    ok = all("identical" in line for line in lines)
    return render.status_html(" · ".join(lines) or "Lossless check: nothing to compare.", "ok" if ok else "error")


def timing_note(mode: str, baseline_side: str) -> str:
    base = ("the `ar` side" if baseline_side in ("A", "B")
            else "an extra `ar` baseline run of the same prompt, seed and settings")
    extra = baseline_side == "baseline"
    if mode == "concurrent":
        how = (("A, B and the extra baseline" if extra else "A and B")
               + " ran **at the same time** (one thread each) on this machine's CPU cores, so each was slower than it "
               "would be alone, and a run that finishes first frees the CPU for the others: the speedups are "
               "approximate. Choose \"one after another\" for fairer timings.")
    else:
        how = ("The runs ran **one after another** (A, then B" + (", then the extra baseline" if extra else "")
               + "), each with the CPU to itself: the fairer timing.")
    return (f"**How the speedup is measured:** tokens/s of each run ÷ tokens/s of {base}, all measured in this "
            f"session. {how} Wall times are engine time (prefill to last token), model loading excluded.")


# -- history helpers -----------------------------------------------------------------------------

HISTORY_COLUMNS = ["id", "created", "strategy", "status", "prompt", "new tokens", "mean acceptance length",
                   "tokens/s", "source"]
HISTORY_COLUMN_WIDTHS = ["5%", "13%", "24%", "8%", "26%", "6%", "8%", "6%", "4%"]


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


def _load_run(store: RunStore, run_id: Any) -> tuple[dict, list[StepEvent]]:
    try:
        rid = int(run_id)
    except (TypeError, ValueError):
        raise ConfigError("run id", "type the id of a run from the table (or click its row)") from None
    run = store.get_run(rid)
    if run is None:
        raise ConfigError("run id", f"no run #{rid} in the log")
    return run, store.load_events(rid)


def _run_summary(run: dict, events: list[StepEvent]) -> str:
    n_tokens = sum(len(e.new_tokens) for e in events)
    return (f"Run #{run['id']} · {run.get('strategy_label') or run['strategy']} · {run.get('status')} · "
            f"{len(events)} steps, {n_tokens} tokens · {(run.get('created_at') or '')[:19].replace('T', ' ')}")


def _document_update(run: dict) -> dict:
    """The History's document box: the run's attached document, hidden when it had none."""
    return gr.update(value=run.get("document") or "", visible=bool(run.get("document")))


def _run_settings(run: dict) -> str:
    return (f"target {run.get('target')} · temperature {run.get('temperature')} · top_k {run.get('top_k')} · "
            f"top_p {run.get('top_p')} · seed {run.get('seed')} · max new tokens {run.get('max_new_tokens')}"
            + (f" · document: {len(run['document']):,} characters" if run.get("document") else "")
            + (f" · stop: {run.get('stop_reason')}" if run.get("stop_reason") else "")
            + (f" · error: {run.get('error')}" if run.get("error") else ""))


# -- launching -----------------------------------------------------------------------------------

def load_css(path: Path = CSS_FILE) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


def make_theme() -> gr.themes.Base:
    """System fonts only (no web-font downloads), a calm neutral palette so the token colours stand out."""
    return gr.themes.Default(
        primary_hue=gr.themes.colors.blue,
        neutral_hue=gr.themes.colors.slate,
        font=["system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica Neue", "Arial", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "Liberation Mono", "monospace"],
    )


def launch_local(demo: gr.Blocks) -> str:
    """Serve on a free loopback port without blocking (tests, benchmarks); returns the URL."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launch_app(demo, prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    return f"http://127.0.0.1:{port}/"


def launch_app(demo: gr.Blocks, **kwargs: Any):
    """Launch with the project's theme and CSS (Gradio 6 takes them in launch()). Extra kwargs go to launch()."""
    kwargs.setdefault("theme", make_theme())
    css = load_css()
    if css is not None:
        kwargs.setdefault("css", css)
    return demo.launch(**kwargs)
