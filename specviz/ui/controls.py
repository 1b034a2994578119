"""The input controls the tabs share: strategy (one field per strategy parameter), sampling, document,
example prompts, and how an input error reaches the page (status line + toast, never a traceback).

Each `build_*` adds its components to the open `gr.Blocks`; `named_inputs()` gives them under the API
parameter names that `specviz.ui.inputs.read_run_inputs` reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import gradio as gr

from engine import SpecVizError
from engine.devices import device_choices
from specviz.compare import describe_error
from specviz.prompts import SuitePrompt, load_prompt_suite
from specviz.runner import MAX_DOCUMENT_BYTES, read_document_file

from . import render
from .inputs import PARAM_CHOICES, PARAM_FIELDS, PARAM_INFO, SAMPLING_NAMES, STRATEGY_INFO, STRATEGY_NAMES, StrategyKeys

ENGINE_CONCURRENCY = "engine"  # heavy handlers (model runs) share this concurrency group
MAX_NEW_TOKENS_UI = 1024
DEFAULT_MAX_NEW_TOKENS = 64
# light UI-only events: not in the API, not queued behind model runs, no progress overlay
QUIET = MappingProxyType(dict(api_visibility="undocumented", concurrency_limit=None, show_progress="hidden"))


def explain(text: str) -> gr.Markdown:
    return gr.Markdown(text, elem_classes=["explain"])


def toast(message: str) -> None:
    gr.Warning(render.esc(message))  # toasts render HTML: escape what the person or the model typed


def error_status(exc: BaseException) -> str:
    """The status line for a failed handler, with the same message as a toast."""
    message = describe_error(exc)
    toast(message)
    return render.status_html(message, "error")


# -- strategy ------------------------------------------------------------------------------------

@dataclass
class StrategyControls:
    strategy: gr.Dropdown
    about: gr.Markdown
    fields: dict[str, gr.components.Component]
    keys: StrategyKeys = StrategyKeys()  # the API parameter names of these inputs

    def inputs(self) -> list:
        return [self.strategy] + [self.fields[f] for f in PARAM_FIELDS]

    def named_inputs(self) -> dict[str, gr.components.Component]:
        return dict(zip(self.keys.names(), self.inputs(), strict=True))

    def outputs(self) -> list:
        """What picking a strategy updates: its description and every field."""
        return [self.about] + [self.fields[f] for f in PARAM_FIELDS]

    def show_defaults_on_load(self, demo: gr.Blocks) -> None:
        """Fill the chosen strategy's fields with its defaults when the page loads.

        The fields are built empty (value None) so that the API's default for each is None, which the handler
        reads as "this strategy's own default"; a person sees the defaults, filled here and on every strategy
        change."""
        demo.load(show_strategy, self.strategy, self.outputs(), **QUIET)


def show_strategy(name: str) -> list:
    """A strategy's description, then its fields (its defaults, help and choices; the other fields hidden)."""
    return [_about(name)] + _field_updates(name)


def _about(name: str) -> str:
    info = STRATEGY_INFO.get(name)
    if info is None:
        return ""
    tag = "lossless" if info["lossless"] else "lossy"
    return f"**{name}** ({tag}): {info['description']}"


def _field_info(meta: dict[str, Any]) -> str | None:
    """A field's help text, with its allowed range when it has one (from the strategy's declared metadata), and
    what a blank field means (the strategy's default)."""
    blank = f"blank: the default, {meta['default']}" if "default" in meta else None
    if "min" not in meta:
        return "; ".join(x for x in (meta.get("help"), blank) if x) or None
    low, high = (f"{x:,}" if isinstance(x, int) else f"{x:g}" for x in (meta["min"], meta["max"]))
    return "; ".join(x for x in (meta.get("help", ""), f"allowed: {low} to {high}", blank) if x is not None)


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
        updates.append(gr.update(visible=True, value=meta["default"], info=_field_info(meta), **choices))
    return updates


def _param_field(prefix: str, field: str, meta: dict[str, Any], visible: bool) -> gr.components.Component:
    """One input for a strategy parameter, typed from its config: numbers, choices or free text.

    Built empty (None): strategies share this field with different defaults, and an API call that names only a
    strategy must get that strategy's defaults, not the default strategy's (the API's default for a parameter is
    the component's initial value). The page fills it (StrategyControls.show_defaults_on_load, strategy change)."""
    common = dict(label=field, info=_field_info(meta), visible=visible, elem_id=f"{prefix}param-{field.replace('_', '-')}")
    if meta["type"] == "int":
        # no precision: Gradio would round NaN / infinity itself and fail without a message; the strategy's
        # range check refuses them, and a fraction, with one
        return gr.Number(None, step=1, min_width=110, **common)
    if meta["type"] == "float":
        return gr.Number(None, min_width=110, **common)
    if meta.get("choices"):
        return gr.Dropdown(PARAM_CHOICES[field], value=None, min_width=150, **common)
    return gr.Textbox(None, min_width=180, **common)


def build_strategy_controls(prefix: str, label: str, default: str, keys: StrategyKeys = StrategyKeys()) -> StrategyControls:
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
    controls = StrategyControls(strategy, about, fields, keys)
    strategy.change(show_strategy, strategy, controls.outputs(), **QUIET)
    return controls


# -- sampling, length, document, examples ----------------------------------------------------------

@dataclass
class SamplingControls:
    temperature: gr.Slider
    top_k: gr.Number
    top_p: gr.Slider
    seed: gr.Number

    def inputs(self) -> list:
        return [self.temperature, self.top_k, self.top_p, self.seed]

    def named_inputs(self) -> dict[str, gr.components.Component]:
        return dict(zip(SAMPLING_NAMES, self.inputs(), strict=True))


def build_sampling_controls(prefix: str) -> SamplingControls:
    temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="temperature",
                            info="0 = greedy (always the most likely token); above 0 samples", elem_id=f"{prefix}temperature")
    top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top_p", info="nucleus sampling; 1 = off")
    with gr.Row():
        # no precision (see _param_field): SamplingConfig refuses fractions, NaN and infinity with a message
        top_k = gr.Number(0, step=1, minimum=0, label="top_k", info="0 = off", min_width=100)
        seed = gr.Number(0, step=1, minimum=0, label="seed", info="same seed, same sample", min_width=100)
    return SamplingControls(temperature, top_k, top_p, seed)


def build_max_new_tokens(elem_id: str) -> gr.Slider:
    return gr.Slider(1, MAX_NEW_TOKENS_UI, value=DEFAULT_MAX_NEW_TOKENS, step=1, label="max new tokens", elem_id=elem_id)


def build_device_control(elem_id: str) -> gr.Dropdown | None:
    """Where the models run: a dropdown of this machine's CUDA devices and the CPU, the first GPU chosen; None
    (no component, no API parameter: runs use the CPU) on a machine without CUDA."""
    choices = device_choices()
    if len(choices) == 1:
        return None
    return gr.Dropdown(choices, value=choices[0], label="device", elem_id=elem_id,
                       info="where the models run (\"cuda\": every GPU, a big model split over them)")


def build_document_controls(prefix: str) -> tuple[gr.Textbox, gr.File]:
    """The document attached to a run: pasted text, or a text file (see wire_document_upload) loaded into the same box."""
    with gr.Accordion("Document (for retrieval drafting)", open=False, elem_id=f"{prefix}document-accordion"):
        explain(
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


def wire_document_upload(upload: gr.File, document: gr.Textbox, status: gr.HTML) -> None:
    upload.upload(load_document_file, upload, [document, status], **QUIET)


def load_document_file(path: str) -> tuple[Any, str]:
    """An uploaded file into the document box, or a clear message (binary, too large, unreadable)."""
    try:
        text = read_document_file(path)
    except SpecVizError as exc:
        return gr.skip(), error_status(exc)
    return text, render.status_html(f"Loaded the document {Path(path).name}: {len(text):,} characters.", "ok")


def load_example_prompts() -> list[SuitePrompt]:
    """The project's prompt suite; [] when the file is absent or unreadable (examples are then hidden)."""
    try:
        return load_prompt_suite()
    except (OSError, ValueError, TypeError):
        return []


def build_example_picker(examples: list[SuitePrompt], elem_id: str | None = None) -> gr.Dropdown:
    """A dropdown of the suite's prompts (hidden when there are none); see wire_example_picker."""
    return gr.Dropdown(choices=[(f"{row.category} · {render.excerpt(row.prompt, 70)}", row.id) for row in examples],
                       value=None, label="Example prompts", visible=bool(examples), elem_id=elem_id)


def build_category_picker(examples: list[SuitePrompt], elem_id: str | None = None) -> gr.Radio:
    """One button per category of the suite: picking one puts that category's first example in the prompt box."""
    categories = list(dict.fromkeys(row.category for row in examples))
    return gr.Radio(categories, value=None, label="Try an example from a category", visible=bool(categories),
                    elem_id=elem_id, elem_classes=["category-picker"])


def wire_category_picker(category: gr.Radio, examples: list[SuitePrompt], example: gr.Dropdown) -> None:
    """Picking a category selects its first example in `example` (whose change fills the prompt and length)."""
    first = {}
    for row in examples:
        first.setdefault(row.category, row.id)
    category.change(lambda name: first.get(name, gr.skip()) if name else gr.skip(), category, example, **QUIET)


def wire_example_picker(example: gr.Dropdown, examples: list[SuitePrompt], prompt: gr.Textbox, max_new: gr.Slider) -> None:
    """Picking an example fills the prompt box and sets its max new tokens."""
    by_id = {row.id: row for row in examples}

    def pick(example_id, current_max):
        row = by_id.get(str(example_id)) if example_id is not None else None
        if row is None:
            return gr.skip(), gr.skip()
        return row.prompt, max(1, min(row.max_new_tokens, int(max_new.maximum)))  # a public demo lowers the maximum

    example.change(pick, [example, max_new], [prompt, max_new], **QUIET)
