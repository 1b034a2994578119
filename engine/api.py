"""Encoding prompts and the non-streaming API (`build_decoder` lives in engine.builders).

`run_to_completion` consumes the same event stream the UI and the SQLite log consume.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.builders import build_decoder
from engine.decoding.driver import Decoder
from engine.errors import ConfigError, PromptError
from engine.events import StepEvent
from engine.metrics import RunMetrics

__all__ = ["RunResult", "build_decoder", "check_max_new_tokens", "encode_prompt", "run_to_completion"]

MAX_NEW_TOKENS_LIMIT = 4096


def check_max_new_tokens(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_NEW_TOKENS_LIMIT:
        raise ConfigError("max_new_tokens", f"must be an integer in [1, {MAX_NEW_TOKENS_LIMIT}], got {value!r}")
    return value


def encode_prompt(tokenizer, prompt: str, raw: bool = False) -> list[int]:
    """Token ids for a prompt: the chat template with one user message, unless raw or no template."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError("the prompt is empty")
    if not raw and getattr(tokenizer, "chat_template", None):
        return list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
        )
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


@dataclass
class RunResult:
    token_ids: list[int]
    text: str
    stop_reason: str | None
    metrics: RunMetrics
    events: list[StepEvent] = field(repr=False)


def run_to_completion(decoder: Decoder, prompt_ids: list[int], max_new_tokens: int) -> RunResult:
    events = list(decoder.generate(prompt_ids, check_max_new_tokens(max_new_tokens)))
    ids = [t.token_id for e in events for t in e.new_tokens]
    text = decoder.target.tokenizer.decode(ids, skip_special_tokens=True)
    return RunResult(ids, text, events[-1].stop_reason if events else None, RunMetrics.from_events(events), events)
