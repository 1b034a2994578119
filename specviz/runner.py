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
from engine.errors import ConfigError

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


def new_group_id() -> str:
    return uuid.uuid4().hex[:12]


MAX_DOCUMENT_BYTES = 1_000_000  # an attached document, UTF-8 (about 200k tokens: tokenised and indexed in seconds)


def _check_document_size(size: int, what: str) -> None:
    if size > MAX_DOCUMENT_BYTES:
        raise ConfigError("document", f"{what} is {size / 1e6:.1f} MB; the limit is {MAX_DOCUMENT_BYTES / 1e6:g} MB")


def read_document_file(path: str | os.PathLike) -> str:
    """A text file to attach as a run's document: UTF-8 text of at most MAX_DOCUMENT_BYTES."""
    name = os.path.basename(path)
    try:
        _check_document_size(os.path.getsize(path), name)
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError("document", f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("document", f"{name} is not a UTF-8 text file") from None
    if "\x00" in text:
        raise ConfigError("document", f"{name} looks like a binary file, not text")
    return text


class Runner:
    def __init__(self, models: ModelCache, store: RunStore | None = None):
        self.models = models
        self.store = store

    def prepare(self, request: RunRequest, progress=None) -> PreparedRun:
        check_max_new_tokens(request.max_new_tokens)
        if request.document is not None:
            _check_document_size(len(request.document.encode("utf-8")), "the document")
        target = self.models.get(request.target, progress=progress)
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
            for event in prepared.decoder.generate(prepared.prompt_ids, request.max_new_tokens):
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
