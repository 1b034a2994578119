"""`specviz gpu-check`: does the engine run on this machine's CUDA device? A short, hub-free check.

    specviz gpu-check                      # --device auto: the first GPU, or the CPU alone where there is none
    specviz gpu-check --no-embedded --max-new-tokens 32 --out gpu-check.json

Models: a small random Llama built in-process (nothing downloaded), and the embedded default
(SmolLM2-135M-Instruct, from its PyPI package) with the project's shipped drafters when the package is
installed. Each model runs greedily on the CPU and on the device with ar and speculative strategies
(chains, trees, feature heads, diffusion drafting for the embedded model), after one warm-up run each.

What is checked: on each device every strategy produces exactly ar's tokens (greedy speculative
decoding is lossless). CPU and GPU texts are NOT required to agree: their float32 numerics differ, so
a near-tie may go either way; how many leading tokens agree is reported. When a strategy departs from
ar, the target's logit margin between the two tokens at that position is reported: a margin below
1e-3 is a numerical tie (the batched verification pass and ar's one-token pass round differently),
anything larger is a bug and fails the check (exit status 1).

Printed: per model, device and strategy the tokens, steps, mean acceptance length, wall time and
tokens per second, and the device's peak memory.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass

import torch

from engine import EMBEDDED_DEFAULT, LoadedModel, ModelCache, SamplingConfig, build_decoder, encode_prompt, parse_strategy
from engine.api import run_to_completion
from engine.devices import CPU, model_device, resolve_device, synchronize
from engine.errors import ConfigError, SpecVizError
from engine.loading.causal_lm import CachedCausalLM
from engine.loading.models import EMBEDDED_MODELS, to_device

TIE_MARGIN = 1e-3  # logit margins below this are numerical ties, not bugs
TINY = "tiny-random-llama"
TINY_STRATEGIES = (
    ("ar", {}),
    ("early_exit", {"exit_layer": "2", "k": "4"}),
    ("dynamic_tree", {"drafter": "early-exit:2", "vocab_trim": "0"}),
    ("prompt_lookup", {}),
)
EMBEDDED_STRATEGIES = (
    ("ar", {}),
    ("draft_model", {"drafter": "distilled"}),
    ("dynamic_tree", {}),
    ("hybrid_tree", {}),
    ("diffusion", {}),
    ("prompt_lookup", {}),
)
EMBEDDED_PROMPT = ("Copy this list exactly, one item per line: apples, oranges, pears, plums, cherries, grapes, lemons, "
                   "limes, peaches, mangoes.")  # copying: prompt lookup and the drafters get drafts accepted


class NumberTokenizer:
    """Token i is "t{i} ": just enough of a tokenizer for the engine (decode, get_vocab, no EOS)."""

    chat_template = None
    eos_token_id = None

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return "".join(f"t{int(i)} " for i in ids)

    def get_vocab(self) -> dict[str, int]:
        return {f"t{i}": i for i in range(self.vocab_size)}

    def __len__(self) -> int:
        return self.vocab_size


def tiny_llama(device: str, seed: int = 0, vocab_size: int = 512, hidden_size: int = 128, num_layers: int = 4,
               window: int = 1024) -> LoadedModel:
    """A small random LlamaForCausalLM (peaked distributions, like a trained model's) on `device`; the same weights
    for the same seed on every device."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=window, initializer_range=0.3, tie_word_embeddings=False,
                         bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval().requires_grad_(False)
    return to_device(LoadedModel(TINY, model, NumberTokenizer(vocab_size)), device)


@dataclass
class Row:
    model: str
    device: str
    strategy: str
    new_tokens: int
    steps: int
    mean_acceptance_length: float
    wall_s: float
    tokens_per_s: float
    same_as_ar: bool | None = None
    first_difference: int | None = None
    margin: float | None = None  # the target's logit margin at the first difference (ar's token minus this one's)
    tie: bool | None = None
    error: str | None = None


def _label(name: str, params: dict) -> str:
    return name + "".join(f":{k}={v}" for k, v in params.items())


def _margin(target: LoadedModel, context: list[int], a: int, b: int) -> float:
    """The target's logit of `a` minus that of `b` after `context` (one fresh forward pass on its device)."""
    logits = CachedCausalLM(target.model).forward(context)[-1]
    return float(logits[a] - logits[b])


def run_strategies(target: LoadedModel, models: ModelCache, prompt_ids: list[int], max_new_tokens: int,
                   strategies, say=print) -> tuple[list[Row], list[int]]:
    """Each strategy greedily, a warm-up run then a timed one; rows compared with ar's tokens (the first strategy,
    returned too)."""
    device = str(model_device(target.model))
    rows, reference = [], None
    for name, params in strategies:
        label = _label(name, params)
        try:
            decoder = build_decoder(parse_strategy(name, dict(params)), target, models, SamplingConfig())
            run_to_completion(decoder, prompt_ids, max_new_tokens)  # warm-up: kernels, caches, lazy loads
            synchronize(device)
            start = time.perf_counter()
            result = run_to_completion(decoder, prompt_ids, max_new_tokens)
            synchronize(device)
            wall = time.perf_counter() - start
        except (SpecVizError, OSError) as exc:  # a drafter this install lacks: reported, not fatal
            rows.append(Row(target.name, device, label, 0, 0, 0.0, 0.0, 0.0, error=str(exc)))
            say(f"  {label:<40} skipped: {exc}")
            continue
        m = result.metrics
        row = Row(target.name, device, label, m.new_tokens, m.steps, m.mean_acceptance_length, wall,
                  m.new_tokens / wall if wall > 0 else 0.0)
        if reference is None:
            reference = result.token_ids
        else:
            row.same_as_ar = result.token_ids == reference
            if not row.same_as_ar:
                at = next((i for i, (x, y) in enumerate(zip(reference, result.token_ids)) if x != y),
                          min(len(reference), len(result.token_ids)))
                row.first_difference = at
                if at < min(len(reference), len(result.token_ids)):
                    row.margin = _margin(target, prompt_ids + reference[:at], reference[at], result.token_ids[at])
                    row.tie = abs(row.margin) < TIE_MARGIN
        rows.append(row)
        same = "" if row.same_as_ar is None else ("same as ar" if row.same_as_ar else
                                                  f"DIFFERS from ar at token {row.first_difference} "
                                                  f"(margin {row.margin}, {'tie' if row.tie else 'NOT a tie'})")
        say(f"  {label:<40} {m.new_tokens:>4} tok {m.steps:>4} steps MAL {m.mean_acceptance_length:5.2f} "
            f"{wall:7.3f} s {row.tokens_per_s:8.1f} tok/s  {same}")
    return rows, reference or []


def check(device: str, max_new_tokens: int, embedded: bool, cpu_baseline: bool, say=print) -> dict:
    """Every model on the CPU (if `cpu_baseline`) and on `device`; returns {"rows", "failures", "device_info"}."""
    if device == CPU:
        devices = [CPU]
    else:
        devices = [CPU, device] if cpu_baseline else [device]
    rows: list[Row] = []
    ar_tokens: dict[tuple[str, str], list[int]] = {}
    models_checked = [TINY] + ([EMBEDDED_DEFAULT] if embedded else [])
    for model_name in models_checked:
        for dev in devices:
            say(f"\n{model_name} on {dev}")
            if model_name == TINY:
                target = tiny_llama(dev)
                models = ModelCache(loader=_no_loading, device=dev)
                prompt_ids = [(7 * i) % 97 + 3 for i in range(24)] * 2  # a repeated stretch: prompt lookup drafts
                strategies = TINY_STRATEGIES
            else:
                models = ModelCache(device=dev)
                start = time.perf_counter()
                target = models.get(EMBEDDED_DEFAULT, progress=lambda m: say(f"  {m}"))
                say(f"  loaded in {time.perf_counter() - start:.1f} s")
                prompt_ids = encode_prompt(target.tokenizer, EMBEDDED_PROMPT)
                strategies = EMBEDDED_STRATEGIES
            new, ar_tokens[(model_name, dev)] = run_strategies(target, models, prompt_ids, max_new_tokens,
                                                               strategies, say)
            rows += new
            del target, models
            if dev != CPU:
                torch.cuda.empty_cache()
    agreement = {}
    for model_name in models_checked:
        if len(devices) == 2:
            a, b = ar_tokens[(model_name, devices[0])], ar_tokens[(model_name, devices[1])]
            agree = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            agreement[model_name] = {"leading_tokens_equal": agree, "of": min(len(a), len(b))}
            say(f"\n{model_name}: ar on {devices[0]} and on {devices[1]} agree on the first {agree} of "
                f"{min(len(a), len(b))} tokens (not required: float32 numerics differ between devices)")
    failures = [r for r in rows if r.same_as_ar is False and not r.tie]
    info = {"torch": torch.__version__, "device": device, "cuda": torch.version.cuda}
    if device != CPU:
        info |= {"name": torch.cuda.get_device_name(torch.device(device if ":" in device else "cuda:0")),
                 "peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
    return {"rows": [asdict(r) for r in rows], "failures": [asdict(r) for r in failures], "agreement": agreement,
            "device_info": info}


def _no_loading(spec: str, progress=None, device: str = CPU):
    """The random model's cache loads nothing by spec: its drafters are built from the target (early exit)."""
    raise SpecVizError(f"the gpu check loads no model by spec ({spec!r})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="specviz gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N",
                        help="the device to check (default auto: the first GPU, or the CPU alone where there is none)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--no-embedded", action="store_true", help="only the in-process random model")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU runs (no CPU timings to compare with)")
    parser.add_argument("--out", help="also write the rows and device facts to this JSON file")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device, "--device")
    except ConfigError as exc:
        parser.exit(2, f"specviz gpu-check: error: {exc}\n")
    if device == CPU:
        print("no CUDA device selected: checking the CPU only", file=sys.stderr)
    embedded = not args.no_embedded and EMBEDDED_DEFAULT in EMBEDDED_MODELS and _embedded_installed()
    if not args.no_embedded and not embedded:
        print(f"{EMBEDDED_DEFAULT}'s package is not installed: checking the random model only", file=sys.stderr)
    result = check(device, args.max_new_tokens, embedded, not args.no_cpu,
                   say=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(result["device_info"]))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    if result["failures"]:
        for row in result["failures"]:
            print(f"FAIL {row['model']} on {row['device']}: {row['strategy']} departs from ar at token "
                  f"{row['first_difference']} (logit margin {row['margin']})", file=sys.stderr)
        return 1
    print("gpu-check: every strategy matched ar on every device checked", file=sys.stderr)
    return 0


def _embedded_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec(EMBEDDED_MODELS[EMBEDDED_DEFAULT].package) is not None


if __name__ == "__main__":
    sys.exit(main())
