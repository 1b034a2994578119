"""Memory benchmark: resident memory of one serving process, per strategy and over many runs.

    specviz bench-memory                       # every strategy once, then 100 runs cycling through them
    specviz bench-memory --runs 100 --max-new-tokens 24 --json memory.json

What it measures, in one process that runs strategies the way the app does (a `Runner` with a
bounded `ModelCache` and a SQLite `RunStore`, every step logged):
1. resident memory (VmRSS) after importing, after loading the target, and after the first run of
   each strategy (drafters and heads load then: the model cache holds at most --max-models models);
2. a warm pass over every strategy, then --runs more runs cycling through them: the growth from the
   end of the warm pass to the end is the figure that must stay small (a leak grows with runs);
3. what the resident memory is made of: parameters of each cached model, the packed (oneDNN)
   weight copies the calibrated linears keep beside them, and what the model cache holds.

Resident memory is read from /proc/self/status after `gc.collect()` and glibc's `malloc_trim(0)`
(freed heap pages go back to the system, so the figure is what is held, not the allocator's slack).
Linux only.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from engine import EMBEDDED_DEFAULT, ModelCache, SamplingConfig, SpecVizError, describe_strategies, parse_strategy
from engine.loading.linear_kernels import PackedLinear

from .prompts import load_prompt_suite
from .runner import RunRequest, Runner
from .store import RunStore

MB = 1024 * 1024


def resident_bytes() -> int:
    """This process's resident memory (VmRSS), after freeing what Python and the C heap can give back."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the figure then includes the allocator's slack
        pass
    return _status_bytes("VmRSS")


def _status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS: resident now, VmHWM: its peak)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def model_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """(parameter bytes, bytes of packed weight copies) of one model; shared Parameters counted once."""
    params = {id(p): p.numel() * p.element_size() for p in model.parameters()}
    packed = sum(
        m._packed.numel() * 4  # float32 weights in oneDNN's blocked layout (same element count)
        for m in model.modules()
        if isinstance(m, PackedLinear) and m._packed is not None
    )
    return sum(params.values()), packed


@dataclass
class StrategyMemory:
    strategy: str
    resident_mb: float  # after this strategy's first run
    delta_mb: float  # over the previous strategy's figure
    run_s: float
    cached_models: list[str]


def _cached(models: ModelCache) -> list[str]:
    return [spec for spec, _device, _model in models.loaded()]


def _breakdown(models: ModelCache) -> list[dict]:
    rows = []
    for spec, device, loaded in models.loaded():
        params, packed = model_bytes(loaded.model)
        rows.append({"model": spec, "device": device, "parameters_mb": round(params / MB, 1),
                     "packed_copies_mb": round(packed / MB, 1)})
    return rows


def measure(strategies: list[str], runs: int, max_new_tokens: int, max_models: int, target: str) -> dict:
    """Run the benchmark (see the module docstring); returns the figures as a JSON-able dict."""
    started = time.perf_counter()
    figures: dict = {"strategies": strategies, "runs": runs, "max_new_tokens": max_new_tokens,
                     "max_models": max_models, "torch_threads": torch.get_num_threads()}
    figures["imported_mb"] = round(resident_bytes() / MB, 1)
    models = ModelCache(max_models=max_models)
    models.get(target)
    figures["target_loaded_mb"] = round(resident_bytes() / MB, 1)
    prompts = [p.prompt for p in load_prompt_suite()]
    with tempfile.TemporaryDirectory(prefix="specviz-memory-") as tmp:
        runner = Runner(models, RunStore(Path(tmp) / "runs.db"))

        def run(name: str, i: int) -> None:
            request = RunRequest(prompts[i % len(prompts)], parse_strategy(name), SamplingConfig(),
                                 max_new_tokens, target, source="bench", document=prompts[i % len(prompts)])
            for _ in runner.stream(runner.prepare(request)):
                pass

        # 1. each strategy's first run
        per_strategy, before = [], figures["target_loaded_mb"]
        for i, name in enumerate(strategies):
            t0 = time.perf_counter()
            run(name, i)
            now = round(resident_bytes() / MB, 1)
            per_strategy.append(StrategyMemory(name, now, round(now - before, 1), round(time.perf_counter() - t0, 2),
                                               _cached(models)))
            before = now
        figures["per_strategy"] = [asdict(row) for row in per_strategy]
        # 2. a warm pass, then `runs` more: the growth between the two is what a leak would show
        for i, name in enumerate(strategies):
            run(name, i + 1)
        warm = resident_bytes()
        samples = []
        for i in range(runs):
            run(strategies[i % len(strategies)], i + 2)
            if (i + 1) % max(1, runs // 10) == 0:
                samples.append([i + 1, round(resident_bytes() / MB, 1)])
        end = resident_bytes()
        figures.update(warm_mb=round(warm / MB, 1), end_mb=round(end / MB, 1), growth_mb=round((end - warm) / MB, 1),
                       samples=samples, logged_runs=runner.store.db["runs"].count)
    figures["model_cache"] = _breakdown(models)
    figures["peak_mb"] = round(_status_bytes("VmHWM") / MB, 1)
    figures["wall_s"] = round(time.perf_counter() - started, 1)
    return figures


def markdown(figures: dict) -> str:
    lines = [
        f"Resident memory: {figures['imported_mb']:.0f} MB after imports, {figures['target_loaded_mb']:.0f} MB with the "
        f"target loaded; peak {figures['peak_mb']:.0f} MB; model cache bound: {figures['max_models']} models.",
        "",
        "| strategy (first run) | resident MB | change MB | run s | model cache |",
        "|---|---|---|---|---|",
    ]
    for row in figures["per_strategy"]:
        lines.append(f"| `{row['strategy']}` | {row['resident_mb']:.0f} | {row['delta_mb']:+.0f} | {row['run_s']:.1f} | "
                     f"{', '.join(row['cached_models'])} |")
    lines += [
        "",
        f"{figures['runs']} more runs after a warm pass: {figures['warm_mb']:.0f} MB -> {figures['end_mb']:.0f} MB "
        f"(growth {figures['growth_mb']:+.1f} MB); {figures['logged_runs']} runs logged.",
        "Samples (runs done, MB): " + ", ".join(f"{n}: {mb:.0f}" for n, mb in figures["samples"]),
        "",
        "| cached model | device | parameters MB | packed copies MB |",
        "|---|---|---|---|",
    ]
    for row in figures["model_cache"]:
        lines.append(f"| {row['model']} | {row['device']} | {row['parameters_mb']:.0f} | {row['packed_copies_mb']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="specviz bench-memory", description=__doc__.split("\n\n")[0])
    available = [d["name"] for d in describe_strategies() if d["name"] != "cross_vocab"]
    parser.add_argument("--strategies", default=",".join(available),
                        help="comma-separated strategies (default: all but cross_vocab, whose drafter is an optional extra)")
    parser.add_argument("--runs", type=int, default=100, help="runs after the warm pass (default 100)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--max-models", type=int, default=2, help="the model cache's bound (the app uses 2)")
    parser.add_argument("--target", default=EMBEDDED_DEFAULT)
    parser.add_argument("--json", default="", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    known = {d["name"] for d in describe_strategies()}
    unknown = [s for s in strategies if s not in known]
    if unknown or not strategies or args.runs < 0 or args.max_new_tokens < 1 or args.max_models < 1:
        print(f"specviz bench-memory: error: unknown strategies {unknown} or bad numbers" if unknown
              else "specviz bench-memory: error: --runs >= 0, --max-new-tokens >= 1, --max-models >= 1, one strategy at least",
              file=sys.stderr)
        return 2
    try:
        figures = measure(strategies, args.runs, args.max_new_tokens, args.max_models, args.target)
    except SpecVizError as exc:
        print(f"specviz bench-memory: error: {exc}", file=sys.stderr)
        return 2
    print(markdown(figures))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
