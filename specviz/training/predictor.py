"""`specviz train-predictor`: fit SpecDec++'s acceptance predictor for a target and drafter.

    specviz train-predictor --out assets/drafters/smollm2-135m-instruct            # distilled, VocabTrim 8192
    specviz train-predictor --out DIR --drafter kangaroo:4 --prompts 40 --max-new-tokens 48

1. Greedy speculative decoding with the drafter at a fixed long draft (K = --k, never stopping)
   over the project's own training prompts (specviz/training/prompts.py; never the evaluation
   suite), recording each checked drafted token's features (engine.policies.acceptance_features)
   and whether the target accepted it. Unchecked tokens (after a rejection) carry no label.
2. The prompts are split by a seeded generator: the first 80% train, the rest are held out.
3. `fit_logistic` (many Newton steps, a weak L2 pull towards the hand-set prior) fits the weights.
   Held-out log loss and accuracy are reported for the fitted weights and for the prior.
4. The weights go into --out/acceptance_predictor.json under "<drafter>:vocab_trim=<N>" (other
   drafters' entries are kept), with the settings, counts, time and held-out scores; the
   `specdec` length policy starts from them for that pair.

Labels come from greedy verification (accepted = the target's argmax); under sampling a token
is accepted with probability min(1, p/q), which the online refit adapts to.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from engine import EMBEDDED_DEFAULT, ModelCache, SamplingConfig, SpeculativeDecoder, encode_prompt
from engine.errors import ConfigError
from engine.policies import HAND_SET_PRIOR, ConstantLength, acceptance_features, fit_logistic
from engine.proposers import DraftModelProposer
from engine.trained_drafters import PREDICTOR_FILE, predictor_key

from .prompts import training_prompts


class FeatureRecorder:
    """A draft-stop rule that never stops: it records each drafted token's features and, after the verdict, its label."""

    def __init__(self) -> None:
        self.examples: list[tuple[list[float], bool]] = []
        self._drafted: list[list[float]] = []

    def should_stop(self, position: int, dist: torch.Tensor) -> str | None:
        self._drafted.append(acceptance_features(position, dist))
        return None

    def label(self, drafted: int, accepted: int) -> None:
        features, self._drafted = self._drafted[:drafted], []
        self.examples.extend((f, i < accepted) for i, f in enumerate(features[: accepted + 1]))


class _RecordingLength(ConstantLength):
    """Constant K that hands each verdict to the recorder."""

    def __init__(self, k: int, recorder: FeatureRecorder):
        super().__init__(k)
        self.recorder = recorder

    def update(self, drafted: int, accepted: int) -> None:
        self.recorder.label(drafted, accepted)


def scores(weights: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Mean log loss and accuracy (threshold 0.5) of a logistic predictor on labelled features."""
    p = torch.sigmoid(x @ weights).clamp(1e-9, 1 - 1e-9)
    loss = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
    return {"log_loss": round(float(loss), 4), "accuracy": round(float(((p > 0.5).double() == y).double().mean()), 4)}


def collect(target, drafter_model, prompt_ids: list[list[int]], k: int, max_new_tokens: int, progress: bool):
    """Per prompt, the labelled examples of one greedy run at constant K."""
    per_prompt = []
    for ids in tqdm(prompt_ids, desc="speculative runs", unit="prompt", disable=not progress, file=sys.stderr):
        recorder = FeatureRecorder()
        decoder = SpeculativeDecoder(target, DraftModelProposer(drafter_model, stop_rule=recorder),
                                     _RecordingLength(k, recorder), SamplingConfig())
        for _ in decoder.generate(ids, max_new_tokens):
            pass
        per_prompt.append(recorder.examples)
    return per_prompt


def train(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    models = ModelCache()
    target = models.get(args.target, progress=lambda m: print(m, file=sys.stderr))
    drafter = models.drafter(target, args.drafter, vocab_trim=args.vocab_trim)
    prompts = training_prompts(args.prompts, seed=args.seed)
    prompt_ids = [encode_prompt(target.tokenizer, p.text) for p in prompts]
    per_prompt = collect(target, drafter.model, prompt_ids, args.k, args.max_new_tokens, progress=not args.quiet)

    order = torch.randperm(len(per_prompt), generator=torch.Generator().manual_seed(args.seed)).tolist()
    cut = max(1, int(round(0.8 * len(order))))
    def stack(indices):
        rows = [example for i in indices for example in per_prompt[i]]
        x = torch.tensor([f for f, _ in rows], dtype=torch.float64).reshape(-1, len(HAND_SET_PRIOR))
        y = torch.tensor([float(ok) for _, ok in rows], dtype=torch.float64)
        return x, y
    x_train, y_train = stack(order[:cut])
    x_held, y_held = stack(order[cut:])
    if len(y_train) == 0 or y_train.min() == y_train.max():
        raise ConfigError("--prompts", f"the training runs gave {len(y_train)} labelled tokens, not both accepted and "
                                       "rejected ones; use more prompts or tokens")
    prior = torch.tensor(HAND_SET_PRIOR, dtype=torch.float64)
    weights = fit_logistic(x_train, y_train, prior, l2=1e-3, steps=25)
    entry = {
        "weights": [round(float(w), 6) for w in weights],
        "features": ["bias", "top probability", "normalised entropy", "position / 8"],
        "target": target.name, "drafter": args.drafter, "vocab_trim": args.vocab_trim,
        "k": args.k, "prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "seed": args.seed,
        "train_examples": len(y_train), "train_accept_rate": round(float(y_train.mean()), 4),
        "heldout_examples": len(y_held),
        "heldout": ({"trained": scores(weights, x_held, y_held), "hand_set_prior": scores(prior, x_held, y_held)}
                    if len(y_held) else {}),
        "seconds": round(time.perf_counter() - started, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / PREDICTOR_FILE
    existing = json.loads(path.read_text()) if path.is_file() else {}
    predictors = dict(existing.get("predictors", {}))
    predictors[predictor_key(args.drafter, args.vocab_trim)] = entry
    path.write_text(json.dumps({"format": 1, "predictors": predictors}, indent=2) + "\n")
    return entry


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specviz train-predictor", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for acceptance_predictor.json (e.g. assets/drafters/<target>)")
    parser.add_argument("--target", default=EMBEDDED_DEFAULT)
    parser.add_argument("--drafter", default="distilled", help="drafter spec, as in draft_model")
    parser.add_argument("--vocab-trim", type=int, default=8192, help="the drafter's VocabTrim, as in draft_model")
    parser.add_argument("--k", type=int, default=8, help="constant draft length of the recording runs")
    parser.add_argument("--prompts", type=int, default=60, help="training prompts (80%% fit, 20%% held out)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.k < 1 or args.prompts < 2 or args.max_new_tokens < 2:
        print("specviz train-predictor: error: --k >= 1, --prompts >= 2 and --max-new-tokens >= 2 are required",
              file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    entry = train(args)
    held = entry["heldout"]
    print(f"trained on {entry['train_examples']} checked tokens from {entry['prompts']} prompts in {entry['seconds']} s; "
          f"held-out log loss {held.get('trained', {}).get('log_loss')} (hand-set prior "
          f"{held.get('hand_set_prior', {}).get('log_loss')}), accuracy {held.get('trained', {}).get('accuracy')}; "
          f"weights {entry['weights']} -> {Path(args.out) / PREDICTOR_FILE}")
    return 0
