"""Loading the live model in the background while the page shows a recorded run.

One `ModelWarmup` per app: the first page load starts it (later ones find it running or done); a worker
thread prepares the Playground's default run (target, drafter, decoder, and the kernels' first calls) and
decodes two tokens, without logging anything, so that the first Run a person presses pays no load. The
page polls `badge_html()` for its progress.
"""

from __future__ import annotations

import threading
import time

from specviz.compare import describe_error
from specviz.runner import RunRequest, Runner

from . import render

WARMUP_PROMPT = "Hello"
WARMUP_TOKENS = 2


class ModelWarmup:
    """`runner`: a Runner without a store (a warm-up is not a run anyone asked for); `request`: the run to prepare."""

    def __init__(self, runner: Runner, request: RunRequest):
        self.runner = runner
        self.request = request
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._message = "waiting for the first visitor"
        self._state = "idle"  # idle | loading | ready | failed
        self._seconds: float | None = None

    @property
    def state(self) -> str:
        return self._state

    def start(self) -> None:
        """Start loading once (idempotent, thread-safe)."""
        with self._lock:
            if self._thread is not None:
                return
            self._state, self._message = "loading", "starting"
            self._thread = threading.Thread(target=self._work, name="specviz-warmup", daemon=True)
            self._thread.start()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the warm-up has ended (tests, benchmarks); True when it has."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
        return self._state in ("ready", "failed")

    def _work(self) -> None:
        start = time.perf_counter()
        try:
            prepared = self.runner.prepare(self.request, progress=self._progress)
            self._message = "first forward passes"
            for _ in prepared.decoder.generate(prepared.prompt_ids, WARMUP_TOKENS):
                pass
            self._seconds = time.perf_counter() - start
            self._state, self._message = "ready", "ready"
        except Exception as exc:  # the page says so; a Run will report the same problem in full
            self._state, self._message = "failed", describe_error(exc)

    def _progress(self, message: object) -> None:
        self._message = str(message)

    def badge_html(self) -> str:
        """One line for the page: what the live model is doing."""
        if self._state == "ready":
            took = f" (loaded in {self._seconds:.0f} s)" if self._seconds is not None else ""
            return render.status_html(f"Live model ready{took}: press Run for a live run.", "ok")
        if self._state == "failed":
            return render.status_html(f"The live model could not be loaded: {self._message}", "error")
        return render.status_html(f"Loading the live model in the background… {self._message}", "running")
