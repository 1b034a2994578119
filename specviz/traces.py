"""Recorded traces: real runs of the engine, shipped with the app as data and replayed without computing.

The page opens on one of them (the showcase) and the Learn tab teaches from them, so something moves
at once, before (and without) any model load. `specviz record-traces` re-records them all on this
machine (`TRACE_RECIPES`: prompt, strategy, sampling), writing one gzipped JSON file per trace to
`assets/traces/`: the run's settings as the log stores them (`RunSetup`), where and when it was
recorded, and every step event (`StepEvent.to_dict`).
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine import EMBEDDED_DEFAULT, SamplingConfig, StepEvent, StrategyConfig, parse_strategy

TRACES_DIR = Path(__file__).resolve().parents[1] / "assets" / "traces"
TRACE_FORMAT = 1


@dataclass(frozen=True)
class RunSetup:
    """What a run was asked to do, as the log's run row stores it: enough to re-create its context (what-if,
    fork) or to run it again. `params` are the strategy's parameters (`StrategyConfig.params()`)."""

    prompt: str
    strategy: str
    params: dict[str, Any] = field(default_factory=dict)
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    max_new_tokens: int = 64
    target: str = EMBEDDED_DEFAULT
    raw_prompt: bool = False
    document: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> RunSetup:
        """From a run row of the log (`RunStore.get_run`) or a trace file."""
        params = row.get("params") or {}
        return cls(prompt=row["prompt"], strategy=row["strategy"],
                   params=json.loads(params) if isinstance(params, str) else dict(params),
                   temperature=float(row.get("temperature") or 0.0), top_k=int(row.get("top_k") or 0),
                   top_p=float(row.get("top_p") if row.get("top_p") is not None else 1.0), seed=int(row.get("seed") or 0),
                   max_new_tokens=int(row.get("max_new_tokens") or 64), target=row.get("target") or EMBEDDED_DEFAULT,
                   raw_prompt=bool(row.get("raw_prompt")), document=row.get("document"))

    @classmethod
    def of(cls, prompt: str, strategy: StrategyConfig, sampling: SamplingConfig, max_new_tokens: int,
           target: str = EMBEDDED_DEFAULT, raw: bool = False, document: str | None = None) -> RunSetup:
        return cls(prompt, strategy.name, strategy.params(), sampling.temperature, sampling.top_k, sampling.top_p,
                   sampling.seed, max_new_tokens, target, raw, document)

    def strategy_config(self) -> StrategyConfig:
        return parse_strategy(self.strategy, self.params)

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, seed=self.seed)

    def label(self) -> str:
        return self.strategy_config().label()


@dataclass(frozen=True)
class RecordedTrace:
    name: str  # the file's stem, e.g. "showcase"
    title: str  # one line for people
    setup: RunSetup
    events: list[StepEvent]
    recorded: dict[str, Any]  # where and when: date, machine, torch threads, specviz commit-free version

    def to_json(self) -> dict[str, Any]:
        return {"format": TRACE_FORMAT, "name": self.name, "title": self.title, "setup": asdict(self.setup),
                "recorded": self.recorded, "events": [e.to_dict() for e in self.events]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RecordedTrace:
        if data.get("format") != TRACE_FORMAT:
            raise ValueError(f"unknown trace format {data.get('format')!r}")
        return cls(data["name"], data["title"], RunSetup(**data["setup"]),
                   [StepEvent.from_dict(e) for e in data["events"]], data.get("recorded") or {})

    @property
    def output_text(self) -> str:
        return "".join(t.text for e in self.events for t in e.new_tokens)


def save_trace(trace: RecordedTrace, folder: Path = TRACES_DIR) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{trace.name}.json.gz"
    tmp = path.with_suffix(".tmp")
    # mtime=0: the same trace gives the same bytes (no spurious diffs when re-recorded)
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(json.dumps(trace.to_json(), separators=(",", ":")).encode("utf-8"))
    os.replace(tmp, path)
    return path


def load_trace(path: Path) -> RecordedTrace:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return RecordedTrace.from_json(json.load(f))


def bundled_traces(folder: Path = TRACES_DIR) -> dict[str, RecordedTrace]:
    """Every trace shipped with the app, by name ({} when the folder is absent: the page then starts empty)."""
    out = {}
    for path in sorted(folder.glob("*.json.gz")):
        try:
            trace = load_trace(path)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a damaged file costs its trace, not the page
        out[trace.name] = trace
    return out


# -- recording ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TraceRecipe:
    name: str
    title: str
    prompt_id: str  # a prompt of the suite (assets/prompts.jsonl)
    strategy: str
    params: dict[str, Any] = field(default_factory=dict)
    temperature: float = 0.0
    seed: int = 0
    max_new_tokens: int = 64


# What the page and the lessons replay (prompts from the suite, by id). The same prompt where two traces are
# meant to be compared.
TRACE_RECIPES: tuple[TraceRecipe, ...] = (
    TraceRecipe("showcase", "hybrid_tree (EAGLE head + n-gram tree), greedy", "rag-01", "hybrid_tree"),
    TraceRecipe("chain_sampled", "draft_model, K = 4, sampled at temperature 0.8", "math-00", "draft_model", {"k": 4},
                temperature=0.8, seed=3, max_new_tokens=48),
    TraceRecipe("chain_greedy", "draft_model, K = 4, greedy", "math-00", "draft_model", {"k": 4}),
    TraceRecipe("chain_adaptive", "draft_model, heuristic draft length, greedy", "math-00", "draft_model",
                {"k": 4, "length_policy": "heuristic"}),
    TraceRecipe("chain_confidence", "draft_model, confidence-stopped draft length, greedy", "math-00", "draft_model",
                {"k": 4, "length_policy": "confidence"}),
    TraceRecipe("tree", "dynamic_tree (EAGLE-2-style tree from the drafter), greedy", "math-00", "dynamic_tree",
                {"depth": 4, "width": 3, "nodes": 10}),
    TraceRecipe("diffusion", "diffusion drafter with CPS path search, greedy", "math-00", "diffusion"),
    TraceRecipe("ar", "ar (no drafting: one target pass per token), greedy", "math-00", "ar"),
)


def machine_description() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"date": datetime.date.today().isoformat(), "cpu": cpu, "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def record(recipe: TraceRecipe, runner) -> RecordedTrace:
    """Run the recipe on the real engine (a `specviz.runner.Runner`) and keep every step."""
    from .prompts import load_prompt_suite
    from .runner import RunRequest

    prompt = next(p.prompt for p in load_prompt_suite() if p.id == recipe.prompt_id)
    strategy = parse_strategy(recipe.strategy, recipe.params)
    sampling = SamplingConfig(temperature=recipe.temperature, seed=recipe.seed)
    request = RunRequest(prompt=prompt, strategy=strategy, sampling=sampling,
                         max_new_tokens=recipe.max_new_tokens, source="trace", device="cpu")
    prepared = runner.prepare(request)
    events = []
    for update in runner.stream(prepared):
        events = update.events
    setup = RunSetup.of(prompt, strategy, sampling, recipe.max_new_tokens)
    return RecordedTrace(recipe.name, recipe.title, setup, list(events), machine_description())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="specviz record-traces", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated trace names (default: all)")
    parser.add_argument("--out", default=str(TRACES_DIR), help="folder to write the traces to")
    args = parser.parse_args(argv)
    wanted = [n for n in args.only.split(",") if n]
    unknown = sorted(set(wanted) - {r.name for r in TRACE_RECIPES})
    if unknown:
        parser.error(f"unknown trace(s) {', '.join(unknown)}; known: {', '.join(r.name for r in TRACE_RECIPES)}")
    from engine import ModelCache

    from .runner import Runner

    runner = Runner(ModelCache())
    for recipe in TRACE_RECIPES:
        if wanted and recipe.name not in wanted:
            continue
        trace = record(recipe, runner)
        path = save_trace(trace, Path(args.out))
        print(f"{recipe.name}: {len(trace.events)} steps, {sum(len(e.new_tokens) for e in trace.events)} tokens "
              f"-> {path} ({path.stat().st_size / 1000:.0f} kB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
