"""Fairness between visitors: each browser session holds at most one model run at a time.

Gradio gives every page load (and every `gradio_client.Client`) a session hash. `RunGate` remembers which
sessions hold a model run (a Playground run or a comparison: both are heavy) and refuses another one from
the same session while the first is running, with a message for the page. A person in the browser cannot
queue the same button twice anyway (Gradio's trigger_mode "once"); the gate covers a Run and a Compare
started together, and API clients that submit several jobs at once.

One instance is made in `build_app` and shared by the tabs; nothing here is global. A request without a
session hash (none arrives that way from the page or gradio_client) is not limited.
"""

from __future__ import annotations

import inspect
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from engine import SpecVizError

BUSY_MESSAGE = (
    "this session already has a model run in progress (in the Playground or Compare tab): wait until it "
    "finishes, or press Stop, then run again"
)


class SessionBusyError(SpecVizError):
    """The session asked for a second model run while its first is still running."""


class RunGate:
    """At most `per_session` model runs at a time per session (thread-safe)."""

    def __init__(self, per_session: int = 1):
        if per_session < 1:
            raise ValueError(f"per_session must be >= 1, got {per_session}")
        self.per_session = per_session
        self._lock = threading.Lock()
        self._held: Counter[str] = Counter()

    def try_acquire(self, session: str | None) -> bool:
        """Claim a run for the session; False when it already holds its share. None (no session): always True."""
        if session is None:
            return True
        with self._lock:
            if self._held[session] >= self.per_session:
                return False
            self._held[session] += 1
            return True

    def release(self, session: str | None) -> None:
        if session is None:
            return
        with self._lock:
            self._held[session] -= 1
            if self._held[session] <= 0:
                del self._held[session]

    def held(self, session: str | None = None) -> int:
        """Runs held by the session (None: by every session together)."""
        with self._lock:
            return sum(self._held.values()) if session is None else self._held.get(session, 0)

    def guard(self, handler: Callable[..., Iterator], refuse: Callable[[SessionBusyError], Any]) -> Callable[..., Iterator]:
        """A streaming handler that holds the session's run while `handler` runs, or yields `refuse(error)` once
        when the session already holds one.

        The returned function takes `handler`'s parameters plus a last one, `request: gr.Request`, which Gradio
        fills itself (it is not an API parameter). The run is released when the handler finishes, fails, or is
        closed (Stop cancels the event and closes the generator).
        """
        signature = inspect.signature(handler)
        request_param = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                          annotation=gr.Request)

        def guarded(*args: Any) -> Iterator:
            *values, request = args
            session = getattr(request, "session_hash", None)
            if not self.try_acquire(session):
                yield refuse(SessionBusyError(BUSY_MESSAGE))
                return
            try:
                yield from handler(*values)
            finally:
                self.release(session)

        guarded.__signature__ = signature.replace(parameters=[*signature.parameters.values(), request_param])
        guarded.__annotations__ = {"request": gr.Request}  # how Gradio finds the parameter it fills
        guarded.__name__ = getattr(handler, "__name__", "guarded")
        guarded.__doc__ = handler.__doc__
        return guarded
