"""The project's own prompt suite (assets/prompts.jsonl), by category: tests, benchmarks, UI examples."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
PROMPT_SUITE = ASSETS / "prompts.jsonl"


@dataclass(frozen=True)
class SuitePrompt:
    id: str
    category: str
    prompt: str
    max_new_tokens: int


def load_prompt_suite(path: Path = PROMPT_SUITE) -> list[SuitePrompt]:
    with open(path, encoding="utf-8") as f:
        return [SuitePrompt(**json.loads(line)) for line in f if line.strip()]


def by_category(prompts: list[SuitePrompt]) -> dict[str, list[SuitePrompt]]:
    out: dict[str, list[SuitePrompt]] = {}
    for p in prompts:
        out.setdefault(p.category, []).append(p)
    return out
