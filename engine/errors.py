"""Errors a person can act on. Everything else is a bug and may surface as a traceback."""

from __future__ import annotations


class SpecVizError(Exception):
    """Base class: the message is meant for the person who caused it."""


class ConfigError(SpecVizError, ValueError):
    """An invalid strategy, sampling or run setting; names the offending field."""

    def __init__(self, field: str, problem: str):
        self.field = field
        super().__init__(f"{field}: {problem}")


class ModelLoadError(SpecVizError):
    """A model could not be found or loaded, or a drafter does not fit its target."""


class PromptError(SpecVizError, ValueError):
    """The prompt is empty or does not fit the model's context window."""


class EngineError(SpecVizError):
    """The engine had to stop a run (for example the model produced NaN logits)."""
