"""Benchmark: strategies x prompt-suite categories, and the engine against transformers.

    specviz bench                                   # every strategy + transformers' own, 1 prompt per category
    specviz bench --strategies ar,prompt_lookup,hf_prompt_lookup --per-category 3 --max-new-tokens 96
    specviz bench --reference                       # + our ar vs generate(), our draft_model vs assisted generation

Speedup = wall time of the `ar` baseline / wall time of the strategy, both measured in this one
run, on the same prompt, seed and machine, one after the other (never concurrently). Greedy
decoding unless --temperature is given; under greedy every row also says whether the text is
identical to the baseline. Results print as Markdown tables and optionally go to a JSON file.
Every run gets its prompt's passage as the attached document (see `prompt_passage`), which
retrieval drafting (rasd, rasd_tree) drafts from and the other strategies ignore.

Each prompt runs in interleaved rounds of [transformers generate() on an unmodified copy of the
target, `ar`, every strategy, every transformers row]; each keeps its fastest round.

Transformers' own speculative methods are rows of the same table, selectable in --strategies
like any strategy (and on by default), timed in the same rounds on the unmodified target:
- hf_prompt_lookup: generate(prompt_lookup_num_tokens=--hf-lookup-tokens) (default 10);
- hf_assisted: assisted generation with the project's distilled drafter as transformers runs it
  (an unmodified copy, plain nn.Linear), a constant K = --reference-k, no confidence cut-off.
They run under greedy decoding only (skipped, with a note, under --temperature). Their wall time
and text are known (`identical` compares their tokens with our ar's), their drafted and accepted
tokens are not: their acceptance columns read n/a.

Columns per (strategy, category) and per strategy overall (ALL):
- speedup vs ar, vs generate(): ratios of summed wall times over the group's prompts;
- vs generate() geomean: the geometric mean over prompts of generate()'s wall time / the row's,
  the project's headline figure ("speed relative to generate(), geometric mean over prompts");
- mean acc. length, acc. rate, cost ratio: from summed steps / drafted / accepted tokens;
- per position: acceptance rate at draft positions 1..6 (see `per_position`);
- oracle gap, target waiting, tok/s, identical.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from engine import (
    EMBEDDED_DEFAULT,
    LoadedModel,
    ModelCache,
    SamplingConfig,
    SpecVizError,
    build_decoder,
    encode_prompt,
    parse_strategy,
    run_to_completion,
)
from engine.api import RunResult
from engine.devices import model_device, resolve_device, synchronize
from engine.errors import ConfigError
from engine.metrics import worker_time
from engine.analysis.oracle import oracle_report
from engine.strategies import STRATEGIES

from .prompts import by_category, load_prompt_suite
from .runner import check_output_file


@dataclass
class Row:
    strategy: str
    category: str
    prompt_id: str
    new_tokens: int
    steps: int
    drafted: int
    accepted: int
    wall_s: float
    baseline_wall_s: float
    identical: bool | None
    per_position: list[float] = field(default_factory=list)
    draft_s: float = 0.0  # time spent drafting
    baseline_steps: int = 0  # steps (= target forward passes after the prefill) of the ar run
    oracle_gap: float = float("nan")  # 1 - tokens/s / the hindsight oracle's (engine.analysis.oracle), same cost model
    target_wait_s: float = float("nan")  # the target's idle time between phases (engine.metrics.worker_time)
    generate_wall_s: float = float("nan")  # transformers generate() on the unmodified model, same prompt and length


PER_POSITION_SHOWN = 6  # draft positions 1..6 in the summary's per-position acceptance


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else format(value, ".0%")


def _number(value: float, spec: str = ".2f", suffix: str = "") -> str:
    return "n/a" if math.isnan(value) else format(value, spec) + suffix


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _geomean(values: list[float]) -> float:
    """Geometric mean of the positive, finite values (nan when there are none)."""
    logs = [math.log(v) for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(logs) / len(logs)) if logs else float("nan")


def per_position(rows: list[Row]) -> list[float]:
    """Acceptance rate at draft positions 1..PER_POSITION_SHOWN over `rows`.

    At each position: the plain mean of the rate of every row that drafted that far, so each prompt weighs the
    same whatever its number of drafting steps (as in the geometric mean), and a row that never drafted to a
    position (a shorter K, no draft at all, a transformers row) is left out there rather than counted as 0.
    Stops at the first position no row reached; empty when no row drafted.
    """
    out = []
    for i in range(PER_POSITION_SHOWN):
        values = [r.per_position[i] for r in rows if len(r.per_position) > i]
        if not values:
            break
        out.append(_mean(values))
    return out


def summarise(rows: list[Row]) -> list[dict]:
    """One line per (strategy, category) and per strategy overall: speedup from summed wall times."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.strategy, r.category), []).append(r)
        groups.setdefault((r.strategy, "ALL"), []).append(r)
    out = []
    for (strategy, category), rs in groups.items():
        steps = sum(r.steps for r in rs)
        drafted = sum(r.drafted for r in rs)
        accepted = sum(r.accepted for r in rs)
        wall = sum(r.wall_s for r in rs)
        identical = [r.identical for r in rs if r.identical is not None]
        # cost ratio c: drafting time per drafted token / the baseline's time per target step
        baseline_step_s = _ratio(sum(r.baseline_wall_s for r in rs), sum(r.baseline_steps for r in rs))
        out.append({
            "strategy": strategy, "category": category, "prompts": len(rs),
            "speedup": _ratio(sum(r.baseline_wall_s for r in rs), wall),
            "vs_generate": _ratio(sum(r.generate_wall_s for r in rs), wall),
            "vs_generate_geomean": _geomean([_ratio(r.generate_wall_s, r.wall_s) for r in rs]),
            "mean_acceptance_length": 1 + accepted / steps if steps else float("nan"),
            "acceptance_rate": accepted / drafted if drafted else float("nan"),
            "per_position": per_position(rs),
            "tokens_per_s": _ratio(sum(r.new_tokens for r in rs), wall),
            "cost_ratio": _ratio(_ratio(sum(r.draft_s for r in rs), drafted), baseline_step_s) if drafted else float("nan"),
            "identical": (all(identical) if identical else None),
            "oracle_gap": _mean([r.oracle_gap for r in rs if not math.isnan(r.oracle_gap)]),
            # the share of the run the target spent waiting for the drafter
            "target_waiting": _ratio(sum(r.target_wait_s for r in rs if not math.isnan(r.target_wait_s)), wall)
            if any(not math.isnan(r.target_wait_s) for r in rs) else float("nan"),
        })
    return out


def markdown(summary: list[dict]) -> str:
    lines = ["| strategy | category | prompts | speedup vs ar | vs generate() | vs generate() geomean | mean acc. length "
             "| acc. rate | per position | cost ratio | oracle gap | target waiting | tok/s | identical |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in sorted(summary, key=lambda s: (s["strategy"], s["category"] == "ALL", s["category"])):
        ident = "n/a" if s["identical"] is None else ("yes" if s["identical"] else "NO")
        positions = "/".join(f"{v:.2f}" for v in s["per_position"]) or "n/a"
        lines.append(
            f"| {s['strategy']} | {s['category']} | {s['prompts']} | {_number(s['speedup'], suffix='x')} | "
            f"{_number(s['vs_generate'], suffix='x')} | {_number(s['vs_generate_geomean'], suffix='x')} | "
            f"{_number(s['mean_acceptance_length'])} | {_number(s['acceptance_rate'])} | {positions} | "
            f"{_number(s['cost_ratio'])} | {_percent(s['oracle_gap'])} | {_percent(s['target_waiting'])} | "
            f"{_number(s['tokens_per_s'], '.1f')} | {ident} |"
        )
    return "\n".join(lines)


def parse_strategy_spec(spec: str):
    """"name" or "name:key=value:key=value", e.g. "prompt_lookup:k=4:min_ngram=2".

    A fragment without "=" belongs to the previous value: "draft_model:drafter=early-exit:12:k=2".
    """
    name, *fragments = spec.strip().split(":")
    pairs: list[str] = []
    for fragment in fragments:
        if "=" in fragment or not pairs:
            pairs.append(fragment)
        else:
            pairs[-1] += ":" + fragment
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(key, f"expected key=value in strategy spec {spec!r}")
        params[key] = value
    return parse_strategy(name, params)


# --------------------------------------------------------------------------- transformers' own speculative rows


@dataclass(frozen=True)
class Reference:
    """One of transformers' speculative methods as a bench row: greedy `generate()` on the unmodified target with
    `options` (built once per run by the `REFERENCES` entry of the same name)."""

    name: str
    options: dict

    def __call__(self, model: torch.nn.Module, ids: list[int], max_new_tokens: int) -> tuple[list[int], float]:
        """The generated token ids (prompt excluded) and the wall time of the generate() call."""
        x = torch.tensor([ids], device=model_device(model))
        with torch.inference_mode():
            start = time.perf_counter()
            out = model.generate(x, max_new_tokens=max_new_tokens, min_new_tokens=0, do_sample=False, **self.options)
            synchronize(x.device)
            seconds = time.perf_counter() - start
        return out[0, len(ids):].tolist(), seconds


def _hf_prompt_lookup(args: argparse.Namespace, models: ModelCache, target: LoadedModel) -> dict:
    """Prompt lookup decoding, --hf-lookup-tokens candidate tokens per step (transformers' documented typical 10)."""
    return {"prompt_lookup_num_tokens": args.hf_lookup_tokens}


def _hf_assisted(args: argparse.Namespace, models: ModelCache, target: LoadedModel) -> dict:
    """Assisted generation with the distilled drafter as transformers runs it (its own unmodified copy, plain
    nn.Linear), a constant K = --reference-k and no confidence cut-off, as in `reference_comparison`."""
    assistant = unmodified_model(models.drafter(target, "distilled").model)
    return {"assistant_model": assistant, "num_assistant_tokens": args.reference_k,
            "num_assistant_tokens_schedule": "constant", "assistant_confidence_threshold": 0.0}


# row name -> the generate() options of that row, given the bench's arguments, models and target
REFERENCES: dict[str, Callable[[argparse.Namespace, ModelCache, LoadedModel], dict]] = {
    "hf_prompt_lookup": _hf_prompt_lookup,
    "hf_assisted": _hf_assisted,
}
REFERENCE_PREFIX = "hf_"  # names starting so are transformers rows, never engine strategies

# cross_vocab's default drafter (Gemma 3 270M) is an optional extra: benchmark it by naming it
DEFAULT_STRATEGIES = ",".join([*(n for n in STRATEGIES if n != "cross_vocab"), *REFERENCES])


def parse_selection(spec: str) -> tuple[list, list[str]]:
    """--strategies: the engine strategies (each "name" or "name:key=value:...") and the transformers rows named."""
    strategies, references = [], []
    for item in spec.split(","):
        name = item.strip().split(":")[0]
        if name in REFERENCES:
            if item.strip() != name:
                raise ConfigError(name, "transformers rows take no parameters here (see --hf-lookup-tokens, --reference-k)")
            references.append(name)
        elif name.startswith(REFERENCE_PREFIX):
            raise ConfigError("strategies", f"unknown transformers row {name!r}; choose one of {', '.join(REFERENCES)}")
        else:
            strategies.append(parse_strategy_spec(item))
    return strategies, references


def build_references(names: list[str], args: argparse.Namespace, models: ModelCache, target: LoadedModel,
                     sampling: SamplingConfig) -> list[Reference]:
    """The transformers rows to time, each set up once; one that cannot be set up is skipped with a note."""
    if names and not sampling.greedy:
        print(f"note: skipping {', '.join(names)}: transformers' speculative rows are timed under greedy decoding "
              "only (--temperature 0)", file=sys.stderr)
        return []
    out = []
    for name in names:
        try:
            out.append(Reference(name, REFERENCES[name](args, models, target)))
        except Exception as exc:  # noqa: BLE001 - a missing or unloadable drafter costs one row, not the run
            print(f"note: skipping {name}: could not set it up ({type(exc).__name__}: {exc})", file=sys.stderr)
    return out


# --------------------------------------------------------------------------- the suite


def prompt_passage(prompt: str) -> str:
    """The passage a suite prompt works on: the text after its first paragraph (the instruction), else all of it.

    >>> prompt_passage("Summarize this.\\n\\nThe town grew.\\n\\nQuestion: why?")
    'The town grew.\\n\\nQuestion: why?'
    """
    _instruction, blank_line, passage = prompt.partition("\n\n")
    return passage if blank_line and passage.strip() else prompt


def _row_name(strategy) -> str:
    """The strategy name, plus the parameters that differ from its defaults."""
    default = parse_strategy(strategy.name).params()
    changed = {k: v for k, v in strategy.params().items() if default.get(k) != v}
    return strategy.name + "".join(f":{k}={v}" for k, v in changed.items())


def _oracle_gap(events) -> float:
    report = oracle_report(events)
    return report.gap if report is not None and any(e.num_drafted for e in events) else float("nan")


@dataclass
class _Bench:
    """What every prompt of a `run_suite` shares."""

    models: ModelCache
    target: LoadedModel
    reference: torch.nn.Module  # the unmodified target: generate() and the transformers rows run on it
    sampling: SamplingConfig
    strategies: list  # the engine strategies, the `ar` baseline first
    references: list[Reference]
    repeats: int


@dataclass
class _Best:
    """A prompt's fastest round of each contender."""

    runs: dict[int, RunResult] = field(default_factory=dict)  # by index into _Bench.strategies
    references: dict[str, tuple[list[int], float]] = field(default_factory=dict)  # name -> (token ids, wall s)
    generate_s: float = math.inf


def _time_rounds(bench: _Bench, ids: list[int], n: int, document: str) -> _Best:
    """Rounds of [generate(), ar, every strategy, every transformers row] in turn: each keeps its fastest round, so
    a slow spell on a shared machine hits every contender alike instead of one baseline all speedups divide by."""
    best = _Best()
    for _round in range(bench.repeats):
        best.generate_s = min(best.generate_s, time_generate(bench.reference, ids, n, bench.sampling))
        for i, strategy in enumerate(bench.strategies):
            if i and strategy.name == "ar":
                continue  # the baseline's own row is the baseline
            decoder = build_decoder(strategy, bench.target, bench.models, bench.sampling, document=document)
            result = run_to_completion(decoder, ids, n)
            if i not in best.runs or result.metrics.wall_s < best.runs[i].metrics.wall_s:
                best.runs[i] = result
        for reference in bench.references:
            token_ids, wall_s = reference(bench.reference, ids, n)
            if reference.name not in best.references or wall_s < best.references[reference.name][1]:
                best.references[reference.name] = (token_ids, wall_s)
    return best


def _strategy_row(strategy, result: RunResult, baseline: RunResult, category: str, prompt_id: str,
                  generate_s: float, greedy: bool) -> Row:
    m = result.metrics
    return Row(
        _row_name(strategy), category, prompt_id, m.new_tokens, m.steps, m.drafted, m.accepted, m.wall_s,
        baseline.metrics.wall_s, result.token_ids == baseline.token_ids if greedy else None,
        m.per_position_acceptance, sum(e.timings.draft_s for e in result.events), baseline.metrics.steps,
        _oracle_gap(result.events), worker_time(result.events).get("target", {}).get("waiting_s", float("nan")),
        generate_s,
    )


def _reference_row(name: str, token_ids: list[int], wall_s: float, baseline: RunResult, category: str,
                   prompt_id: str, generate_s: float) -> Row:
    """A transformers row: its wall time and text are known; its steps, drafted and accepted tokens are not (0, so
    the summary's acceptance columns read n/a)."""
    return Row(name, category, prompt_id, len(token_ids), 0, 0, 0, wall_s, baseline.metrics.wall_s,
               token_ids == baseline.token_ids, baseline_steps=baseline.metrics.steps, generate_wall_s=generate_s)


def _report(row: Row) -> None:
    mal = f"{1 + row.accepted / row.steps:.2f}" if row.steps else "n/a"
    print(f"{row.prompt_id:<18} {row.strategy:<24} {row.new_tokens:>4} tok {row.wall_s:6.2f} s "
          f"speedup {_ratio(row.baseline_wall_s, row.wall_s):.2f}x "
          f"vs generate() {_ratio(row.generate_wall_s, row.wall_s):.2f}x MAL {mal}", file=sys.stderr)


def _prompt_rows(bench: _Bench, category: str, prompt, max_new_tokens: int) -> list[Row]:
    """One row per strategy and transformers row on one suite prompt, from their fastest rounds."""
    ids = encode_prompt(bench.target.tokenizer, prompt.prompt)
    n = max_new_tokens or prompt.max_new_tokens
    best = _time_rounds(bench, ids, n, prompt_passage(prompt.prompt))
    baseline = best.runs[0]
    rows = [
        _strategy_row(strategy, baseline if strategy.name == "ar" else best.runs[i], baseline, category, prompt.id,
                      best.generate_s, bench.sampling.greedy)
        for i, strategy in enumerate(bench.strategies[1:], start=1)
    ]
    rows += [_reference_row(name, token_ids, wall_s, baseline, category, prompt.id, best.generate_s)
             for name, (token_ids, wall_s) in best.references.items()]
    for row in rows:
        _report(row)
    return rows


def run_suite(args: argparse.Namespace, models: ModelCache, reference: torch.nn.Module) -> list[Row]:
    """`reference`: the target as transformers builds it (`unmodified_model`), timed with generate() in every round
    and running the transformers rows."""
    target = models.get(args.target, progress=lambda m: print(m, file=sys.stderr))
    sampling = SamplingConfig(temperature=args.temperature, seed=args.seed)
    suite = by_category(load_prompt_suite())
    categories = args.categories.split(",") if args.categories else list(suite)
    unknown = [c for c in categories if c not in suite]
    if unknown:
        raise SpecVizError(f"unknown category {unknown[0]!r}; the suite has {', '.join(suite)}")
    strategies, reference_names = parse_selection(args.strategies)
    bench = _Bench(models, target, reference, sampling, [parse_strategy("ar"), *strategies],
                   build_references(reference_names, args, models, target, sampling), args.repeats)
    return [row for category in categories for prompt in suite[category][: args.per_category]
            for row in _prompt_rows(bench, category, prompt, args.max_new_tokens)]


def unmodified_model(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` as transformers builds it: every calibrated linear back to a plain `nn.Linear`
    (sharing nothing with the engine's model), for `generate()` as a user would run it."""
    import copy

    twin = copy.deepcopy(model)
    swaps = [(parent, name, child) for parent in twin.modules() for name, child in parent.named_children()
             if type(child).__name__ == "PackedLinear"]
    for parent, name, child in swaps:
        linear = torch.nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
        linear.weight, linear.bias = child.weight, child.bias
        setattr(parent, name, linear)
    return twin.eval()


def time_generate(model: torch.nn.Module, ids: list[int], max_new_tokens: int, sampling: SamplingConfig) -> float:
    """Wall time of transformers `generate()` for the same prompt and length (greedy, or sampling with the same
    temperature / top-k / top-p)."""
    kwargs = {"do_sample": False} if sampling.greedy else {
        "do_sample": True, "temperature": sampling.temperature, "top_k": sampling.top_k or None,
        "top_p": sampling.top_p}
    x = torch.tensor([ids], device=model_device(model))
    with torch.inference_mode():
        start = time.perf_counter()
        model.generate(x, max_new_tokens=max_new_tokens, min_new_tokens=0, **kwargs)
        synchronize(x.device)
        return time.perf_counter() - start


def kernel_table(args: argparse.Namespace, models: ModelCache, cached: int = 200, repeats: int = 15) -> list[dict]:
    """Median ms of one target forward over M new tokens after `cached` cached ones, with every linear on
    F.linear, on the packed kernel, and on the calibration's choice (what runs), interleaved."""
    import statistics

    from engine.loading.causal_lm import CachedCausalLM
    from engine.loading.linear_kernels import pinned_kernel

    target = models.get(args.target)
    context = list(range(100, 100 + cached))
    out = []
    for m in (1, 2, 4, 8, 16):
        times: dict[str, list[float]] = {"plain": [], "packed": [], "calibrated": []}
        for _ in range(repeats):
            for kernel in times:
                lm = CachedCausalLM(target.model)
                lm.forward(context)
                with pinned_kernel(kernel) if kernel != "calibrated" else contextlib.nullcontext():
                    start = time.perf_counter()
                    lm.forward(list(range(500, 500 + m)), keep_logits=m)
                    times[kernel].append(1000 * (time.perf_counter() - start))
        row = {"new_tokens": m, **{k: statistics.median(v) for k, v in times.items()}}
        out.append(row)
        print(json.dumps(row), file=sys.stderr)
    return out


def kernel_markdown(rows: list[dict]) -> str:
    lines = ["| kernel | " + " | ".join(str(r["new_tokens"]) for r in rows) + " |",
             "|---|" + "---|" * len(rows)]
    for kernel in ("plain", "packed", "calibrated"):
        lines.append(f"| {kernel} | " + " | ".join(f"{r[kernel]:.1f}" for r in rows) + " |")
    return "\n".join(lines)


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def reference_comparison(args: argparse.Namespace, models: ModelCache, reference: torch.nn.Module) -> list[dict]:
    """Our baseline vs `generate()`, our draft_model vs assisted generation, same drafter and K."""
    target = models.get(args.target)
    strategy = parse_strategy("draft_model", {"k": str(args.reference_k)})
    drafter = models.drafter(target, strategy.drafter)
    suite = by_category(load_prompt_suite())
    greedy = SamplingConfig()
    out = []
    for category, prompts in suite.items():
        prompt = prompts[0]
        ids = encode_prompt(target.tokenizer, prompt.prompt)
        n = args.max_new_tokens or prompt.max_new_tokens
        x = torch.tensor([ids])
        with torch.inference_mode():
            hf_ids, hf_s = _timed(lambda: reference.generate(x, max_new_tokens=n, do_sample=False)[0, len(ids):].tolist())
            ours = run_to_completion(build_decoder(parse_strategy("ar"), target, models, greedy), ids, n)
            hf_assist_ids, hf_assist_s = _timed(lambda: reference.generate(
                x, max_new_tokens=n, do_sample=False, assistant_model=drafter.model,
                num_assistant_tokens=args.reference_k, num_assistant_tokens_schedule="constant",
                assistant_confidence_threshold=0.0,
            )[0, len(ids):].tolist())
            spec = run_to_completion(build_decoder(strategy, target, models, greedy), ids, n)
        row = {
            "prompt": prompt.id, "tokens": ours.metrics.new_tokens,
            "generate_s": hf_s, "ar_s": ours.metrics.wall_s, "ar_vs_generate": _ratio(hf_s, ours.metrics.wall_s),
            "ar_identical": ours.token_ids == hf_ids,
            "assisted_s": hf_assist_s, "draft_model_s": spec.metrics.wall_s,
            "draft_model_vs_assisted": _ratio(hf_assist_s, spec.metrics.wall_s),
            "draft_identical": spec.token_ids == hf_assist_ids,
        }
        out.append(row)
        print(json.dumps(row), file=sys.stderr)
    return out


def logging_overhead(args: argparse.Namespace, models: ModelCache, repeats: int = 3) -> dict:
    """Wall time of a bare engine run vs the same run streamed through Runner into SQLite."""
    import tempfile

    from .runner import RunRequest, Runner
    from .store import RunStore

    target = models.get(args.target)
    prompt = load_prompt_suite()[0]
    n = args.max_new_tokens or prompt.max_new_tokens
    strategy = parse_strategy("prompt_lookup")
    bare, logged = [], []
    with tempfile.TemporaryDirectory() as tmp:
        runner = Runner(models, RunStore(f"{tmp}/overhead.db"))
        for _ in range(repeats):  # interleaved so drift hits both sides alike
            start = time.perf_counter()
            run_to_completion(build_decoder(strategy, target, models, SamplingConfig()),
                              encode_prompt(target.tokenizer, prompt.prompt), n)
            bare.append(time.perf_counter() - start)
            start = time.perf_counter()
            for _update in runner.stream(runner.prepare(RunRequest(prompt.prompt, strategy, max_new_tokens=n, device=models.device))):
                pass
            logged.append(time.perf_counter() - start)
    row = {"prompt": prompt.id, "bare_s": min(bare), "logged_s": min(logged),
           "overhead": min(logged) / min(bare) - 1}
    print(json.dumps(row), file=sys.stderr)
    return row


def ui_latency(args: argparse.Namespace, models: ModelCache) -> dict:
    """Time from submitting a Playground run (model already loaded) to the first streamed step,
    and the rate of streamed updates, through the real app and gradio_client."""
    import tempfile

    from gradio_client import Client

    from .store import RunStore
    from .ui import build_app, launch_local

    models.get(args.target)  # loaded once, as on a warm Space
    with tempfile.TemporaryDirectory() as tmp:
        demo = build_app(models, RunStore(f"{tmp}/ui.db"))
        url = launch_local(demo)
        try:
            client = Client(url, verbose=False)
            start = time.perf_counter()
            job = client.submit(prompt=load_prompt_suite()[0].prompt, strategy="prompt_lookup",
                                max_new_tokens=48, api_name="/run")
            first, updates = None, 0
            for output in job:
                updates += 1
                if first is None and any(isinstance(x, str) and 'class="tok tok-' in x for x in output):
                    first = time.perf_counter() - start
            total = time.perf_counter() - start
        finally:
            demo.close()
    row = {"first_step_s": first, "updates": updates, "total_s": total, "updates_per_s": updates / total}
    print(json.dumps(row), file=sys.stderr)
    return row


def reference_markdown(rows: list[dict]) -> str:
    lines = ["| prompt | tokens | generate() s | ar s | ar speed vs generate() | same text | assisted s | draft_model s | draft_model speed vs assisted | same text |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['prompt']} | {r['tokens']} | {r['generate_s']:.2f} | {r['ar_s']:.2f} | {r['ar_vs_generate']:.2f}x | "
            f"{'yes' if r['ar_identical'] else 'NO'} | {r['assisted_s']:.2f} | {r['draft_model_s']:.2f} | "
            f"{r['draft_model_vs_assisted']:.2f}x | {'yes' if r['draft_identical'] else 'NO'} |"
        )
    return "\n".join(lines)


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """Refuse bad arguments before any model loads (parser.error exits with status 2); returns the device."""
    if args.out:
        try:
            check_output_file(args.out, "--out")  # now, not after the whole benchmark
        except ConfigError as exc:
            parser.error(str(exc))
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.hf_lookup_tokens < 1 or args.reference_k < 1:
        parser.error("--hf-lookup-tokens and --reference-k must be at least 1")
    if not args.kernels:
        try:
            parse_selection(args.strategies)  # before loading any model
        except ConfigError as exc:
            parser.error(f"--strategies: {exc}")
    try:
        device = resolve_device(args.device, "--device")
    except ConfigError as exc:
        parser.error(str(exc))
    if args.kernels and device != "cpu":
        parser.error("--kernels times the CPU kernels: use it with --device cpu")
    return device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="specviz bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", default=DEFAULT_STRATEGIES,
                        help='comma-separated strategies, each "name" or "name:key=value:...", and transformers rows '
                             f"({', '.join(REFERENCES)}) (default: all but cross_vocab, and the transformers rows)")
    parser.add_argument("--categories", default="", help="comma-separated categories (default: all)")
    parser.add_argument("--per-category", type=int, default=1, help="prompts per category")
    parser.add_argument("--max-new-tokens", type=int, default=0, help="0 = each prompt's own budget")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds of ar + every strategy per prompt; each keeps its fastest round")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", default=EMBEDDED_DEFAULT)
    parser.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N",
                        help="where the models run (default auto: CUDA when this machine has it, else the CPU)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--reference", action="store_true", help="also compare with transformers generate()/assisted generation")
    parser.add_argument("--reference-k", type=int, default=4,
                        help="draft length K for assisted generation (the hf_assisted row and --reference)")
    parser.add_argument("--hf-lookup-tokens", type=int, default=10,
                        help="prompt_lookup_num_tokens of the hf_prompt_lookup row (transformers' typical 10)")
    parser.add_argument("--logging-overhead", action="store_true",
                        help="also time a bare engine run against the same run logged to SQLite")
    parser.add_argument("--ui-latency", action="store_true",
                        help="also measure the explorer's time to the first streamed step (model loaded)")
    parser.add_argument("--kernels", action="store_true",
                        help="only time one target forward over 1-16 new tokens on each linear kernel and on the "
                             "calibration's choice")
    parser.add_argument("--out", help="write rows and summaries to this JSON file")
    args = parser.parse_args(argv)
    device = check_arguments(parser, args)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = ModelCache(device=device)
    if args.kernels:
        print("median ms of one forward over M new tokens after 200 cached\n")
        print(kernel_markdown(kernel_table(args, models)))
        return 0
    reference = unmodified_model(models.get(args.target, progress=lambda m: print(m, file=sys.stderr)).model)
    rows = run_suite(args, models, reference)
    summary = summarise(rows)
    print(markdown(summary))
    result = {"rows": [r.__dict__ for r in rows], "summary": summary, "threads": torch.get_num_threads()}
    if args.reference:
        ref = reference_comparison(args, models, reference)
        print()
        print(reference_markdown(ref))
        result["reference"] = ref
    if args.logging_overhead:
        overhead = logging_overhead(args, models)
        print(f"\nSQLite logging + event streaming overhead on {overhead['prompt']}: "
              f"{overhead['bare_s']:.2f} s bare vs {overhead['logged_s']:.2f} s logged ({overhead['overhead']:+.1%})")
        result["logging_overhead"] = overhead
    if args.ui_latency:
        latency = ui_latency(args, models)
        print(f"\nExplorer: first step visible {latency['first_step_s']:.2f} s after Run (model loaded); "
              f"{latency['updates']} streamed updates at {latency['updates_per_s']:.1f}/s")
        result["ui_latency"] = latency
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
