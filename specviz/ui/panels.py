"""The panels that show one run: token stream, metrics, step inspector (with the draft tree or token
lattice of the step), and the acceptance / draft-length / phase plots. `RunView` groups them; the
Playground streams into one, History replays into another.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from engine import RunMetrics, StepEvent
from specviz.figures import acceptance_figure, draft_length_figure, draft_tree_figure, lattice_figure, phase_figure
from specviz.store import RunStore
from specviz.traces import RunSetup

from . import render
from .controls import QUIET, explain

PLOT_EVERY_STEPS = 4  # Gradio re-sends figures whole: refresh the plots every few steps while streaming or replaying


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


def run_state(events: list[StepEvent], prompt: str, label: str, run_id: int | None, running: bool,
              setup: RunSetup | None = None) -> dict:
    """A RunView's state. `setup`: what the run was asked to do (re-creates its context for what-if and fork)."""
    return {"events": list(events), "prompt": prompt, "label": label, "run_id": run_id, "running": running,
            "setup": setup}


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

    @classmethod
    def assemble(cls, stream_panel: tuple, inspector_panel: tuple, plot_panel: tuple) -> RunView:
        """The view over what build_stream_panel, build_inspector_panel and build_plot_panel returned, with its
        step navigation wired."""
        view = cls(*stream_panel, *inspector_panel, *plot_panel, gr.State(None))
        view.wire_navigation()
        return view

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
        self.slider.input(show, [self.slider, self.state], step_panels, trigger_mode="always_last", **QUIET)
        self.prev.click(lambda s, st: move(-1, s, st), [self.slider, self.state], [self.slider, *step_panels], **QUIET)
        self.next.click(lambda s, st: move(1, s, st), [self.slider, self.state], [self.slider, *step_panels], **QUIET)


def build_stream_panel(prefix: str) -> tuple[gr.HTML, gr.HTML]:
    gr.HTML(render.legend_html(), elem_classes=["legend-wrap"])
    stream = gr.HTML(render.token_stream_html([]), elem_id=f"{prefix}token-stream", elem_classes=["token-stream"],
                     js_on_load=None)
    explain(
        "Each output token is coloured by how it was born; hover one for its probabilities. Blue tokens were "
        "drafted cheaply and kept; each step the target adds one token of its own (green bonus after a fully "
        "accepted draft, vermillion recovered at a rejection). Struck-through tokens after the outlined step "
        "were drafted but rejected there."
    )
    metrics = gr.HTML(render.metrics_html(None), elem_id=f"{prefix}metrics", js_on_load=None)
    explain(
        "**Mean acceptance length** = tokens produced per target forward pass (1 + accepted ÷ steps): 1.0 means no "
        "gain, 3.0 means each expensive target pass yielded three tokens. Whether that also saves time depends on "
        "what the drafter costs."
    )
    return stream, metrics


def build_inspector_panel(prefix: str) -> tuple[gr.Slider, gr.Button, gr.Button, gr.HTML, gr.Plot, gr.Plot]:
    gr.Markdown("### Step inspector")
    explain(
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
    explain(
        "Top: tokens produced at each step (blue = accepted drafts, stacked with the target's own token) and a "
        "rolling mean. Bottom left: how often each draft position survives (position i needs 0..i-1 accepted "
        "first). Bottom right: how many steps produced 1, 2, 3… tokens."
    )
    plot = gr.Plot(acceptance_figure([]), elem_id=f"{prefix}acceptance-plot", show_label=False)
    gr.Markdown("### Draft length")
    explain(
        "The length the policy chose at each step (line; hover for its reason), what was drafted (grey) and accepted "
        "(blue), and the policy's own signal on the right axis (the confidence threshold, the predicted chance of a "
        "rejection, the moving average of accepted lengths). Orange diamonds: the oracle, the length that would have "
        "given the most tokens per second in hindsight, priced with this run's measured drafter and verification "
        "costs (analysis only: no policy can know it in advance)."
    )
    length_plot = gr.Plot(draft_length_figure([]), elem_id=f"{prefix}draft-length-plot", show_label=False)
    gr.Markdown("### Phase timeline")
    explain(
        "Who worked when, on the engine's clock: orange = drafting, blue = the target verifying, gaps = waiting. "
        "Plain speculation alternates, so each worker waits while the other works; PEARL lets the drafter draft "
        "the next block while the target verifies this one."
    )
    phase_plot = gr.Plot(phase_figure([]), elem_id=f"{prefix}phase-plot", show_label=False)
    return plot, length_plot, phase_plot
