"""`specviz train-heads`: train the feature-level draft heads (EAGLE, Medusa) for a target.

    specviz train-heads --out assets/drafters/smollm2-135m-instruct        # data + both heads (~1 hour)
    specviz train-heads --out /tmp/heads --prompts 8 --text-tokens 2000 --eagle-steps 5 --medusa-steps 5   # smoke

1. data (feature_data.py, cached): the target's answers to the training prompts and offline text, each
   with the target's feature at every position;
2. hold out every sequence of 5 % of the prompts (per category) and of the text files;
3. EAGLE: teacher-forced on windows of the sequences. Position i's input is [embedding of token i + 1 ;
   feature i + noise]; the loss is SmoothL1(predicted feature i + 1, the target's) plus the cross-entropy
   of the target's next-token distribution against the head's, both through the target's LM head over the
   `train_vocab` most frequent tokens. A second, unrolled pass feeds the head its own predicted features
   (as at draft time, where every drafted position after the first reads a predicted feature);
4. Medusa: block j on feature i learns the target's distribution of token i + 2 + j;
5. save (float16), reload from disk, measure held-out greedy acceptance per draft position and per
   category by drafting chains as the engine does, and write the model card.

Seeded (one torch.Generator per head), a tqdm bar, a log file, and resumable: a killed run restarts from
its last checkpoint in the output folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm
from transformers import DynamicCache

from engine import EMBEDDED_DEFAULT, LoadedModel, ModelCache
from engine.errors import ConfigError
from engine.loading.feature_drafters import EAGLE, MEDUSA, EagleHead, MedusaHeads, load_feature_drafter, save_head
from engine.loading.trained_drafters import drafters_dir
from engine.loading.vocab_trim import FREQUENCY_FILE, load_frequency_order

from .distill import RunLog
from .feature_data import FeatureDataConfig, FeatureSequence, load_or_build, split_heldout

LOG_FILE = "heads.log"
CHECKPOINT_EVERY = 50


@dataclass(frozen=True)
class HeadTrainConfig:
    eagle_steps: int = 800
    medusa_steps: int = 300
    medusa_heads: int = 4
    batch: int = 8  # windows per step
    window: int = 192  # tokens per training window
    lr: float = 1e-3
    warmup_steps: int = 40
    train_vocab: int = 8192  # the training softmax covers these most frequent tokens (the VocabTrim list)
    noise: float = 0.1  # uniform noise on input features, times each feature's standard deviation
    cls_weight: float = 0.5  # weight of the cross-entropy next to the feature regression
    unroll: int = 2  # EAGLE passes per step (the second reads the head's own predictions)
    heldout_fraction: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.eagle_steps, self.medusa_steps, self.medusa_heads, self.batch, self.window, self.train_vocab) < 0 \
                or self.batch < 1 or self.window < 4 or not 1 <= self.unroll <= 4:
            raise ConfigError("train-heads", "steps >= 0; batch, heads, train_vocab >= 1; window >= 4; unroll in 1..4")


def learning_rate(step: int, total: int, config: HeadTrainConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def windows(sequences: list[FeatureSequence], width: int) -> list[tuple[int, int]]:
    """(sequence index, start) of every training window: consecutive, overlapping by a quarter."""
    out = []
    for i, s in enumerate(sequences):
        n = int(s.ids.numel())
        for start in range(0, max(1, n - width // 4), width - width // 4):
            if n - start >= 4:
                out.append((i, start))
    return out


def batch_of(sequences: list[FeatureSequence], picks: list[tuple[int, int]], width: int):
    """Right-padded ids [B, W], features [B, W, H] (float32) and a validity mask [B, W]."""
    rows = [(sequences[i].ids[s : s + width], sequences[i].features[s : s + width]) for i, s in picks]
    length = max(int(ids.numel()) for ids, _ in rows)
    hidden = rows[0][1].shape[-1]
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    feats = torch.zeros(len(rows), length, hidden)
    valid = torch.zeros(len(rows), length, dtype=torch.bool)
    for r, (i, f) in enumerate(rows):
        ids[r, : i.numel()], feats[r, : i.numel()], valid[r, : i.numel()] = i, f.float(), True
    return ids, feats, valid


class TrainHead:
    """The trimmed LM head both losses read: logits over the `train_vocab` most frequent tokens."""

    def __init__(self, target: LoadedModel, order: torch.Tensor, n: int):
        keep = order[:n].sort().values
        self.weight = target.model.get_output_embeddings().weight.detach()[keep].float()  # [N, H]

    def log_probs(self, features: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(features @ self.weight.T, dim=-1)


def soft_ce(teacher_features: torch.Tensor, student_features: torch.Tensor, head: TrainHead) -> tuple[torch.Tensor, int]:
    """Cross-entropy of the target's distribution (from its features) against the student's, and top-1 hits."""
    with torch.no_grad():
        p = head.log_probs(teacher_features).exp()
    log_q = head.log_probs(student_features)
    return -(p * log_q).sum(-1).mean(), int((log_q.argmax(-1) == p.argmax(-1)).sum())


def eagle_loss(head: EagleHead, ids, feats, valid, config: HeadTrainConfig, train_head: TrainHead,
               generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """Loss of the unrolled EAGLE passes on one batch; returns (loss, first-pass top-1 agreement)."""
    scale = feats[valid].std(0)  # [H]
    noise = (torch.rand(feats.shape, generator=generator) - 0.5) * 2 * config.noise * scale
    inputs = feats[:, :-1] + noise[:, :-1]  # feature i (+ noise) ...
    total, agreement = torch.zeros(()), 0.0
    for k in range(config.unroll):
        tokens = ids[:, 1 + k :]  # ... with token i + 1 + k
        predicted = head(tokens, inputs, use_cache=False, logits_to_keep=0).hidden_states[0]  # [B, T - 1 - k, H]
        target = feats[:, 1 + k :]
        mask = valid[:, 1 + k :]
        reg = nn.functional.smooth_l1_loss(predicted[mask], target[mask])
        ce, hits = soft_ce(target[mask], predicted[mask], train_head)
        total = total + reg + config.cls_weight * ce
        if k == 0:
            agreement = hits / max(1, int(mask.sum()))
        inputs = predicted[:, :-1].detach()  # the next pass reads the head's own predictions
    return total / config.unroll, agreement


def medusa_loss(heads: MedusaHeads, ids, feats, valid, train_head: TrainHead) -> tuple[torch.Tensor, float]:
    """Block j on feature i against the target's distribution of token i + 2 + j (from feature i + 1 + j)."""
    out = heads(feats)  # [B, T, J, H]
    losses, first = [], 0.0
    for j in range(heads.heads):
        shift = 1 + j
        if feats.shape[1] <= shift:
            break
        mask = valid[:, shift:]
        ce, hits = soft_ce(feats[:, shift:][mask], out[:, :-shift, j][mask], train_head)
        losses.append(ce)
        if j == 0:
            first = hits / max(1, int(mask.sum()))
    return torch.stack(losses).mean(), first


def train_module(module: nn.Module, kind: str, steps: int, loss_fn, train: list[FeatureSequence],
                 config: HeadTrainConfig, log: RunLog, checkpoint: Path) -> dict:
    """AdamW on the module's own parameters over seeded random windows; checkpoints; returns stats."""
    generator = torch.Generator().manual_seed(config.seed)
    own = [p for name, p in module.named_parameters() if name in module.own_state()]
    for p in module.parameters():
        p.requires_grad_(False)
    for p in own:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(own, lr=config.lr, weight_decay=0.0)
    settings = {"kind": kind, "steps": steps, "config": dataclasses.asdict(config), "windows": len(train)}
    first, wall_before, recent = 0, 0.0, []
    if checkpoint.is_file():
        saved = torch.load(checkpoint, weights_only=True)
        if saved["settings"] == settings:
            module.load_state_dict(saved["module"], strict=False)
            optimizer.load_state_dict(saved["optimizer"])
            generator.set_state(saved["generator"])
            first, wall_before, recent = saved["step"], saved["wall_s"], [tuple(r) for r in saved["recent"]]
            log(f"{kind}: resuming from {checkpoint} at step {first}")
    all_windows = windows(train, config.window)
    start = time.perf_counter()
    module.train()
    bar = tqdm(total=steps, initial=first, desc=f"training {kind}", unit="step")
    for step in range(first, steps):
        picks = torch.randint(len(all_windows), (config.batch,), generator=generator).tolist()
        loss, agree = loss_fn(*batch_of(train, [all_windows[i] for i in picks], config.window), generator)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(own, 1.0)
        optimizer.step()
        recent = (recent + [(float(loss.detach()), agree)])[-50:]
        bar.update()
        bar.set_postfix(loss=f"{sum(r[0] for r in recent) / len(recent):.3f}",
                        agree=f"{sum(r[1] for r in recent) / len(recent):.3f}")
        if (step + 1) % max(1, steps // 10) == 0 or step + 1 == steps:
            log(f"{kind} step {step + 1}/{steps}: loss {sum(r[0] for r in recent) / len(recent):.4f}, "
                f"train top-1 agreement {sum(r[1] for r in recent) / len(recent):.3f}")
        if (step + 1) % CHECKPOINT_EVERY == 0 and step + 1 < steps:
            torch.save({"settings": settings, "step": step + 1, "wall_s": wall_before + time.perf_counter() - start,
                        "recent": recent, "module": module.own_state(), "optimizer": optimizer.state_dict(),
                        "generator": generator.get_state()}, checkpoint)
    bar.close()
    module.eval()
    module.requires_grad_(False)
    checkpoint.unlink(missing_ok=True)
    return {"steps": steps, "batch_windows": config.batch, "window": config.window, "lr": config.lr,
            "wall_s": round(wall_before + time.perf_counter() - start, 1),
            "final_loss": round(sum(r[0] for r in recent) / max(1, len(recent)), 4)}


# --------------------------------------------------------------------------- held-out acceptance


@torch.inference_mode()
def eagle_chain(head: EagleHead, s: FeatureSequence, positions: list[int], depth: int) -> list[int]:
    """Greedy chains drafted as the engine drafts them, from each position t (features up to t, tokens up to
    t + 1); returns the accepted length (matches with the target's own next tokens) at each."""
    ids, feats = s.ids, s.features.float()
    cache = DynamicCache(config=head.body.config)
    full = head(ids[None, 1:], feats[None, :-1], cache=cache, logits_to_keep=0)
    keys, values = cache.layers[0].keys, cache.layers[0].values
    out = []
    for t in positions:
        own = DynamicCache(config=head.body.config)
        own.update(keys[:, :, : t + 1].clone(), values[:, :, : t + 1].clone(), 0)
        logits, feature = full.logits[0, t], full.hidden_states[0][0, t]
        accepted = 0
        for k in range(depth):
            token = int(logits.argmax())
            if t + 2 + k >= ids.numel() or token != int(ids[t + 2 + k]):
                break
            accepted += 1
            step = head(torch.tensor([[token]]), feature[None, None], cache=own,
                        position_ids=torch.tensor([[t + 1 + k]]))
            logits, feature = step.logits[0, -1], step.hidden_states[0][0, -1]
        out.append(accepted)
    return out


@torch.inference_mode()
def medusa_chain(heads: MedusaHeads, s: FeatureSequence, positions: list[int]) -> list[int]:
    """Accepted length of the Medusa chain drafted from each position t (block j's top token at t + 2 + j)."""
    top = heads.lm_head(heads(s.features.float()[positions])).argmax(-1)  # [P, J]
    out = []
    for row, t in enumerate(positions):
        accepted = 0
        for j in range(heads.heads):
            if t + 2 + j >= s.ids.numel() or int(top[row, j]) != int(s.ids[t + 2 + j]):
                break
            accepted += 1
        out.append(accepted)
    return out


def acceptance_table(lengths: dict[str, list[int]], depth: int) -> dict:
    """Per category: positions drafted from, mean accepted length, and P(position k accepted | k - 1 were)."""
    table = {}
    for category, values in sorted(lengths.items()) + [("all", [v for vs in lengths.values() for v in vs])]:
        if not values:
            continue
        reached = [sum(1 for v in values if v >= k) for k in range(depth + 1)]
        table[category] = {"positions": len(values), "mean_accepted": round(sum(values) / len(values), 3),
                           "per_position": [round(reached[k] / reached[k - 1], 3) if reached[k - 1] else None
                                            for k in range(1, depth + 1)]}
    return table


def heldout_acceptance(module: EagleHead | MedusaHeads, heldout: list[FeatureSequence], depth: int,
                       stride: int = 3) -> dict:
    """Greedy acceptance of chains drafted from every `stride`-th position of the held-out greedy answers."""
    lengths: dict[str, list[int]] = {}
    for s in heldout:
        if s.source != "answer" or s.temperature != 0:
            continue
        positions = list(range(max(0, s.prompt_length - 2), int(s.ids.numel()) - 2, stride))
        got = (eagle_chain(module, s, positions, depth) if isinstance(module, EagleHead)
               else medusa_chain(module, s, positions))
        lengths.setdefault(s.category, []).extend(got)
    return acceptance_table(lengths, depth if isinstance(module, EagleHead) else module.heads)


# --------------------------------------------------------------------------- command


def write_card(out: Path) -> None:
    """The model card section for the heads: data, training, held-out acceptance per position and category."""
    lines = ["# Feature-level draft heads (EAGLE, Medusa)", "",
             "Trained by `specviz train-heads` on the target's own features (see specviz/training/heads.py).", ""]
    for kind in (EAGLE, MEDUSA):
        path = out / f"{kind}.json"
        if not path.is_file():
            continue
        config = json.loads(path.read_text())
        data, training = config.get("data", {}), config.get("training", {})
        lines += [f"## {kind}", "", f"- command: `{config.get('command', '')}`",
                  f"- data: {data.get('sequences')} sequences, {data.get('tokens')} tokens "
                  f"({data.get('answer_tokens')} in the target's answers to {data.get('prompts')} training prompts at "
                  f"temperatures {data.get('temperatures')}, {data.get('text_tokens')} of offline text); built in "
                  f"{data.get('wall_s')} s; held out: {data.get('heldout_sequences')} sequences",
                  f"- training: {training.get('steps')} steps of {training.get('batch_windows')} windows of "
                  f"{training.get('window')} tokens, lr {training.get('lr')}, {training.get('wall_s')} s, "
                  f"final loss {training.get('final_loss')}", "",
                  "Held-out greedy acceptance (chains drafted from every 3rd position of held-out answers; "
                  "per position: P(accepted | the previous ones were)):", "",
                  "| category | positions | mean accepted | per position |", "|---|---|---|---|"]
        for category, row in config.get("heldout", {}).items():
            per = ", ".join("-" if p is None else f"{p:.2f}" for p in row["per_position"])
            lines.append(f"| {category} | {row['positions']} | {row['mean_accepted']:.2f} | {per} |")
        lines.append("")
    (out / "HEADS.md").write_text("\n".join(lines))


def build_parser() -> argparse.ArgumentParser:
    d, t = FeatureDataConfig(), HeadTrainConfig()
    parser = argparse.ArgumentParser(prog="specviz train-heads", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default=None, help="output folder (default: the target's assets/drafters folder)")
    parser.add_argument("--target", default=EMBEDDED_DEFAULT)
    parser.add_argument("--kind", choices=(EAGLE, MEDUSA, "all"), default="all")
    parser.add_argument("--seed", type=int, default=t.seed)
    parser.add_argument("--data", help="feature data file (default: the cache, keyed by the data settings)")
    parser.add_argument("--prompts", type=int, default=d.prompts)
    parser.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    parser.add_argument("--text-tokens", type=int, default=d.text_tokens)
    parser.add_argument("--eagle-steps", type=int, default=t.eagle_steps)
    parser.add_argument("--medusa-steps", type=int, default=t.medusa_steps)
    parser.add_argument("--medusa-heads", type=int, default=t.medusa_heads)
    parser.add_argument("--batch", type=int, default=t.batch)
    parser.add_argument("--window", type=int, default=t.window)
    parser.add_argument("--lr", type=float, default=t.lr)
    parser.add_argument("--unroll", type=int, default=t.unroll)
    parser.add_argument("--depth", type=int, default=6, help="draft depth of the held-out acceptance measurement")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    return parser


def run(args: argparse.Namespace, command: str) -> Path:
    out = Path(args.out) if args.out else drafters_dir(args.target)
    out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out / LOG_FILE)
    try:
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        torch.manual_seed(args.seed)
        data_config = FeatureDataConfig(prompts=args.prompts, max_new_tokens=args.max_new_tokens,
                                        text_tokens=args.text_tokens, seed=args.seed)
        config = HeadTrainConfig(eagle_steps=args.eagle_steps, medusa_steps=args.medusa_steps,
                                 medusa_heads=args.medusa_heads, batch=args.batch, window=args.window, lr=args.lr,
                                 unroll=args.unroll, seed=args.seed)
        log(f"$ {command}")
        target = ModelCache().get(args.target, progress=log)
        frequency = out / FREQUENCY_FILE
        if not frequency.is_file():
            raise ConfigError("out", f"{out} has no {FREQUENCY_FILE} (the VocabTrim list): run `specviz train-drafter` "
                                     "first or point --out at the target's drafters folder")
        data = load_or_build(target, data_config, Path(args.data) if args.data else None, log)
        train, heldout = split_heldout(data, config.heldout_fraction, args.seed)
        train_head = TrainHead(target, load_frequency_order(frequency), config.train_vocab)
        meta = {"command": command, "torch_threads": torch.get_num_threads(), "data": {
            "sequences": len(data.sequences), "tokens": data.tokens, "prompts": data_config.prompts,
            "temperatures": list(data_config.temperatures),
            "answer_tokens": sum(int(s.ids.numel()) for s in data.sequences if s.source == "answer"),
            "text_tokens": sum(int(s.ids.numel()) for s in data.sequences if s.source != "answer"),
            "wall_s": round(data.wall_s, 1), "heldout_sequences": len(heldout)}}
        log(f"{len(train)} training sequences, {len(heldout)} held out")
        for kind in (EAGLE, MEDUSA) if args.kind == "all" else (args.kind,):
            _train_one(kind, target, train, heldout, config, train_head, meta, out, args.depth, log)
        write_card(out)
        log(f"Wrote {out / 'HEADS.md'}")
        return out
    finally:
        log.close()


def _train_one(kind: str, target: LoadedModel, train: list[FeatureSequence], heldout: list[FeatureSequence],
               config: HeadTrainConfig, train_head: TrainHead, meta: dict, out: Path, depth: int, log: RunLog) -> None:
    """Train one head, save it, reload it from disk and measure its held-out acceptance."""
    if kind == EAGLE:
        module = EagleHead(target)
        module.init_from_target(target)
        stats = train_module(module, kind, config.eagle_steps,
                             lambda i, f, v, g: eagle_loss(module, i, f, v, config, train_head, g),
                             train, config, log, out / f"{kind}.checkpoint.pt")
    else:
        module = MedusaHeads(target, config.medusa_heads)
        module.init_zero()
        stats = train_module(module, kind, config.medusa_steps,
                             lambda i, f, v, g: medusa_loss(module, i, f, v, train_head),
                             train, config, log, out / f"{kind}.checkpoint.pt")
    save_head(module, kind, out, target, meta | {"training": stats})
    reloaded = load_feature_drafter(target, kind, out)
    table = heldout_acceptance(reloaded, heldout, depth)
    path = out / f"{kind}.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"heldout": table}, indent=2) + "\n")
    overall = table.get("all", {})
    log(f"{kind}: held-out greedy mean accepted length {overall.get('mean_accepted')} over "
        f"{overall.get('positions')} positions; per position {overall.get('per_position')}")


def main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    run(args, shlex.join(["specviz", "train-heads", *argv]))
    return 0
