"""Strategies as frozen, validated configs, and the registry that lists them.

A strategy = a proposer (what is drafted) + a draft-length policy (how much) + a verifier (what is
kept). Each strategy is one frozen dataclass; `__post_init__` rejects invalid values with a
`ConfigError` naming the field. `parse_strategy("prompt_lookup", {"k": "6"})` builds one from
loose string parameters (CLI `--param k=6`, UI fields), rejecting unknown parameter names.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import ConfigError

LENGTH_POLICIES = ("constant", "heuristic")


def param(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A strategy parameter: its default, a one-line help text and, for strings, the allowed values.

    The help and choices reach `specviz strategies --json` and the explorer's parameter fields.
    """
    metadata = {"help": help} if choices is None else {"help": help, "choices": choices}
    return field(default=default, metadata=metadata)


def _check_int(obj: Any, name: str, low: int, high: int) -> None:
    value = getattr(obj, name)
    if not isinstance(value, int) or isinstance(value, bool) or not (low <= value <= high):
        raise ConfigError(name, f"must be an integer in [{low}, {high}], got {value!r}")


STRATEGIES: dict[str, type["StrategyConfig"]] = {}  # name -> config class, in definition order


@dataclass(frozen=True)
class StrategyConfig:
    """Base class; subclasses set the class-level `name`, `lossless` and `description`.

    A subclass that defines its own `name` registers itself in STRATEGIES.
    """

    name: ClassVar[str]
    lossless: ClassVar[bool]
    description: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            if cls.name in STRATEGIES:
                raise TypeError(f"strategy name {cls.name!r} is registered twice")
            STRATEGIES[cls.name] = cls

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def label(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in self.params().items())
        return f"{self.name}({inner})" if inner else self.name


@dataclass(frozen=True)
class ChainDrafting(StrategyConfig):
    """Shared knobs of every chain-drafting strategy."""

    k: int = param(4, "draft length K (the starting K for the heuristic policy)")
    length_policy: str = param(
        "constant", "constant K, or heuristic: +2 after a fully accepted draft, -1 otherwise", LENGTH_POLICIES
    )
    max_k: int = param(12, "cap on K")

    def __post_init__(self) -> None:
        _check_int(self, "k", 1, 64)
        _check_int(self, "max_k", 1, 64)
        if self.length_policy not in LENGTH_POLICIES:
            raise ConfigError("length_policy", f"must be one of {', '.join(LENGTH_POLICIES)}, got {self.length_policy!r}")
        if self.k > self.max_k:
            raise ConfigError("k", f"must be <= max_k ({self.max_k}), got {self.k}")


@dataclass(frozen=True)
class AutoregressiveConfig(StrategyConfig):
    name: ClassVar[str] = "ar"
    lossless: ClassVar[bool] = True
    description: ClassVar[str] = "Target model alone, one token per forward pass: the baseline for text and speed."


EARLY_EXIT_PREFIX = "early-exit:"


@dataclass(frozen=True)
class DraftModelConfig(ChainDrafting):
    name: ClassVar[str] = "draft_model"
    lossless: ClassVar[bool] = True
    description: ClassVar[str] = (
        "A drafter model proposes a chain of K tokens; the target verifies them in one forward pass "
        "(Leviathan et al. / Chen et al.)."
    )
    drafter: str = param("early-exit:6", "a same-tokenizer model (hub id or folder) or early-exit:N")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.drafter, str) or not self.drafter.strip():
            raise ConfigError("drafter", "must name a model (hub id or folder) or early-exit:N")
        if self.drafter.startswith(EARLY_EXIT_PREFIX):
            layers = self.drafter[len(EARLY_EXIT_PREFIX):]
            if not re.fullmatch(r"[1-9][0-9]*", layers):
                raise ConfigError("drafter", f"early-exit needs a positive layer count, e.g. early-exit:6, got {self.drafter!r}")


@dataclass(frozen=True)
class EarlyExitConfig(ChainDrafting):
    name: ClassVar[str] = "early_exit"
    lossless: ClassVar[bool] = True
    description: ClassVar[str] = (
        "Self-speculation: the target's first N layers plus its final norm and LM head draft a chain "
        "(LayerSkip / Kangaroo family, no extra weights)."
    )
    exit_layer: int = param(6, "target layers the self-drafter runs before the final norm and LM head")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_int(self, "exit_layer", 1, 1024)

    @property
    def drafter(self) -> str:
        return f"{EARLY_EXIT_PREFIX}{self.exit_layer}"


@dataclass(frozen=True)
class PromptLookupConfig(ChainDrafting):
    name: ClassVar[str] = "prompt_lookup"
    lossless: ClassVar[bool] = True
    description: ClassVar[str] = (
        "Prompt lookup / n-gram drafting: copy what followed the latest earlier occurrence of the "
        "last n tokens in the prompt and output (PLD); no drafter model."
    )
    # Defaults from `specviz bench` on the prompt suite (2-core CPU): k=4 with min_ngram=2 averaged
    # 1.11x over the baseline, k=8 with min_ngram=1 0.97x (a 1-gram match drafts too often, and
    # verifying 9 positions costs ~2 single-token passes there); k=8 still wins on retrieval QA.
    k: int = param(4, "draft length K (the starting K for the heuristic policy)")
    max_ngram: int = param(3, "longest suffix n-gram looked up")
    min_ngram: int = param(2, "shortest suffix n-gram tried before giving up (no draft this step)")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_int(self, "max_ngram", 1, 16)
        _check_int(self, "min_ngram", 1, 16)
        if self.min_ngram > self.max_ngram:
            raise ConfigError("min_ngram", f"must be <= max_ngram ({self.max_ngram}), got {self.min_ngram}")


def _coerce(field: dataclasses.Field, raw: Any) -> Any:
    kind = field.type if isinstance(field.type, str) else field.type.__name__
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise ConfigError(field.name, f"expected {'an integer' if kind == 'int' else 'a number'}, got {raw!r}") from None
    return text


def parse_strategy(name: str, params: dict[str, Any] | None = None) -> StrategyConfig:
    """Build a validated strategy config from a name and loose (possibly string) parameters."""
    if name not in STRATEGIES:
        raise ConfigError("strategy", f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    cls = STRATEGIES[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    params = dict(params or {})
    for key in params:
        if key not in fields:
            known = ", ".join(fields) or "none"
            raise ConfigError(key, f"unknown parameter for strategy {name!r} (its parameters: {known})")
    return cls(**{key: _coerce(fields[key], value) for key, value in params.items()})


def describe_strategies() -> list[dict[str, Any]]:
    """What `specviz strategies --json` prints: name, lossless, parameters with defaults, description."""
    out = []
    for name, cls in STRATEGIES.items():
        fields = dataclasses.fields(cls)
        out.append(
            {
                "name": name,
                "lossless": cls.lossless,
                "description": cls.description,
                "parameters": {
                    f.name: {
                        "default": f.default,
                        "type": f.type if isinstance(f.type, str) else f.type.__name__,
                        **{key: list(value) if key == "choices" else value for key, value in f.metadata.items()},
                    }
                    for f in fields
                },
            }
        )
    return out
