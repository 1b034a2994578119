"""Golden traces: every strategy's full event stream (minus timings), recorded once and compared forever.

The decoding engine may be reshaped (one driver, a builder registry, new module layout), but what it
does must not change: the same drafts, verdicts, probabilities, length decisions and reasons, step by
step. `tests/test_golden_traces.py` replays every case below and compares with the recorded files;
re-record only when a change of behaviour is intended (and say so in the commit):

    python -m tests.golden_traces            # writes tests/golden/*.json

Kernels round differently (~1e-4 on logits), so the real model is pinned to the packed oneDNN kernel
while recording and comparing, and floats are compared with a tolerance; token ids and verdicts
exactly. Cases:
- the real embedded model, greedy, every strategy (cross_vocab needs the optional Gemma extra and is
  left out), on three suite prompts of different categories, plus draft_model under every length policy;
- the tiny random models, seeded sampling at temperature 0.8, every verifier that samples (chain
  rejection sampling, PEARL, static / RSD / SpecTr / dynamic trees, n-gram one-hot drafts).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path
from typing import Any

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
REAL_FILE = GOLDEN_DIR / "real_greedy.json"
TINY_FILE = GOLDEN_DIR / "tiny_sampled.json"

REAL_PROMPTS = ("chat-00", "code_edit-00", "rag-00")
REAL_MAX_NEW_TOKENS = 24
# (strategy, params); each runs on every REAL_PROMPTS prompt
REAL_STRATEGIES: tuple[tuple[str, dict[str, str]], ...] = (
    ("ar", {}),
    ("draft_model", {}),
    ("draft_model", {"length_policy": "heuristic"}),
    ("draft_model", {"length_policy": "feedback"}),
    ("draft_model", {"length_policy": "confidence", "vocab_trim": "8192"}),
    ("draft_model", {"length_policy": "specdec", "vocab_trim": "8192"}),
    ("early_exit", {}),
    ("kangaroo", {}),
    ("del", {}),
    ("prompt_lookup", {}),
    ("aded", {}),
    ("rasd", {}),
    ("pearl", {}),
    ("static_tree", {}),
    ("dynamic_tree", {}),
    ("rsd", {}),
    ("spectr", {}),
    ("lookup_tree", {}),
    ("rasd_tree", {}),
    ("diffusion", {}),
    ("diffusion", {"search": "top1", "length_policy": "constant"}),
    ("diffusion", {"causal": "drafter"}),
)

# torch's thread count splits float reductions differently, which moves sampled tokens near a tie: the traces
# were recorded with this many threads and are replayed with it (tests/test_golden_traces.py)
RECORDED_THREADS = 2
TINY_SEEDS = (0, 1)
TINY_MAX_NEW_TOKENS = 20
TINY_TEMPERATURE = 0.8
TINY_DRAFTER = "tiny-noisy-drafter"
TINY_STRATEGIES: tuple[tuple[str, dict[str, str]], ...] = (
    ("draft_model", {"drafter": TINY_DRAFTER, "k": "3"}),
    ("draft_model", {"drafter": TINY_DRAFTER, "k": "2", "length_policy": "heuristic"}),
    ("pearl", {"drafter": TINY_DRAFTER, "gamma": "3", "vocab_trim": "0"}),
    ("static_tree", {"drafter": TINY_DRAFTER, "branching": "2,2", "vocab_trim": "0"}),
    ("dynamic_tree", {"drafter": TINY_DRAFTER, "vocab_trim": "0"}),
    ("rsd", {"drafter": TINY_DRAFTER, "branching": "2,2", "vocab_trim": "0"}),
    ("spectr", {"drafter": TINY_DRAFTER, "drafts": "3", "depth": "2", "vocab_trim": "0"}),
    ("prompt_lookup", {"min_ngram": "1"}),
    ("lookup_tree", {"min_ngram": "1"}),
)
TINY_PROMPT = [1, 2, 3, 1, 2, 3, 1, 2]


def case_key(strategy: str, params: dict[str, str], prompt: str | int) -> str:
    inner = ",".join(f"{k}={v}" for k, v in sorted(params.items()))
    return f"{strategy}({inner})@{prompt}"


def trace(events) -> list[dict[str, Any]]:
    """The event stream as plain data, timings left out (they are the one thing that may change)."""
    out = []
    for event in events:
        data = event.to_dict()
        data.pop("timings")
        out.append(data)
    return out


def first_difference(expected: Any, actual: Any, path: str = "", rel: float = 1e-3, abs_: float = 2e-4) -> str | None:
    """Where two traces differ ("" paths are the root), or None: floats within tolerance, all else exactly."""
    if isinstance(expected, float) or isinstance(actual, float):
        if isinstance(expected, (int, float)) and isinstance(actual, (int, float)) and not isinstance(expected, bool):
            if math.isclose(expected, actual, rel_tol=rel, abs_tol=abs_):
                return None
        return f"{path}: expected {expected!r}, got {actual!r}"
    if isinstance(expected, dict) and isinstance(actual, dict):
        if expected.keys() != actual.keys():
            return f"{path}: keys {sorted(expected)} != {sorted(actual)}"
        for key in expected:
            found = first_difference(expected[key], actual[key], f"{path}.{key}", rel, abs_)
            if found:
                return found
        return None
    if isinstance(expected, (list, tuple)) and isinstance(actual, (list, tuple)):
        if len(expected) != len(actual):
            return f"{path}: length {len(expected)} != {len(actual)}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            found = first_difference(e, a, f"{path}[{i}]", rel, abs_)
            if found:
                return found
        return None
    return None if expected == actual else f"{path}: expected {expected!r}, got {actual!r}"


def normalise(data: Any) -> Any:
    """Tuples as lists, as JSON gives them back."""
    return json.loads(json.dumps(data))


def real_cases():
    for strategy, params in REAL_STRATEGIES:
        for prompt in REAL_PROMPTS:
            yield strategy, params, prompt


def tiny_cases():
    for strategy, params in TINY_STRATEGIES:
        for seed in TINY_SEEDS:
            yield strategy, params, seed


def run_real_case(models, target, suite: dict, strategy: str, params: dict[str, str], prompt_id: str):
    from engine import SamplingConfig, build_decoder, encode_prompt, parse_strategy
    from specviz.bench import prompt_passage

    prompt = suite[prompt_id]
    ids = encode_prompt(target.tokenizer, prompt)
    decoder = build_decoder(parse_strategy(strategy, params), target, models, SamplingConfig(),
                            document=prompt_passage(prompt))
    return trace(decoder.generate(ids, REAL_MAX_NEW_TOKENS))


def tiny_models():
    """A ModelCache over the tiny target and its noisy copy (the drafter), as the tests build them."""
    from engine import ModelCache

    from tests.conftest import make_tiny_loaded, noisy_copy

    target = make_tiny_loaded(0, name="tiny-target")
    drafter = noisy_copy(target, sigma=0.03, seed=1, name=TINY_DRAFTER)
    known = {TINY_DRAFTER: drafter}
    return target, ModelCache(loader=lambda spec, progress=None: known[spec])


def run_tiny_case(models, target, strategy: str, params: dict[str, str], seed: int):
    from engine import SamplingConfig, build_decoder, parse_strategy

    sampling = SamplingConfig(temperature=TINY_TEMPERATURE, seed=seed)
    decoder = build_decoder(parse_strategy(strategy, params), target, models, sampling)
    return trace(decoder.generate(list(TINY_PROMPT), TINY_MAX_NEW_TOKENS))


def suite_prompts() -> dict[str, str]:
    from specviz.prompts import load_prompt_suite

    return {p.id: p.prompt for p in load_prompt_suite()}


def record() -> None:
    import torch

    from engine import EMBEDDED_DEFAULT, ModelCache

    try:
        from engine.loading.linear_kernels import pinned_kernel
    except ImportError:  # recording on a checkout from before kernel calibration: every call was packed
        pinned_kernel = lambda kernel: contextlib.nullcontext()  # noqa: E731

    torch.set_num_threads(RECORDED_THREADS)
    GOLDEN_DIR.mkdir(exist_ok=True)
    target, models = tiny_models()
    tiny = {case_key(s, p, seed): run_tiny_case(models, target, s, p, seed) for s, p, seed in tiny_cases()}
    TINY_FILE.write_text(json.dumps(tiny, indent=None, separators=(",", ":")) + "\n")
    print(f"{len(tiny)} tiny traces -> {TINY_FILE}", file=sys.stderr)
    models = ModelCache()
    target = models.get(EMBEDDED_DEFAULT)
    suite = suite_prompts()
    real = {}
    with pinned_kernel("packed"):
        for s, p, prompt in real_cases():
            real[case_key(s, p, prompt)] = run_real_case(models, target, suite, s, p, prompt)
            print(case_key(s, p, prompt), len(real[case_key(s, p, prompt)]), "steps", file=sys.stderr)
    REAL_FILE.write_text(json.dumps(real, indent=None, separators=(",", ":")) + "\n")
    print(f"{len(real)} real traces -> {REAL_FILE}", file=sys.stderr)


if __name__ == "__main__":
    record()
