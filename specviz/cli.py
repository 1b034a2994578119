"""Command line: `specviz run`, `strategies`, and the tools in `TOOLS` (bench, bench-memory, load-test, gpu-check, train-*).

User mistakes (bad parameters, empty prompts, unknown models) print one line to stderr and exit
with status 2; nothing prints a traceback for them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sqlite3
import sys

from engine import EMBEDDED_DEFAULT, ModelCache, SamplingConfig, SpecVizError, describe_strategies, parse_strategy
from engine.devices import resolve_device
from engine.errors import ConfigError

from .limits import MAX_PROMPT_CHARS
from .runner import RunRequest, Runner, read_document_file, read_text_file
from .store import RunStore, default_db_path

EXIT_USAGE = 2
# Subcommands with their own argument parser: name -> (module with main(argv) -> exit status, one-line help)
TOOLS: dict[str, tuple[str, str]] = {
    "bench": (".bench", "benchmark strategies on the prompt suite"),
    "bench-memory": (".memory_bench", "resident memory per strategy and over many runs in one process"),
    "load-test": (".load_test", "a room of concurrent API users pressing Run"),
    "bench-page": (".page_timing", "a visitor's waits in a real browser: first moving step, Run to first token"),
    "gpu-check": (".gpu_check", "run a hub-free model on a CUDA device: greedy identity and timings"),
    "record-traces": (".traces", "re-record the traces the page and the lessons replay (assets/traces)"),
    "train-drafter": (".training.distill", "train small drafters for a target"),
    "train-predictor": (".training.predictor", "fit SpecDec++'s acceptance predictor"),
    "train-heads": (".training.heads", "train the EAGLE and Medusa draft heads"),
    "train-diffusion": (".training.diffusion", "train the masked-diffusion drafter"),
}


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2
        self.exit(EXIT_USAGE, f"specviz: error: {message}\n")


def _parse_params(items: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--param", f"expected key=value, got {item!r}")
        params[key.strip()] = value.strip()
    return params


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="specviz", description="SpecViz: a lab for speculative decoding.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="generate text with one strategy and log the run")
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="prompt text")
    source.add_argument("--prompt-file", help="read the prompt text from this file")
    run.add_argument("--strategy", required=True, help="strategy name (see `specviz strategies`)")
    run.add_argument("--target", default=EMBEDDED_DEFAULT, help=f"target model: hub id or folder (default {EMBEDDED_DEFAULT})")
    run.add_argument("--drafter", help="drafter model for draft_model: hub id, folder, or early-exit:N")
    run.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N",
                     help="where the models run (default auto: CUDA when this machine has it, else the CPU)")
    run.add_argument("--document", metavar="FILE", help="UTF-8 text file attached to the run, for retrieval drafting (rasd, rasd_tree)")
    run.add_argument("--max-new-tokens", type=int, default=128)
    run.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    run.add_argument("--top-k", type=int, default=0)
    run.add_argument("--top-p", type=float, default=1.0)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="strategy parameter (repeatable)")
    run.add_argument("--raw", action="store_true", help="do not apply the chat template")
    run.add_argument("--db", help=f"SQLite log (default $SPECVIZ_DB or {default_db_path()})")
    run.add_argument("--json", action="store_true", help="print one JSON object instead of text")

    strategies = sub.add_parser("strategies", help="list strategies and their parameters")
    strategies.add_argument("--json", action="store_true")

    for name, (_module, help_text) in TOOLS.items():
        sub.add_parser(name, help=f"{help_text} (specviz {name} --help)", add_help=False)
    return parser


def _read_prompt(args: argparse.Namespace) -> str:
    """--prompt, or the UTF-8 text of --prompt-file (a clear error for a missing, binary or huge file)."""
    if args.prompt_file is None:
        return args.prompt
    # at most 4 bytes per character: the character limit itself is the runner's (RunLimits.check_prompt)
    return read_text_file(args.prompt_file, "--prompt-file", 4 * MAX_PROMPT_CHARS, name=repr(args.prompt_file))


def _open_store(path: str | None) -> RunStore:
    """The run log, or a clear error for a --db that is a folder, not a SQLite file, or not writable."""
    try:
        return RunStore(path)
    except (sqlite3.Error, OSError) as exc:
        shown = repr(path) if path else "the default run log"
        raise ConfigError("--db", f"cannot open {shown} as a SQLite run log: {exc}") from None


def cmd_run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device, "--device")  # before anything is loaded or logged
    params = _parse_params(args.param)
    if args.drafter is not None:
        params["drafter"] = args.drafter
    strategy = parse_strategy(args.strategy, params)
    sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    request = RunRequest(
        prompt=_read_prompt(args), strategy=strategy, sampling=sampling, max_new_tokens=args.max_new_tokens,
        target=args.target, raw=args.raw, source="cli", device=device,
        document=None if args.document is None else read_document_file(args.document, name=repr(args.document)),
    )
    runner = Runner(ModelCache(), _open_store(args.db))
    progress = None if args.json else (lambda message: print(message, file=sys.stderr))
    prepared = runner.prepare(request, progress=progress)
    last = None
    for update in runner.stream(prepared):
        last = update
        if not args.json:
            print("".join(t.text for t in update.event.new_tokens), end="", flush=True)
    assert last is not None
    text = prepared.tokenizer.decode(last.token_ids, skip_special_tokens=True)
    m = last.metrics
    if args.json:
        metrics = {
            key: getattr(m, key)
            for key in ("new_tokens", "steps", "target_forwards", "drafted", "accepted", "acceptance_rate",
                        "mean_acceptance_length", "per_position_acceptance", "wall_s", "tokens_per_s")
        }
        print(json.dumps({
            "run_id": last.run_id, "strategy": strategy.name, "text": text, "token_ids": last.token_ids,
            "finished": last.done, "stop_reason": last.event.stop_reason, "metrics": metrics,
        }, ensure_ascii=False))
    else:
        rate = "n/a" if m.acceptance_rate is None else f"{m.acceptance_rate:.2f}"
        print(
            f"\n\n[run {last.run_id}] {strategy.label()}: {m.new_tokens} tokens in {m.steps} steps, "
            f"{m.wall_s:.2f} s ({m.tokens_per_s:.1f} tok/s), acceptance rate {rate}, "
            f"mean acceptance length {m.mean_acceptance_length:.2f}, stop: {last.event.stop_reason}",
            file=sys.stderr,
        )
    return 0


def cmd_strategies(args: argparse.Namespace) -> int:
    items = describe_strategies()
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    for s in items:
        flag = "lossless" if s["lossless"] else "LOSSY"
        params = ", ".join(f"{k}={v['default']}" for k, v in s["parameters"].items()) or "no parameters"
        print(f"{s['name']:<15} [{flag}] {s['description']}\n{'':<16}{params}")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] and argv[0] in TOOLS:  # these have their own argument parsers
            module = importlib.import_module(TOOLS[argv[0]][0], __package__)
            return module.main(argv[1:])
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # argparse's usage errors and --help
            return int(exc.code or 0)
        if args.command == "run":
            return cmd_run(args)
        if args.command == "strategies":
            return cmd_strategies(args)
    except SpecVizError as exc:
        print(f"specviz: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("specviz: interrupted; the run is logged as unfinished", file=sys.stderr)
        return 130
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
