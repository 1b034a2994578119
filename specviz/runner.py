"""Runs as a person starts them (CLI, UI, benchmark): validate, load models, stream and log.

`Runner.prepare` does everything that can fail on bad input (strategy, sampling, prompt, models)
before anything is logged; `Runner.stream` consumes the engine's event stream, writes every step
to the SQLite log as it happens, and marks the run finished, stopped (the consumer stopped
iterating) or errored.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from engine import (
    EMBEDDED_DEFAULT,
    ModelCache,
    RunMetrics,
    SamplingConfig,
    SpeculativeDecoder,
    StepEvent,
    StrategyConfig,
    build_decoder,
    check_max_new_tokens,
    encode_prompt,
)
from engine.devices import resolve_device
from engine.errors import ConfigError

from .gpu import on_gpu
from .limits import MAX_DOCUMENT_BYTES, SQLITE_MAX_INT, RunLimits, check_text, size_limit_text, size_text
from .store import RunStore


@dataclass(frozen=True)
class RunRequest:
    prompt: str
    strategy: StrategyConfig
    sampling: SamplingConfig = SamplingConfig()
    max_new_tokens: int = 128
    target: str = EMBEDDED_DEFAULT
    raw: bool = False  # True: no chat template
    source: str = "cli"  # who started it: cli | ui | bench
    group_id: str | None = None  # links the runs of one comparison or benchmark
    document: str | None = None  # text attached to the run for retrieval drafting (rasd, rasd_tree); others ignore it
    device: str = "auto"  # where the models run: auto (CUDA when present, else the CPU) | cpu | cuda | cuda:N


@dataclass
class PreparedRun:
    request: RunRequest
    decoder: SpeculativeDecoder
    prompt_ids: list[int]

    @property
    def tokenizer(self):
        return self.decoder.target.tokenizer


@dataclass
class RunUpdate:
    """What a consumer sees after each step: the event plus the run's state so far."""

    run_id: int | None
    event: StepEvent
    events: list[StepEvent]
    token_ids: list[int]
    done: bool
    metrics: RunMetrics = field(repr=False)


@on_gpu
def generate_steps(decoder: SpeculativeDecoder, prompt_ids: list[int], max_new_tokens: int) -> Iterator[StepEvent]:
    """A run's model work: the decoder's event stream (inside `spaces.GPU` on a ZeroGPU Space, see specviz.gpu)."""
    yield from decoder.generate(prompt_ids, max_new_tokens)


def new_group_id() -> str:
    return uuid.uuid4().hex[:12]


MIN_SAMPLING_VALUE = 1e-6  # the smallest temperature (other than 0, greedy) and top_p a run takes


def read_text_file(path: str | os.PathLike, field: str, max_bytes: int, name: str | None = None) -> str:
    """A UTF-8 text file of at most max_bytes, or a ConfigError for `field`. Messages call the file `name`
    (default: its base name, never the folder it sits in: an uploaded file's folder is the server's)."""
    name = os.path.basename(path) if name is None else name
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise ConfigError(field, f"{name} is {size_text(size)}; the limit is {size_limit_text(max_bytes)}")
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as exc:
        raise ConfigError(field, f"cannot read {name}: {exc.strerror or type(exc).__name__}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(field, f"{name} is not a UTF-8 text file") from None
    if "\x00" in text:
        raise ConfigError(field, f"{name} looks like a binary file, not text (it contains NUL bytes)")
    return text


def check_output_file(path: str | os.PathLike, field: str) -> None:
    """A ConfigError now, before a long job, unless `path` can be written at its end: not a folder, in a folder
    that exists and is writable."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ConfigError(field, f"{os.fspath(path)!r} is a folder; give a file name")
    if not os.path.isdir(folder):
        raise ConfigError(field, f"the folder of {os.fspath(path)!r} does not exist")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ConfigError(field, f"{os.fspath(path)!r} is not writable")


def read_document_file(path: str | os.PathLike, max_bytes: int = MAX_DOCUMENT_BYTES, name: str | None = None) -> str:
    """A text file to attach as a run's document: UTF-8 text of at most max_bytes (see read_text_file)."""
    return read_text_file(path, "document", max_bytes, name)


class Runner:
    """`limits`: what a run may ask for (specviz.limits; a public Space's are tighter), checked in `prepare`."""

    def __init__(self, models: ModelCache, store: RunStore | None = None, limits: RunLimits = RunLimits()):
        self.models = models
        self.store = store
        self.limits = limits

    def check_request(self, request: RunRequest) -> None:
        """Every input of the request that no model is needed for, against `limits`: a ConfigError / PromptError
        with a message for the person, before anything is loaded or logged."""
        limits = self.limits
        limits.check_max_new_tokens(check_max_new_tokens(request.max_new_tokens))
        limits.check_prompt(request.prompt)
        limits.check_document(request.document)
        limits.check_target(request.target)
        limits.check_drafter(getattr(request.strategy, "drafter", None))
        sampling = request.sampling
        for name in ("seed", "top_k"):  # the log stores them as SQLite integers
            value = getattr(sampling, name)
            if value > SQLITE_MAX_INT:
                raise ConfigError(name, f"must be an integer in [0, {SQLITE_MAX_INT:,}], got {value:,}")
        # below these, float32 division and cumulative sums break down (NaN probabilities mid-run)
        if 0 < sampling.temperature < MIN_SAMPLING_VALUE:
            raise ConfigError("temperature", f"must be 0 (greedy) or at least {MIN_SAMPLING_VALUE:g}, "
                                             f"got {sampling.temperature!r}")
        if sampling.top_p < MIN_SAMPLING_VALUE:
            raise ConfigError("top_p", f"must be at least {MIN_SAMPLING_VALUE:g} (top_k=1 keeps only the top token), "
                                       f"got {sampling.top_p!r}")
        if request.group_id is not None:
            check_text("group_id", request.group_id)

    def prepare(self, request: RunRequest, progress=None) -> PreparedRun:
        self.check_request(request)
        device = resolve_device(request.device)  # a device this machine lacks fails here, before any loading
        target = self.models.get(request.target, progress=progress, device=device)
        prompt_ids = encode_prompt(target.tokenizer, request.prompt, raw=request.raw)
        decoder = build_decoder(
            request.strategy, target, self.models, request.sampling, progress=progress, document=request.document
        )
        decoder.check_prompt(prompt_ids)
        return PreparedRun(request, decoder, prompt_ids)

    def stream(self, prepared: PreparedRun) -> Iterator[RunUpdate]:
        """Run, logging each step; closing this generator marks the run "stopped"."""
        request = prepared.request
        run_id = None
        if self.store is not None:
            run_id = self.store.start_run(
                strategy=request.strategy,
                sampling=request.sampling,
                target=request.target,
                drafter=getattr(request.strategy, "drafter", None),
                prompt=request.prompt,
                prompt_tokens=len(prepared.prompt_ids),
                max_new_tokens=request.max_new_tokens,
                raw_prompt=request.raw,
                source=request.source,
                group_id=request.group_id,
                document=request.document,
            )
        events: list[StepEvent] = []
        token_ids: list[int] = []
        status, error = "stopped", None
        try:
            for event in generate_steps(prepared.decoder, prepared.prompt_ids, request.max_new_tokens):
                if self.store is not None:
                    self.store.log_step(run_id, event, first_seq=len(token_ids))
                events.append(event)
                token_ids.extend(t.token_id for t in event.new_tokens)
                done = event.stop_reason is not None
                if done:
                    status = "finished"
                yield RunUpdate(run_id, event, events, token_ids, done, RunMetrics.from_events(events))
        except Exception as exc:  # logged as an error run, then re-raised for the caller to report
            status, error = "error", str(exc) or type(exc).__name__
            raise
        finally:
            if self.store is not None:
                self.store.finish_run(
                    run_id,
                    status=status,
                    token_ids=token_ids,
                    text=prepared.tokenizer.decode(token_ids, skip_special_tokens=True),
                    metrics=RunMetrics.from_events(events) if events else None,
                    stop_reason=events[-1].stop_reason if events else None,
                    error=error,
                )
