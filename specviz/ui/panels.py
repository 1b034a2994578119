"""The panels that show one run: token stream, metrics, step inspector (with the draft tree or token
lattice of the step), and the acceptance / draft-length / phase plots. `RunView` groups them; the
Playground streams into one, History replays into another.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from engine import RunMetrics, StepEvent
from specviz.figures import acceptance_figure, draft_length_figure, draft_tree_figure, lattice_figure, phase_figure
from specviz.store import RunStore
from specviz.traces import RunSetup

from . import render
from .controls import QUIET, explain

PLAY_LABEL, PAUSE_LABEL = "▶ Play", "⏸ Pause"
MIN_SPEED, DEFAULT_SPEED, MAX_SPEED = 0.5, 2.0, 8.0  # playback, in steps per second
PLAYBACK_SPEEDS = [(f"{x:g} steps/s", x) for x in (0.5, 1.0, 2.0, 4.0, 8.0)]
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


def most_informative_step(events: list[StepEvent]) -> int | None:
    """The step a learner should see first: one where the target both kept and refused drafted tokens, with the
    richest proposal (a tree's or lattice's shape, the most drafted tokens); ties go to the earliest. None: no steps.

    The last step is the default otherwise, and often the least telling one (the budget left nothing to draft)."""
    if not events:
        return None

    def score(e: StepEvent) -> tuple:
        drafted, accepted = e.num_drafted, e.num_accepted
        mixed = accepted > 0 and e.output.kind == "recovered"  # kept some, refused one: every verdict on show
        shape = len(e.tree) + len(e.lattice)
        return (mixed, accepted > 0, min(shape, 12) + drafted, -e.index)

    return max(events, key=score).index


def shown_events(state: dict | None) -> list[StepEvent]:
    """The events a view shows: all of them, or the first `shown` while a playback unfolds the run."""
    events = (state or {}).get("events") or []
    shown = (state or {}).get("shown")
    return events if shown is None else events[:shown]


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
    play: gr.Button
    speed: gr.Dropdown
    inspector: gr.HTML
    tree_plot: gr.Plot
    lattice_plot: gr.Plot
    plot: gr.Plot
    length_plot: gr.Plot
    phase_plot: gr.Plot
    state: gr.State
    timer: gr.Timer
    # sessions whose playback is on (by Gradio session hash): a tick already queued when Pause was pressed must not
    # move on. Entries are dropped when a playback pauses or ends.
    playing: set[str] = field(default_factory=set)

    @classmethod
    def assemble(cls, stream_panel: tuple, inspector_panel: tuple, plot_panel: tuple) -> RunView:
        """The view over what build_stream_panel, build_inspector_panel and build_plot_panel returned, with its
        step navigation wired."""
        view = cls(*stream_panel, *inspector_panel, *plot_panel, gr.State(None), gr.Timer(1.0, active=False))
        view.wire_navigation()
        view.wire_playback()
        return view

    def render(self, state: dict | None, focus: int | None = None, *, running: bool = False, plot: bool = True,
               note: str | None = None) -> dict:
        """Output dict for all panels from a run state (events, prompt, ...); `focus`: the step the inspector shows
        (default: the latest)."""
        events = shown_events(state)
        note = note if note is not None else (state or {}).get("note")
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

    def settle(self, state: dict | None, **kwargs) -> dict:
        """Render a finished (or opened) run, whole, on its most informative step. A playback in progress stops at
        its next tick (the state no longer has a playhead)."""
        events = (state or {}).get("events") or []
        state = {**state, "shown": None} if state else state
        return self.render(state, most_informative_step(events), **kwargs)

    def start_playback(self, state: dict, speed: float, first: int, request: gr.Request) -> dict:
        """Unfold `state`'s run step by step from step `first`, `speed` steps per second, for the session of
        `request` (see wire_playback)."""
        self.playing.add(request.session_hash)
        events = state.get("events") or []
        shown = max(1, min(first + 1, len(events)))
        state = {**state, "shown": shown, "running": False}
        # no plots yet: the browser draws the first steps at once, the plots follow at the next plot tick
        return {**self.render(state, shown - 1, plot=False), self.timer: gr.Timer(value=_interval(speed), active=True),
                self.play: gr.update(value=PAUSE_LABEL)}

    def show_initially(self, state: dict, focus: int) -> None:
        """Make `state` (at step `focus`) what the page shows before any event: the first paint. Call before the
        Blocks closes (its config is made then); the plots keep their empty figures."""
        values = self.render(state, focus, plot=False)
        for component in (self.stream, self.metrics, self.inspector):
            component.value = values[component]
        n_events = len(shown_events(state))
        self.slider.maximum, self.slider.value = max(1, n_events - 1), focus

    def wire_playback(self) -> None:
        """Play / Pause and speed: unfold a finished run step by step (the token stream grows, the inspector follows
        the newest step). Server-side timer, no model involved; a live run ignores them.

        The state's "shown" is the playhead (steps shown; None: the whole run); whether a session's playback is on
        is kept here (`playing`), so that a tick queued before a Pause does nothing."""
        playback = [self.timer, self.play]

        def stopped() -> dict:  # fresh updates each time: Gradio consumes the update dicts it sends
            return {self.timer: gr.Timer(active=False), self.play: gr.update(value=PLAY_LABEL)}

        def nothing() -> dict:  # (an empty dict would read as one output value)
            return {self.play: gr.skip()}

        def toggle(state, step, speed, request: gr.Request):
            events = (state or {}).get("events") or []
            if not events or state.get("running"):
                return nothing()
            if request.session_hash in self.playing:  # pause where it is: the steps so far stay shown
                self.playing.discard(request.session_hash)
                return stopped()
            shown = state.get("shown")
            if shown is not None:  # paused mid-way: go on with the next step
                first = shown
            else:  # the whole run is shown: play from the chosen step, or from the start when at the end
                step = int(step or 0)
                first = 0 if step >= len(events) - 1 else step
            return self.start_playback(state, speed, first, request)

        def tick(state, request: gr.Request):
            events = (state or {}).get("events") or []
            shown = (state or {}).get("shown")
            if request.session_hash not in self.playing:  # paused after this tick was sent
                return nothing()
            if not events or shown is None:  # a live run or an opened run replaced the played one
                self.playing.discard(request.session_hash)
                return stopped()
            shown += 1
            if shown >= len(events):  # the whole run is shown: stop, on its most informative step
                self.playing.discard(request.session_hash)
                return {**self.settle(state), **stopped()}
            state = {**state, "shown": shown}
            return self.render(state, shown - 1, plot=shown % PLOT_EVERY_STEPS == 0)

        def retime(speed, request: gr.Request):
            return gr.Timer(value=_interval(speed), active=request.session_hash in self.playing)

        outputs = self.outputs() + playback
        self.play.click(toggle, [self.state, self.slider, self.speed], outputs, **QUIET)
        self.timer.tick(tick, [self.state], outputs, **QUIET)
        self.speed.change(retime, [self.speed], self.timer, **QUIET)

    def wire_navigation(self) -> None:
        """Slider and Previous / Next: pick a step (works during and after a run; no model involved)."""

        def show(step, state):
            events = shown_events(state)
            i = int(step or 0)
            return (
                render.step_inspector_html(events, i),
                render.token_stream_html(events, (state or {}).get("prompt"), focus_step=i,
                                         running=bool((state or {}).get("running"))),
                _tree_update(events, i),
                _lattice_update(events, i),
            )

        def move(delta, step, state):
            events = shown_events(state)
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


def _interval(speed: float | None) -> float:
    """Seconds between playback steps for a speed in steps per second."""
    return 1.0 / max(MIN_SPEED, min(MAX_SPEED, float(speed or DEFAULT_SPEED)))


def build_inspector_panel(prefix: str) -> tuple:
    gr.Markdown("### Step inspector")
    explain(
        "One step = draft up to K tokens, then check them all in **one** target forward pass. Each drafted token "
        "is kept when a uniform draw u ≤ min(1, p/q) (p: target probability, q: drafter probability); the first "
        "refusal ends the check and the target supplies its own token there. Tree strategies draw the step's draft "
        "tree; diffusion strategies its token lattice (each position's candidates, coloured by the drafter's "
        "probability, and the path through them that the target checked)."
    )
    slider = gr.Slider(0, 1, value=0, step=1, label="Step", elem_id=f"{prefix}step-slider", interactive=False)
    with gr.Row(elem_classes=["step-nav"]):
        prev = gr.Button("◀ Previous", size="sm", elem_id=f"{prefix}step-prev")
        play = gr.Button(PLAY_LABEL, size="sm", elem_id=f"{prefix}step-play")
        nxt = gr.Button("Next ▶", size="sm", elem_id=f"{prefix}step-next")
        speed = gr.Dropdown(PLAYBACK_SPEEDS, value=DEFAULT_SPEED, label="playback speed", show_label=False,
                            elem_id=f"{prefix}playback-speed", min_width=150, scale=0)
    # Tree strategies only: shown above the proposal table, which lists a tree's nodes one per row
    tree_plot = gr.Plot(None, visible=False, elem_id=f"{prefix}draft-tree-plot", show_label=False)
    # Diffusion strategies only, in the same place (a step has a tree or a lattice, never both)
    lattice_plot = gr.Plot(None, visible=False, elem_id=f"{prefix}lattice-plot", show_label=False)
    inspector = gr.HTML(render.step_inspector_html([]), elem_id=f"{prefix}step-inspector", js_on_load=None)
    return slider, prev, nxt, play, speed, inspector, tree_plot, lattice_plot


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
