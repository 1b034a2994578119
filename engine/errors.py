"""Errors a person can act on. Everything else is a bug and may surface as a traceback.

Messages may reach a visitor of a public page: a file the engine found on its own (a drafter folder, a
frequency table) is named with `shown_path`, never by the server's absolute path.
"""

from __future__ import annotations

import os
from pathlib import Path

_PROJECT = Path(__file__).resolve().parents[1]  # the checkout: engine/ and assets/ sit in it


def shown_path(path: str | os.PathLike) -> str:
    """A path for a message: relative to the project when inside it ("assets/drafters/smollm2-135m-instruct"),
    else only its last part ("…/my-drafters"), so a message never shows the server's folders."""
    p = Path(path)
    try:
        return p.resolve().relative_to(_PROJECT).as_posix()
    except (ValueError, OSError, RuntimeError):
        return f"…/{p.name}" if p.name else "…"


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
