"""The "Sampling lab" tab: losslessness made visible.

`build_sampling_lab_tab(runner, examples, gate)` adds the components and events inside an open `gr.Tab`. Its Run
button is the API endpoint `/sampling_lab` with the parameters prompt, strategy, temperature, top_k, top_p,
samples and tokens. It draws `samples` samples of the next `tokens` tokens with ar and with the strategy (the
strategy's default settings), each with its own seed, and shows both empirical distributions against the target's
exact one, with a chi-square test per sampler (specviz.sampling_lab does the work). Runs wait in the shared
"engine" queue, hold the session's one model run (`gate`), stream their progress and stop with Stop.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from specviz.compare import prepare_in_thread
from specviz.figures import BLUE, GREY, VERMILLION, message_figure
from specviz.prompts import SuitePrompt
from specviz.runner import PreparedRun, Runner
from specviz.sampling_lab import (
    ALPHA,
    DEFAULT_SAMPLES,
    DEFAULT_STRATEGY,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOKENS,
    MAX_SAMPLES,
    MAX_TOKENS,
    MIN_SAMPLES,
    OTHER,
    SHOWN,
    UNSUPPORTED,
    LabProgress,
    LabRequest,
    LabResult,
    Row,
    format_p,
    run_lab,
    speed_note,
    verdict,
)

from . import render
from .controls import ENGINE_CONCURRENCY, QUIET, build_example_picker, error_status, explain
from .inputs import INPUT_ERRORS, STRATEGY_INFO, STRATEGY_NAMES, check_prompt_text, check_text_values, sampling_from_inputs, strategy_from_inputs
from .sessions import RunGate

PROGRESS_EVERY = 0.1  # show progress at every tenth of the samples
PROGRESS_MAX_GAP_S = 1.0  # and at least this often (a Stop takes effect at the next update)
FONT_COLOUR = "#777777"  # readable on a light and on a dark page (the figure's background is transparent)
GRID_COLOUR = "rgba(128,128,128,0.25)"
SIDE_STYLE = ((GREY, "."), (BLUE, "/"))  # ar, then the strategy: colour and pattern (the app's baseline and drafts)
DEFAULT_PROMPT = "What is the capital of France?"

EXPLANATION = f"""
**What is this?** Speculative decoding promises to be *lossless*: its tokens follow exactly the target model's
distribution, only faster. Here you can check that claim. From one prompt, the lab draws many samples of the next
few tokens with **ar** (the target alone) and with a **speculative strategy** (its default settings), each
sample with its own seed, and compares how often each continuation came out with the target's **exact**
probability (the product of its own next-token probabilities, under the same temperature, top_k and top_p).

**How to read it.** The bars are the samplers, the markers the exact probabilities, with whiskers where about
95% of a correct sampler's bars should land. The **chi-square test** asks: if the sampler were exactly the target,
how surprising would these counts be? The **p-value** answers (continuations expecting fewer than 5 samples are
pooled). Above {ALPHA:g}: no evidence of a difference. Below: strong evidence, unless you were unlucky (it
happens to a correct sampler once in {round(1 / ALPHA):,} runs). A pass is not a proof: a small enough
difference needs more samples to show. Temperature must be above 0 (greedy has one outcome only).
"""


@dataclass(frozen=True)
class LabInputs:
    """The form's values under their API names."""

    prompt: Any
    strategy: Any = DEFAULT_STRATEGY
    temperature: Any = DEFAULT_TEMPERATURE
    top_k: Any = 0
    top_p: Any = 1.0
    samples: Any = DEFAULT_SAMPLES
    tokens: Any = DEFAULT_TOKENS


def read_lab_request(values: LabInputs) -> LabRequest:
    """Validate the form (text first, then prompt, strategy, sampling, sizes); raises one of INPUT_ERRORS."""
    check_text_values(vars(values))
    prompt = check_prompt_text(values.prompt)
    strategy = strategy_from_inputs(_or(values.strategy, DEFAULT_STRATEGY), {})  # the strategy's own defaults
    sampling = sampling_from_inputs(values.temperature, _or(values.top_k, 0), values.top_p, 0)
    return LabRequest(prompt, strategy, sampling, _or(values.samples, DEFAULT_SAMPLES), _or(values.tokens, DEFAULT_TOKENS))


def _or(value: Any, default: Any) -> Any:
    """An API call may leave a parameter out (None): the form's default then."""
    return default if value is None or (isinstance(value, str) and not value.strip()) else value


# -- the figure ------------------------------------------------------------------------------------

def row_label(row: Row) -> str:
    """A continuation's text, token by token ("|" between tokens, spaces as ␣), plain (escape it for HTML)."""
    if row.key == OTHER:
        return "(all other continuations)"
    return "|".join(render.visible_text(piece) if piece else "…" for piece in row.pieces)


def unique_labels(rows: tuple[Row, ...]) -> list[str]:
    """Row labels made distinct (two tokenizations can print alike), escaped for plotly (it renders tags)."""
    labels, seen = [], set()
    for row in rows:
        label, n = row_label(row), 2
        while label in seen:
            label, n = f"{row_label(row)} ({n})", n + 1
        seen.add(label)
        labels.append(render.esc(label))
    return labels


def lab_figure(result: LabResult) -> go.Figure:
    """Per continuation: each sampler's share of the samples (bars) and the exact probability (marker, whiskers at
    ± 2 standard errors of a correct sampler's share)."""
    rows, n = result.rows, result.samples
    labels = unique_labels(rows)
    fig = go.Figure()
    for i, ((colour, pattern), fit) in enumerate(zip(SIDE_STYLE, result.fits)):
        name = render.esc(fit.side.name)
        fig.add_trace(go.Bar(
            x=labels, y=[r.frequencies[i] for r in rows], name=f"{name} (p = {format_p(fit.test.p_value)})",
            marker=dict(color=colour, pattern=dict(shape=pattern, fgcolor="rgba(255,255,255,0.6)")),
            customdata=[r.counts[i] for r in rows],
            hovertemplate=f"%{{x}}<br>{name}: %{{y:.1%}} (%{{customdata}} of {n})<extra></extra>"))
    fig.add_trace(go.Scatter(
        x=labels, y=[r.exact for r in rows], mode="markers", name="target's exact probability",
        marker=dict(symbol="diamond", size=11, color=VERMILLION, line=dict(color="white", width=1)),
        error_y=dict(array=[2 * (r.exact * (1 - r.exact) / n) ** 0.5 for r in rows],
                     arrayminus=[min(r.exact, 2 * (r.exact * (1 - r.exact) / n) ** 0.5) for r in rows],  # not below 0
                     color=VERMILLION, thickness=1.5, width=8),
        hovertemplate="%{x}<br>exact: %{y:.2%}<extra></extra>"))
    return _layout(fig, result)


def _layout(fig: go.Figure, result: LabResult) -> go.Figure:
    unit = "token" if result.tokens == 1 else f"{result.tokens} tokens"
    fig.update_layout(
        barmode="group", bargap=0.25, bargroupgap=0.05, height=480, hovermode="closest",
        paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)", font=dict(size=12, color=FONT_COLOUR),
        margin=dict(l=60, r=20, t=60, b=40), uirevision="specviz-sampling-lab",
        title=dict(text=f"The next {unit}: {result.samples} samples per sampler vs the target's exact distribution",
                   x=0, y=0.98, font=dict(size=13)),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0, font=dict(size=11)),
    )
    fig.update_xaxes(tickangle=-35, automargin=True, showgrid=False, linecolor=GRID_COLOUR,
                     title_text=f"continuation (the {SHOWN} most likely, then the rest)")
    fig.update_yaxes(title_text="share of samples / probability", tickformat=".0%", rangemode="tozero",
                     gridcolor=GRID_COLOUR, zerolinecolor=GRID_COLOUR)
    return fig


def empty_figure(message: str) -> go.Figure:
    """No axes, just a message in the page's subdued colour, as tall as the lab's figure."""
    fig = message_figure(message, FONT_COLOUR)
    fig.update_layout(height=480)
    return fig


# -- the results -------------------------------------------------------------------------------------

def _fit_rows(result: LabResult) -> str:
    out = []
    for fit in result.fits:
        side, test = fit.side, fit.test
        mark = ("ok", "✓ consistent with the target") if fit.passes else ("error", "✗ differs from the target")
        out.append(
            f'<tr><td><b>{render.esc(side.name)}</b></td><td class="num">{test.statistic:.1f}</td>'
            f'<td class="num">{test.df}</td><td class="num lab-p">{render.esc(format_p(test.p_value))}</td>'
            f'<td class="lab-{mark[0]}">{mark[1]}</td><td class="num">{fit.tv:.3f}</td>'
            f'<td class="num">{side.passes_per_sample:.2f}</td><td class="num">{side.decode_passes_per_token:.2f}</td>'
            f'<td class="num">{side.ms_per_sample:.0f} ms</td></tr>')
    return "".join(out)


FIT_HEADERS = ("sampler", "chi-square", "df", "p-value", f"at α = {ALPHA:g}", "TV distance", "target passes / sample",
               "per token after prompt", "time / sample")


def results_html(result: LabResult) -> str:
    """What the numbers mean, the test per sampler, the cost, and every shown continuation's counts."""
    lines = verdict(result).splitlines()
    kind = "ok" if all(f.passes for f in result.fits) else "error"
    meaning = "".join(f"<li>{render.esc(line)}</li>" for line in lines)
    head = "".join(f"<th>{h}</th>" for h in FIT_HEADERS)
    return (f'<div class="lab-verdict lab-verdict-{kind}"><ul>{meaning}</ul></div>'
            f'<div class="insp-table-wrap"><table class="insp-table lab-fit-table" id="lab-fit-table"><thead><tr>{head}'
            f"</tr></thead><tbody>{_fit_rows(result)}</tbody></table></div>"
            f'<p class="lab-cost">{render.esc(speed_note(result))}</p>{_continuations_html(result)}')


def _continuations_html(result: LabResult) -> str:
    names = [render.esc(f.side.name) for f in result.fits]
    head = "".join(f"<th>{h}</th>" for h in ["continuation", "exact", *names])
    body = "".join(
        f"<tr><td><code>{label}</code></td><td class=\"num\">{row.exact:.2%}</td>"
        + "".join(f'<td class="num">{c} ({f:.1%})</td>' for c, f in zip(row.counts, row.frequencies)) + "</tr>"
        for label, row in zip(unique_labels(result.rows), result.rows))
    exact = result.exact
    note = (f"The exact distribution took {exact.target_passes} target passes ({result.exact_s:.1f} s): every "
            f"continuation observed or at least {exact.min_prob:.2%} likely, computed from the target's own "
            f"probabilities; the rest ({max(0.0, 1 - exact.covered):.2%} in all) is pooled.")
    return (f'<details class="lab-details"><summary>Every shown continuation: counts of {result.samples} samples'
            f'</summary><div class="insp-table-wrap"><table class="insp-table"><thead><tr>{head}</tr></thead>'
            f'<tbody>{body}</tbody></table></div><p class="lab-cost">{render.esc(note)}</p></details>')


def progress_html(progress: LabProgress) -> str:
    """The status line while a run samples: which sampler, how far, and a progress bar."""
    if progress.stage == "exact":
        message = "Computing the target's exact distribution…"
    else:
        message = f"Sampling with {progress.side}: {progress.done:,} of {progress.total:,} samples (both samplers)…"
    return (render.status_html(message, "running")
            + f'<progress class="lab-progress" value="{progress.done}" max="{progress.total}"></progress>')


class ProgressThrottle:
    """When to show progress: every tenth of the run, and at least every PROGRESS_MAX_GAP_S seconds."""

    def __init__(self) -> None:
        self.shown, self.time = -1.0, time.perf_counter()

    def due(self, progress: LabProgress) -> bool:
        now = time.perf_counter()
        if progress.stage != "sampling" or progress.fraction - self.shown >= PROGRESS_EVERY or now - self.time >= PROGRESS_MAX_GAP_S:
            self.shown, self.time = progress.fraction, now
            return True
        return False


# -- the tab -------------------------------------------------------------------------------------

def lab_strategy_choices() -> list[tuple[str, str]]:
    """Every strategy the lab can run (sampling, no document), with a tag on the lossy ones."""
    return [(f"{n}{'' if STRATEGY_INFO[n]['lossless'] else ' (lossy)'}", n) for n in STRATEGY_NAMES if n not in UNSUPPORTED]


@dataclass
class SamplingLabTab:
    runner: Runner
    prompt: gr.Textbox
    strategy: gr.Dropdown
    temperature: gr.Slider
    top_k: gr.Number
    top_p: gr.Slider
    samples: gr.Slider
    tokens: gr.Radio
    run_button: gr.Button
    stop_button: gr.Button
    status: gr.HTML
    plot: gr.Plot
    results: gr.HTML

    def inputs(self) -> list:
        return [self.prompt, self.strategy, self.temperature, self.top_k, self.top_p, self.samples, self.tokens]

    def outputs(self) -> list:
        return [self.status, self.plot, self.results]

    def run_sampling_lab(self, prompt: str, strategy: str | None = DEFAULT_STRATEGY,
                         temperature: float | None = DEFAULT_TEMPERATURE, top_k: float | None = 0,
                         top_p: float | None = 1.0, samples: float | None = DEFAULT_SAMPLES,
                         tokens: int | None = DEFAULT_TOKENS) -> Iterator[dict]:
        """The `/sampling_lab` handler: validate, load (showing progress), sample with progress, then show the fit."""
        try:
            request = read_lab_request(LabInputs(prompt, strategy, temperature, top_k, top_p, samples, tokens))
            self.runner.limits.check_lab_samples(request.samples)  # a public demo's are fewer
        except INPUT_ERRORS as exc:
            yield {self.status: error_status(exc)}
            return
        yield {self.status: render.status_html("Loading models… (the first load takes ~30 s; later runs reuse them)",
                                               "running"),
               self.plot: empty_figure("Sampling…"), self.results: ""}
        try:
            prepared = []
            for run_request in request.run_requests():  # ar, then the strategy: each decoder built once
                prepared.append((yield from prepare_in_thread(
                    self.runner, run_request,
                    lambda m: {self.status: render.status_html(f"Loading models… {m}", "running")})))
            result = yield from self._sample(request, prepared)
        except Exception as exc:  # SpecVizError: the person's message; anything else: logged, summarised
            yield {self.status: error_status(exc), self.plot: empty_figure("No result: see the message above")}
            return
        yield self._show(result)

    def _sample(self, request: LabRequest, prepared: list[PreparedRun]) -> Generator[dict, None, LabResult]:
        """Both samplers' draws, then the exact distribution, with throttled progress in the status line."""
        ar, spec = prepared
        lab = run_lab([("ar", ar.decoder), (request.strategy.name, spec.decoder)], ar.prompt_ids, request.tokens,
                      request.samples)
        throttle = ProgressThrottle()
        with contextlib.closing(lab):  # a Stop closes this generator: the lab stops between samples
            while True:
                try:
                    progress = next(lab)
                except StopIteration as finished:
                    return finished.value
                if throttle.due(progress):
                    yield {self.status: progress_html(progress)}

    def _show(self, result: LabResult) -> dict:
        ar, spec = result.fits
        message = (f"Done: {result.samples} samples of {result.tokens} token{'s' if result.tokens > 1 else ''} each. "
                   f"p-values: ar {format_p(ar.test.p_value)}, {spec.side.name} {format_p(spec.test.p_value)}.")
        return {self.status: render.status_html(message, "ok"), self.plot: lab_figure(result),
                self.results: results_html(result)}

    def after_stop(self) -> dict:
        return {self.status: render.status_html("Stopped. Nothing was kept: press Run to sample again.", "info")}

    def wire(self, gate: RunGate) -> None:
        handler = gate.guard(self.run_sampling_lab, lambda exc: {self.status: error_status(exc)})
        run_event = self.run_button.click(
            handler, self.inputs(), self.outputs(), api_name="sampling_lab",
            concurrency_id=ENGINE_CONCURRENCY, concurrency_limit=2, show_progress="full", show_progress_on=[self.status],
        )
        self.stop_button.click(None, None, None, cancels=[run_event], api_visibility="undocumented").then(
            self.after_stop, None, [self.status], **QUIET)


def _build_controls() -> dict[str, gr.components.Component]:
    """The form: prompt, strategy, sampling settings, sizes."""
    controls: dict[str, gr.components.Component] = {}
    controls["prompt"] = gr.Textbox(DEFAULT_PROMPT, label="Prompt (the context)", lines=3, max_lines=8,
                                    elem_id="lab-prompt", info="chat-templated, as in the Playground")
    controls["strategy"] = gr.Dropdown(
        lab_strategy_choices(), value=DEFAULT_STRATEGY, label="Speculative strategy", elem_id="lab-strategy",
        info="tested beside ar, with its default settings (document-based and greedy-only strategies are left out)")
    controls["temperature"] = gr.Slider(0.05, 2.0, value=DEFAULT_TEMPERATURE, step=0.05, label="temperature",
                                        info="above 0 (greedy has one outcome); lower values concentrate the samples: a sharper test", elem_id="lab-temperature")
    with gr.Row():
        controls["top_k"] = gr.Number(0, step=1, minimum=0, label="top_k", info="0 = off", min_width=100,
                                      elem_id="lab-top-k")
        controls["top_p"] = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top_p", info="1 = off",
                                      elem_id="lab-top-p")
    controls["samples"] = gr.Slider(MIN_SAMPLES, MAX_SAMPLES, value=DEFAULT_SAMPLES, step=10, label="samples (N)",
                                    info="per sampler; sample i uses seed i", elem_id="lab-samples")
    controls["tokens"] = gr.Radio(list(range(1, MAX_TOKENS + 1)), value=DEFAULT_TOKENS, label="tokens per sample (L)",
                                  elem_id="lab-tokens")
    return controls


def build_sampling_lab_tab(runner: Runner, examples: list[SuitePrompt], gate: RunGate) -> SamplingLabTab:
    """The tab's components and events (call it inside an open gr.Tab); `gate` holds each session to one model run."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=320, elem_classes=["controls"]):
            controls = _build_controls()
            example = build_example_picker(examples, elem_id="lab-example")
            with gr.Row():
                run_button = gr.Button("Run", variant="primary", elem_id="lab-run")
                stop_button = gr.Button("Stop", variant="stop", elem_id="lab-stop")
            status = gr.HTML(render.status_html("Ready. Pick a prompt and press Run."), elem_id="lab-status",
                             js_on_load=None)
            explain(EXPLANATION)
        with gr.Column(scale=7, min_width=420):
            plot = gr.Plot(empty_figure("Press Run to sample"), label="Samples vs the exact distribution",
                           show_label=False, elem_id="lab-plot")  # the figure has its own title
            results = gr.HTML("", elem_id="lab-results", js_on_load=None)
    tab = SamplingLabTab(runner, *controls.values(), run_button, stop_button, status, plot, results)
    _wire_examples(example, examples, tab.prompt)
    tab.wire(gate)
    return tab


def _wire_examples(example: gr.Dropdown, examples: list[SuitePrompt], prompt: gr.Textbox) -> None:
    """Picking an example fills the prompt box."""
    by_id = {row.id: row.prompt for row in examples}

    def pick(example_id: Any) -> Any:
        return by_id.get(str(example_id), gr.skip()) if example_id is not None else gr.skip()

    example.change(pick, example, prompt, **QUIET)

