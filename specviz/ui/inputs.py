"""What the explorer's forms send, read and validated in one place (no Gradio components here).

Handlers take their inputs by name (`named_handler`): the Playground's `run` gets
{"prompt": ..., "strategy": ..., "k": ..., "temperature": ..., ...}; the Compare tab's `compare` gets the
same with each side's strategy under its own prefix ({"a_name": ..., "a_k": ..., "b_name": ..., ...}).
`read_run_inputs(values, strategy_keys)` turns either into a validated `RunInputs`, or raises one of
INPUT_ERRORS with a message for the page.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from engine import (
    EMBEDDED_DEFAULT,
    SamplingConfig,
    SpecVizError,
    StrategyConfig,
    check_max_new_tokens,
    describe_strategies,
    parse_strategy,
)
from engine.errors import ConfigError, PromptError
from specviz.limits import check_text

INPUT_ERRORS = (SpecVizError, ValueError, TypeError)  # what validating a form may raise

STRATEGY_INFO = {s["name"]: s for s in describe_strategies()}
STRATEGY_NAMES = list(STRATEGY_INFO)
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

SAMPLING_NAMES = ("temperature", "top_k", "top_p", "seed")


@dataclass(frozen=True)
class StrategyKeys:
    """Where one strategy's inputs sit among a form's named values: its name, and its fields under a prefix."""

    name: str = "strategy"  # the Playground's; Compare's sides use "a_name", "b_name"
    prefix: str = ""  # the Playground's fields are bare ("k"); Compare's are "a_k", "b_k"

    def names(self) -> list[str]:
        return [self.name, *(self.prefix + f for f in PARAM_FIELDS)]


@dataclass(frozen=True)
class RunInputs:
    """A form's inputs, validated: what every run of the Playground or of a comparison shares."""

    prompt: str
    strategies: tuple[StrategyConfig, ...]  # one per StrategyKeys given, in that order
    sampling: SamplingConfig
    max_new_tokens: int
    target: str
    document: str | None


def _as_int(name: str, value: Any) -> Any:
    """Gradio numbers arrive as int, float or None; hand parse_strategy ints (or the raw value to reject)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ConfigError(name, "is empty; enter a value")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def strategy_from_inputs(name: str, values: dict[str, Any]) -> StrategyConfig:
    """Validated strategy config from the dropdown and the per-strategy fields (only its own fields).

    A field that is absent, None or blank takes the strategy's own default: strategies share fields (k, drafter,
    max_k, ...) with different defaults, and an API call that names only a strategy sends None for every field,
    so it runs that strategy exactly as `specviz run --strategy NAME` (`parse_strategy(name, {})`) does.
    """
    if name not in STRATEGY_INFO:
        raise ConfigError("strategy", f"unknown strategy {name!r}; choose one of {', '.join(STRATEGY_NAMES)}")
    params: dict[str, Any] = {}
    for field, meta in STRATEGY_INFO[name]["parameters"].items():
        value = values.get(field)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue  # the strategy's own default
        params[field] = _as_int(field, value) if meta["type"] == "int" else value
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


def document_or_none(text: Any) -> str | None:
    return text if isinstance(text, str) and text.strip() else None


def target_or_default(text: Any) -> str:
    return (text or EMBEDDED_DEFAULT).strip() or EMBEDDED_DEFAULT


def check_text_values(values: dict[str, Any]) -> None:
    """Every text a form sent is real text: no NUL bytes, no lone surrogates (which JSON can carry but nothing
    downstream can encode: the page's reply, the log, the tokenizer). A ConfigError names the first bad field."""
    for name, value in values.items():
        if isinstance(value, str):
            check_text(name, value)


def read_run_inputs(values: dict[str, Any], strategy_keys: Sequence[StrategyKeys]) -> RunInputs:
    """Validate a form's named values: their text first, the prompt, then each strategy, sampling and
    max_new_tokens. (Limits that depend on the app, such as a public demo's, are the Runner's: see RunLimits.)"""
    check_text_values(values)
    prompt = check_prompt_text(values["prompt"])
    strategies = tuple(
        strategy_from_inputs(values[keys.name], {f: values[keys.prefix + f] for f in PARAM_FIELDS})
        for keys in strategy_keys
    )
    sampling = sampling_from_inputs(*(values[name] for name in SAMPLING_NAMES))
    return RunInputs(prompt, strategies, sampling, max_tokens_from_input(values["max_new_tokens"]),
                     target_or_default(values.get("target")), document_or_none(values.get("document")))


def named_handler(fn: Callable[[dict[str, Any]], Iterator], names: Sequence[str],
                  required: Sequence[str] = ()) -> Callable[..., Iterator]:
    """A streaming handler whose API parameters carry these names, calling `fn({name: value})`.

    The strategy fields are built from the strategy registry, so no Python signature can list them; Gradio
    names API parameters from the signature, which this sets explicitly (in the order of the inputs). Every
    parameter but the `required` ones (which must come first) defaults to None there: Gradio then offers a
    component's initial value as the API default where it has one, and None where it has none (the strategy
    fields: None means "this strategy's own default").
    """
    names = list(names)
    if len(set(names)) != len(names):
        raise ValueError(f"API parameter names must be unique: {names}")
    if list(required) != names[:len(required)]:
        raise ValueError(f"required API parameters must come first: {list(required)} in {names}")

    def handler(*values):
        yield from fn(dict(zip(names, values, strict=True)))

    handler.__signature__ = inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                           **({} if name in required else {"default": None})) for name in names]
    )
    handler.__name__ = fn.__name__
    return handler
