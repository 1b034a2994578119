"""`specviz train-predictor`: fit SpecDec++'s acceptance predictor for a target and drafter.

    specviz train-predictor --out assets/drafters/smollm2-135m-instruct            # distilled, VocabTrim 8192
    specviz train-predictor --out DIR --drafter kangaroo:4 --prompts 40 --max-new-tokens 48

1. Greedy speculative decoding with the drafter at a fixed long draft (K = --k, never stopping)
   over the project's own training prompts (specviz/training/prompts.py; never the evaluation
   suite), recording each checked drafted token's features (engine.drafting.policies.acceptance_features),
   the drafter's final hidden state there, and whether the target accepted it. Unchecked tokens
   (after a rejection) carry no label.
2. The prompts are split by a seeded generator: the first 80% train, the rest are held out.
3. The hidden-state projection: the top --hidden-components principal directions of the training
   tokens' hidden states, each scaled to unit variance (`HiddenStateProjection`).
4. `fit_logistic` (many Newton steps, an L2 pull towards the hand-set prior, zero for the hidden
   features) fits the weights over the four base features plus the projected hidden state.
   Held-out log loss and accuracy are reported for these weights, for the base features alone
   and for the hand-set prior.
5. The weights go into --out/acceptance_predictor.json under "<drafter>:vocab_trim=<N>" (other
   drafters' entries are kept), with the settings, counts, time and held-out scores, and the
   projection into acceptance_predictor.safetensors; the `specdec` length policy starts from
   them for that pair.

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
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from engine.events import StepFeedback
from engine import EMBEDDED_DEFAULT, ModelCache, SamplingConfig, SpeculativeDecoder, encode_prompt
from engine.errors import ConfigError
from engine.drafting.policies import (
    ACCEPTANCE_FEATURES,
    HAND_SET_PRIOR,
    ConstantLength,
    HiddenStateProjection,
    acceptance_features,
    fit_logistic,
)
from engine.drafting.proposers import DraftModelProposer
from engine.loading.trained_drafters import PREDICTOR_FILE, PROJECTION_FILE, predictor_key

from .prompts import training_prompts


class FeatureRecorder:
    """A draft-stop rule that never stops: it records each drafted token's base features and hidden
    state and, after the verdict, its label."""

    uses_hidden_state = True

    def __init__(self) -> None:
        self.examples: list[tuple[list[float], torch.Tensor, bool]] = []
        self._drafted: list[tuple[list[float], torch.Tensor]] = []

    def should_stop(self, position: int, dist: torch.Tensor, hidden: torch.Tensor | None = None) -> str | None:
        self._drafted.append((acceptance_features(position, dist), hidden.double().clone()))
        return None

    def label(self, feedback: StepFeedback) -> None:
        drafted_tokens, self._drafted = self._drafted, []
        self.examples.extend((f, h, accepted) for (f, h), accepted in feedback.checked(drafted_tokens))


class _RecordingLength(ConstantLength):
    """Constant K that hands each verdict to the recorder."""

    def __init__(self, k: int, recorder: FeatureRecorder):
        super().__init__(k)
        self.recorder = recorder

    def update(self, feedback: StepFeedback) -> None:
        self.recorder.label(feedback)


def fit_projection(hidden: torch.Tensor, n_components: int) -> HiddenStateProjection:
    """The top principal directions of hidden [n, hidden_size], scaled so each projection has unit variance."""
    mean = hidden.mean(0)
    _, singular, vh = torch.linalg.svd(hidden - mean, full_matrices=False)  # vh: [min(n, hidden_size), hidden_size]
    n_components = min(n_components, vh.shape[0])
    std = (singular[:n_components] / max(1, hidden.shape[0] - 1) ** 0.5).clamp_min(1e-9)
    return HiddenStateProjection(mean, vh[:n_components] / std[:, None])


def stack(per_prompt: list, prompts: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The examples of these prompts: base features [n, 4], hidden states [n, hidden_size], labels [n]."""
    rows = [example for i in prompts for example in per_prompt[i]]
    x = torch.tensor([f for f, _, _ in rows], dtype=torch.float64).reshape(-1, len(HAND_SET_PRIOR))
    h = torch.stack([h for _, h, _ in rows]) if rows else torch.zeros(0, 1, dtype=torch.float64)
    y = torch.tensor([float(ok) for _, _, ok in rows], dtype=torch.float64)
    return x, h, y


def features(x: torch.Tensor, h: torch.Tensor, projection: HiddenStateProjection | None) -> torch.Tensor:
    """Base features [n, 4] with the projected hidden states appended [n, 4 + components]."""
    return x if projection is None else torch.cat([x, (h - projection.mean) @ projection.components.T], 1)


def fit(per_prompt: list, prompts: list[int], components: int, l2: float
        ) -> tuple[torch.Tensor, HiddenStateProjection | None]:
    """Weights (and the projection, fitted on the same prompts) from these prompts' examples."""
    x, h, y = stack(per_prompt, prompts)
    projection = fit_projection(h, components) if components else None
    prior = torch.cat([torch.tensor(HAND_SET_PRIOR, dtype=torch.float64),
                       torch.zeros(len(projection.names) if projection is not None else 0, dtype=torch.float64)])
    return fit_logistic(features(x, h, projection), y, prior, l2=l2, steps=25), projection


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
    settings = {"target": target.name, "drafter": args.drafter, "vocab_trim": args.vocab_trim, "k": args.k,
                "prompts": args.prompts, "max_new_tokens": args.max_new_tokens, "seed": args.seed}
    saved = torch.load(args.examples, weights_only=False) if args.examples and Path(args.examples).is_file() else None
    if saved is not None and saved["settings"] == settings:  # refit on recorded runs (e.g. another --l2)
        per_prompt, collect_seconds = saved["per_prompt"], saved["collect_seconds"]
    else:
        per_prompt = collect(target, drafter.model, prompt_ids, args.k, args.max_new_tokens, progress=not args.quiet)
        collect_seconds = round(time.perf_counter() - started, 1)
        if args.examples:
            torch.save({"settings": settings, "per_prompt": per_prompt, "collect_seconds": collect_seconds}, args.examples)

    order = torch.randperm(len(per_prompt), generator=torch.Generator().manual_seed(args.seed)).tolist()
    cut = max(1, int(round(0.8 * len(order))))
    train_prompts, held_prompts = order[:cut], order[cut:]
    x_train, h_train, y_train = stack(per_prompt, train_prompts)
    if len(y_train) == 0 or y_train.min() == y_train.max():
        raise ConfigError("--prompts", f"the training runs gave {len(y_train)} labelled tokens, not both accepted and "
                                       "rejected ones; use more prompts or tokens")
    prior = torch.tensor(HAND_SET_PRIOR, dtype=torch.float64)
    weights, projection = fit(per_prompt, train_prompts, args.hidden_components, args.l2)
    base_weights, _ = fit(per_prompt, train_prompts, 0, args.l2)
    heldout, cross_validated, heldout_examples = {}, {}, 0
    if held_prompts:
        x_held, h_held, y_held = stack(per_prompt, held_prompts)
        heldout_examples = len(y_held)
        heldout = {"trained": scores(weights, features(x_held, h_held, projection), y_held),
                   "trained_without_hidden_state": scores(base_weights, x_held, y_held),
                   "hand_set_prior": scores(prior, x_held, y_held)}
    if args.hidden_components and len(train_prompts) >= 4:
        # 4-fold cross-validation over the training prompts: does the hidden state help on unseen prompts?
        folds = [train_prompts[i::4] for i in range(4)]
        for name, components in (("with_hidden_state", args.hidden_components), ("without_hidden_state", 0)):
            losses = []
            for fold in folds:
                w, proj = fit(per_prompt, [i for i in train_prompts if i not in fold], components, args.l2)
                x, h, y = stack(per_prompt, fold)
                losses.append(scores(w, features(x, h, proj), y)["log_loss"])
            cross_validated[name] = round(sum(losses) / len(losses), 4)
    entry = {
        "weights": [round(float(w), 6) for w in weights],
        "features": list(ACCEPTANCE_FEATURES + (projection.names if projection is not None else ())),
        "hidden_components": len(projection.names) if projection is not None else 0, "l2": args.l2,
        "target": target.name, "drafter": args.drafter, "vocab_trim": args.vocab_trim,
        "k": args.k, "prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "seed": args.seed,
        "train_examples": len(y_train), "train_accept_rate": round(float(y_train.mean()), 4),
        "heldout_examples": heldout_examples,
        "heldout": heldout,
        "cross_validated_log_loss": cross_validated,
        "collect_seconds": collect_seconds,  # the recording runs (model loading included)
        "seconds": round(time.perf_counter() - started, 1),  # this invocation (less when the runs were reused)
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / PREDICTOR_FILE
    existing = json.loads(path.read_text()) if path.is_file() else {}
    predictors = dict(existing.get("predictors", {}))
    predictors[predictor_key(args.drafter, args.vocab_trim)] = entry
    # the projection's tensors go beside the JSON; the written weights match them exactly
    tensor_path = out / PROJECTION_FILE
    tensors = load_file(str(tensor_path)) if tensor_path.is_file() else {}
    key = predictor_key(args.drafter, args.vocab_trim)
    tensors = {name: t for name, t in tensors.items() if not name.startswith(f"{key}.")}
    if projection is not None:
        tensors[f"{key}.mean"] = projection.mean.float().contiguous()
        tensors[f"{key}.components"] = projection.components.float().contiguous()
    if tensors:
        save_file(tensors, str(tensor_path))
    path.write_text(json.dumps({"format": 2, "predictors": predictors}, indent=2) + "\n")
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
    parser.add_argument("--hidden-components", type=int, default=8,
                        help="principal directions of the drafter's hidden state used as features (0 = none)")
    parser.add_argument("--l2", type=float, default=1.0, help="L2 pull of the weights towards the prior")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--examples", default="",
                        help="file for the recorded examples: written after the runs, reused when the settings match")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.k < 1 or args.prompts < 2 or args.max_new_tokens < 2 or args.hidden_components < 0 or args.l2 < 0:
        print("specviz train-predictor: error: --k >= 1, --prompts >= 2, --max-new-tokens >= 2, "
              "--hidden-components >= 0 and --l2 >= 0 are required",
              file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    entry = train(args)
    held = entry["heldout"]
    print(f"trained on {entry['train_examples']} checked tokens from {entry['prompts']} prompts in {entry['seconds']} s; "
          f"held-out log loss {held.get('trained', {}).get('log_loss')} (without the hidden state "
          f"{held.get('trained_without_hidden_state', {}).get('log_loss')}, hand-set prior "
          f"{held.get('hand_set_prior', {}).get('log_loss')}), accuracy {held.get('trained', {}).get('accuracy')}; "
          f"cross-validated on the training prompts {entry['cross_validated_log_loss'] or 'n/a'}; "
          f"weights {entry['weights']} -> {Path(args.out) / PREDICTOR_FILE}")
    return 0
