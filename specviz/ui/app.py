"""The Gradio 6 explorer: one module per tab, composed here.

`build_app(models, store)` returns the `gr.Blocks` (queue configured) with the tabs Playground
(`playground_tab`), Compare (`compare_tab`), History (`history_tab`) and Multi-draft bound
(`multi_draft_tab`); `launch_app(demo, ...)` launches it with the project's theme and CSS (in
Gradio 6 those go to `launch()`). Shared pieces: `inputs` (what a form sends, validated in one
place), `controls` (strategy, sampling, document, example controls), `panels` (a run's view),
`sessions` (one model run at a time per session).

Every handler validates its inputs first and shows `SpecVizError` messages in the page (status
line + toast), never a traceback. Model and prompt text reach the page only through
`specviz.ui.render`, which escapes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from engine import ModelCache, parse_strategy
from specviz.limits import RunLimits
from specviz.runner import RunRequest, Runner
from specviz.store import RunStore
from specviz.traces import bundled_traces

from .compare_tab import build_compare_tab
from .controls import load_example_prompts
from .history_tab import build_history_tab
from .learn_tab import build_learn_tab
from .multi_draft_tab import build_multi_draft_tab
from .sampling_lab_tab import build_sampling_lab_tab
from .playground_tab import PLAYGROUND_STRATEGY, build_playground_tab
from .public import apply_public_limits, limits_note
from .sessions import RunGate
from .workshop import HEAD as WORKSHOP_HEAD, build_toolbar
from .warmup import ModelWarmup

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "assets"
CSS_FILE = ASSETS / "style.css"

# The queue, sized for a workshop room: 30 people, each with at most a Run and a Compare waiting (the page cannot
# queue one button twice), plus their page-load and other light events, which pass straight through. Bounded, so
# that a flood of API calls is told "queue is full" at once instead of waiting without end. Counts waiting events
# only (not the ones running).
QUEUE_MAX_SIZE = 100
# Events that name no limit of their own (the multi-draft bound). Model runs share the "engine" group (two at a
# time: the CPU has two cores); log reads, replays and page updates have their own groups or none, so they never
# wait behind model runs.
DEFAULT_CONCURRENCY = 2
# What the background warm-up prepares: the Playground's default strategy on the embedded default target.
WARMUP_REQUEST = RunRequest(prompt="Hello", strategy=parse_strategy(PLAYGROUND_STRATEGY), max_new_tokens=2,
                            source="warmup")

HEADER = """
<div class="sv-header">
  <div class="sv-title">SpecViz <span class="sv-sub">— watch speculative decoding think</span></div>
  <div class="sv-intro">A small drafter guesses several tokens ahead; the big target model checks all the guesses
  in one forward pass and keeps the longest prefix it agrees with. Same output distribution, fewer target
  passes. Everything below is a real engine running on this machine's CPU.</div>
</div>
"""


def build_app(models: ModelCache, store: RunStore, limits: RunLimits = RunLimits()) -> gr.Blocks:
    """The explorer over these models and run log. `limits`: what a run may ask for, enforced for every run (page
    and API); `RunLimits.public_space()` also says so in the page and narrows the widgets (specviz.ui.public)."""
    runner = Runner(models, store, limits)
    examples = load_example_prompts()
    traces = bundled_traces()  # recorded runs: the page plays one at once, no model needed
    warmup = ModelWarmup(Runner(models, None, limits), WARMUP_REQUEST)  # the live model, loaded in the background
    gate = RunGate()  # one model run at a time per session, across the Playground and Compare
    with gr.Blocks(title="SpecViz — speculative decoding explorer", analytics_enabled=False) as demo:
        build_toolbar()  # dark mode, projector mode, keyboard hint (specviz.ui.workshop)
        gr.HTML(HEADER, js_on_load=None)
        limits_note(limits)
        with gr.Tabs(elem_id="main-tabs") as tabs:
            with gr.Tab("Playground", id="playground", elem_id="tab-playground"):
                build_playground_tab(runner, store, examples, gate, demo, traces.get("showcase"), warmup)
            with gr.Tab("Learn", id="learn", elem_id="tab-learn"):
                build_learn_tab(demo, tabs, traces)
            with gr.Tab("Compare", id="compare", elem_id="tab-compare"):
                build_compare_tab(runner, store, examples, gate, demo)
            with gr.Tab("History", id="history", elem_id="tab-history") as history_tab:
                build_history_tab(store, history_tab, demo, runner, gate)
            with gr.Tab("Multi-draft bound", id="multi-draft", elem_id="tab-multi-draft"):
                build_multi_draft_tab()
            with gr.Tab("Sampling lab", id="sampling-lab", elem_id="tab-sampling-lab"):
                build_sampling_lab_tab(runner, examples, gate)
        apply_public_limits(demo, limits)
    demo.queue(default_concurrency_limit=DEFAULT_CONCURRENCY, max_size=QUEUE_MAX_SIZE)
    return demo


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
    # the workshop script (theme and projector toggles, keyboard stepping, aria-labels) first, a caller's head after
    kwargs["head"] = WORKSHOP_HEAD + (kwargs.get("head") or "")
    return demo.launch(**kwargs)
