"""Compare: several runs of one request, raced side by side (no Gradio here; the Compare tab consumes it).

A `CompareRace` takes named sides, each a `RunRequest`. `prepare()` prepares them one at a time
(model loads and tokenizers stay single-threaded) and yields progress messages; `updates()` (or
`batches()`, what arrived since the last batch) then streams them, concurrently (one thread per
side) or one after another (one thread for all), and yields a typed `SideUpdate` per step, error
and close, keeping each side's `SideResult` current. `stop()` (or closing the generator) asks every
side to stop after its current step; each then closes its stream, so its run is logged "stopped"
unless it finished. An error on one side ends that side only.

Example (greedy, so every lossless side produces the same tokens):

    race = CompareRace(runner, [RaceSide("A", ar_request), RaceSide("B", lookup_request)])
    for side, message in race.prepare(): ...     # ("A", "loading ..."), ...
    for update in race.updates(): ...            # SideUpdate("B", step=RunUpdate(...)), ..., SideUpdate("A", closed=True)
    race.results["A"].token_ids == race.results["B"].token_ids
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import re
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from engine import RunMetrics, SpecVizError, StepEvent, StrategyConfig, parse_strategy

from .runner import PreparedRun, RunRequest, Runner, RunUpdate

log = logging.getLogger("specviz.compare")

Mode = Literal["concurrent", "sequential"]
T = TypeVar("T")
BASELINE = "baseline"  # the name of the extra `ar` side added when no side is `ar`


# An absolute path of the server: POSIX (at least two segments, not inside a URL or a relative path such as
# ./model or tokens/s) or Windows (C:\...). Group "last" is its last component.
_SEGMENT = r"[^\s'\"`,;:()\[\]{}<>/\\]+"
_POSIX_PATH = re.compile(rf"(?:~|(?<![\w.:/\\~-]))/{_SEGMENT}(?:/{_SEGMENT})*/(?P<last>{_SEGMENT})")
_WINDOWS_PATH = re.compile(rf"(?<![\w])[A-Za-z]:\\(?:{_SEGMENT}\\)*(?P<last>{_SEGMENT})")


def redact_paths(text: str) -> str:
    """The text with every absolute server path cut to its last component ("…/config.json"): messages shown to a
    visitor must not reveal where the server keeps its files. Relative paths and URLs are kept."""
    def keep_last(match: re.Match) -> str:
        return f"…/{match.group('last')}"

    return _WINDOWS_PATH.sub(keep_last, _POSIX_PATH.sub(keep_last, text))


def describe_error(exc: BaseException) -> str:
    """A message for the person: a SpecVizError's own text; anything else is logged and summarised. Absolute
    server paths are redacted (`redact_paths`); the server log keeps the full error."""
    if isinstance(exc, SpecVizError):
        return redact_paths(str(exc))
    log.exception("unexpected error", exc_info=exc)
    return redact_paths(f"internal error ({type(exc).__name__}): {exc}".strip())


_DONE = object()


def prepare_in_thread(runner: Runner, request: RunRequest,
                      as_update: Callable[[str], T] = str) -> Generator[T, None, PreparedRun]:
    """Runner.prepare in a worker thread; yields as_update(message) for each progress message as it comes (a
    streaming caller shows them while models load), returns the PreparedRun or raises what prepare raised."""
    messages: queue.Queue = queue.Queue()
    box: dict = {}

    def work() -> None:
        try:
            box["prepared"] = runner.prepare(request, progress=lambda m: messages.put(str(m)))
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc
        finally:
            messages.put(_DONE)

    threading.Thread(target=work, name="specviz-prepare", daemon=True).start()
    while (message := messages.get()) is not _DONE:
        yield as_update(message)
    if "error" in box:
        raise box["error"]
    return box["prepared"]


def with_ar_baseline(sides: Sequence[tuple[str, StrategyConfig]]) -> tuple[list[tuple[str, StrategyConfig]], str]:
    """The sides, plus an extra `ar` side named BASELINE when none is `ar`; and the side speedups are measured
    against (the first `ar` side, else that extra one)."""
    sides = list(sides)
    baseline = next((name for name, strategy in sides if strategy.name == "ar"), None)
    if baseline is None:
        return sides + [(BASELINE, parse_strategy("ar"))], BASELINE
    return sides, baseline


@dataclass(frozen=True)
class RaceSide:
    name: str  # "A", "B", BASELINE, ...
    request: RunRequest


@dataclass
class SideResult:
    """One side's run so far, as the updates consumed up to now tell it."""

    label: str  # the strategy's label
    status: str = "waiting"  # waiting -> running -> finished | stopped | error ("waiting" if stopped before it began)
    events: list[StepEvent] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    run_id: int | None = None
    metrics: RunMetrics | None = None
    error: str | None = None  # describe_error's message

    @property
    def running(self) -> bool:
        return self.status == "running"


@dataclass(frozen=True)
class SideUpdate:
    """One thing that happened to one side: a step, an error or its close (exactly one of the three)."""

    side: str
    step: RunUpdate | None = None  # a step: step.event is the new event; step.events / token_ids the run so far
    error: BaseException | None = None  # the side failed; its run is logged "error" (a close follows)
    closed: bool = False  # the side's stream is closed: finished, stopped, failed, or stopped before it began

    @property
    def kind(self) -> Literal["step", "error", "closed"]:
        return "step" if self.step is not None else ("error" if self.error is not None else "closed")


class CompareRace:
    """Runs N sides of a comparison; see the module docstring. Single use: prepare, then consume updates."""

    def __init__(self, runner: Runner, sides: Sequence[RaceSide], mode: Mode = "concurrent"):
        names = [side.name for side in sides]
        if len(set(names)) != len(names):
            raise ValueError(f"side names must be unique: {names}")
        self.runner = runner
        self.sides = list(sides)
        self.mode: Mode = "sequential" if mode == "sequential" else "concurrent"
        self.results = {side.name: SideResult(side.request.strategy.label()) for side in sides}
        self.threads: list[threading.Thread] = []
        self._prepared: dict[str, PreparedRun] = {}
        self._queue: queue.Queue[SideUpdate] = queue.Queue()
        self._stop = threading.Event()

    def prepare(self) -> Iterator[tuple[str, str]]:
        """Prepare every side in turn, yielding (side, progress message); a failure raises (nothing has run)."""
        for side in self.sides:
            self._prepared[side.name] = yield from prepare_in_thread(
                self.runner, side.request, lambda message, name=side.name: (name, message))

    def stop(self) -> None:
        """Ask every side to stop after its current step (sides not yet begun never begin)."""
        self._stop.set()

    def join(self, timeout_s: float = 10.0) -> bool:
        """Wait for the side threads to end; True if they all did."""
        for thread in self.threads:
            thread.join(timeout_s)
        return not any(thread.is_alive() for thread in self.threads)

    def updates(self, poll_s: float = 0.5) -> Iterator[SideUpdate]:
        for batch in self.batches(poll_s):
            yield from batch

    def batches(self, poll_s: float = 0.5) -> Iterator[list[SideUpdate]]:
        """Start the sides; yield every update that arrived since the last batch until every side is closed.

        Closing this generator stops the sides but does not wait for them (a caller on an event loop must not
        block): `join()` does.
        """
        if len(self._prepared) != len(self.sides) or self.threads:
            raise RuntimeError("prepare() every side first; a race runs once")
        self._start_threads()
        open_sides = {side.name for side in self.sides}
        try:
            while open_sides:
                try:
                    batch = [self._queue.get(timeout=poll_s)]
                except queue.Empty:
                    continue
                while not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                for update in batch:
                    self._apply(update)
                    if update.closed:
                        open_sides.discard(update.side)
                yield batch
        finally:
            self._stop.set()  # finished, or closed by the consumer: the threads end after their current step

    # -- inside --------------------------------------------------------------------------------------------

    def _start_threads(self) -> None:
        names = [side.name for side in self.sides]
        if self.mode == "concurrent":
            self.threads = [threading.Thread(target=self._drive, args=(name,), name=f"specviz-compare-{name}",
                                             daemon=True) for name in names]
        else:
            self.threads = [threading.Thread(target=self._drive_all, args=(names,), name="specviz-compare-seq",
                                             daemon=True)]
        for thread in self.threads:
            thread.start()

    def _drive_all(self, names: list[str]) -> None:
        for name in names:
            if self._stop.is_set():
                self._queue.put(SideUpdate(name, closed=True))
            else:
                self._drive(name)

    def _drive(self, name: str) -> None:
        """One side's stream, in its own thread; every update goes to the queue, a close always last."""
        self.results[name].status = "running"
        stream = self.runner.stream(self._prepared[name])
        try:
            for update in stream:
                # a snapshot: the runner keeps appending to its own lists
                self._queue.put(SideUpdate(name, step=dataclasses.replace(
                    update, events=list(update.events), token_ids=list(update.token_ids))))
                if self._stop.is_set():
                    break
        except Exception as exc:  # reported as an update; the other sides go on
            self._queue.put(SideUpdate(name, error=exc))
        finally:
            stream.close()  # marks the run "stopped" in the log unless it finished or failed
            self._queue.put(SideUpdate(name, closed=True))

    def _apply(self, update: SideUpdate) -> None:
        result = self.results[update.side]
        if update.step is not None:
            step = update.step
            result.events, result.token_ids = step.events, step.token_ids
            result.run_id, result.metrics = step.run_id, step.metrics
            if step.done:
                result.status = "finished"
        elif update.error is not None:
            result.status, result.error = "error", describe_error(update.error)
        elif result.status == "running":
            result.status = "stopped"
