"""`specviz train-drafter`: distil small drafters for a target on data the target generated.

    specviz train-drafter --out assets/drafters/smollm2-135m-instruct          # data + both kinds
    specviz train-drafter --kind kangaroo --exit-layers 2,4,6 --steps 300 --out /tmp/drafters

1. data: the target continues the training prompts (cached; see `data.py`);
2. hold out the sequences of a few prompts; train on the rest, with the loss
   cross-entropy(teacher, drafter) = -sum_t p_teacher(t) log q_drafter(t), where p_teacher is
   the target's top-K distribution renormalised and q_drafter is the drafter's softmax over the
   `train_vocab` most frequent target tokens (cheap, and the same set VocabTrim keeps); a run
   that is killed resumes from its last checkpoint in the output folder when rerun;
3. save the drafter's own weights (float16), a JSON config, the frequency table, a log;
4. load the saved drafter back through `engine.loading.trained_drafters` and measure held-out top-1
   agreement with the target (the greedy acceptance rate, teacher-forced); write the model card.

Distilled: L own decoder layers, initialised from target layers (`source_layers`), and an own
final norm. Kangaroo: one adapter layer (initialised from target layer e) and norm per exit
layer e, all trained in one run over the same batches, on top of the target's frozen layers.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch
from torch import nn
from tqdm import tqdm

from engine import EMBEDDED_DEFAULT, LoadedModel, ModelCache
from engine.errors import ConfigError
from engine.loading.trained_drafters import (
    DISTILLED,
    FORMAT_VERSION,
    KANGAROO,
    available,
    load_own_state,
    load_trained_drafter,
    new_distilled,
    new_kangaroo,
    own_modules,
    own_state,
)
from engine.loading.vocab_trim import FREQUENCY_FILE, save_frequency_table

from .data import DataConfig, Sequence, TrainingData, load_or_generate

LOG_FILE = "training.log"
CARD_FILE = "README.md"
DEFAULT_SOURCE_LAYERS = (0, 29)  # distilled: target layers its own layers start from (first and last)
DEFAULT_EXIT_LAYERS = (2, 4)  # Kangaroo: exit layers trained in one run


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000  # optimiser steps per kind
    batch_prompts: int = 1  # prompt groups per step (each with its sequences at every temperature)
    lr: float = 3e-3  # peak AdamW learning rate (linear warm-up, cosine decay to 10 %)
    warmup_steps: int = 50
    train_vocab: int = 8192  # the drafter's softmax during training covers these most frequent tokens
    heldout_fraction: float = 0.08  # share of prompts (all their temperatures) held out for evaluation
    eval_vocab_trim: int = 8192  # held-out agreement is also measured with this VocabTrim (0 = skip)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_prompts < 1 or self.train_vocab < 1 or self.eval_vocab_trim < 0:
            raise ConfigError("train", "steps, batch size and train_vocab must be >= 1, eval_vocab_trim >= 0")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ConfigError("heldout_fraction", f"must be in (0, 1), got {self.heldout_fraction}")


class RunLog:
    """Lines to a log file (appended) and to stderr, without breaking tqdm's progress bars."""

    def __init__(self, path: Path, stream: TextIO | None = None):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a", encoding="utf-8")
        self.stream = stream or sys.stderr  # looked up now, so a replaced sys.stderr (tests) is honoured

    def __call__(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self.file.write(f"{stamp} {message}\n")
        self.file.flush()
        tqdm.write(message, file=self.stream)

    def close(self) -> None:
        self.file.close()


# --------------------------------------------------------------------------- data split and batches


def split_heldout(data: TrainingData, fraction: float, generator: torch.Generator) -> tuple[list[Sequence], list[Sequence]]:
    """(train, held-out): every sequence of a held-out prompt is held out (at least one prompt, if there are two)."""
    prompt_ids = sorted({s.prompt_id for s in data.sequences})
    n_heldout = min(max(1, round(fraction * len(prompt_ids))), len(prompt_ids) - 1) if len(prompt_ids) > 1 else 0
    order = torch.randperm(len(prompt_ids), generator=generator).tolist()
    heldout_ids = {prompt_ids[i] for i in order[:n_heldout]}
    train = [s for s in data.sequences if s.prompt_id not in heldout_ids]
    heldout = [s for s in data.sequences if s.prompt_id in heldout_ids]
    return train, heldout


def group_by_prompt(sequences: list[Sequence]) -> list[list[Sequence]]:
    """The sequences of each prompt together (they share the prompt tokens), in first-seen order."""
    groups: dict[str, list[Sequence]] = {}
    for s in sequences:
        groups.setdefault(s.prompt_id, []).append(s)
    return list(groups.values())


@dataclass
class Batch:
    """Prompt groups packed one per row: [prompt, c1[:-1], c2[:-1], ...], the prompt computed once.

    A continuation attends to the prompt and to its own earlier tokens only, at the positions it
    would have on its own (prompt_length + j), so each row computes exactly what separate
    sequences would, with the shared prompt processed once instead of once per temperature.
    """

    ids: torch.Tensor  # [G, T] packed token ids, right-padded
    positions: torch.Tensor  # [G, T] position ids
    mask: torch.Tensor  # [G, 1, T, T] additive attention mask (0 = attend, dtype min = masked)
    rows: torch.Tensor  # [M] batch row of each scored position
    cols: torch.Tensor  # [M] packed index whose output predicts that continuation token
    top_ids: torch.Tensor  # [M, K] the target's top-K ids there
    top_logprobs: torch.Tensor  # [M, K] float32 their log-probabilities


def make_batch(groups: list[list[Sequence]]) -> Batch:
    packed = [_pack(group) for group in groups]
    width = max(ids.numel() for ids, *_ in packed)
    ids = torch.zeros(len(groups), width, dtype=torch.long)
    positions = torch.zeros(len(groups), width, dtype=torch.long)
    allowed = torch.tril(torch.ones(width, width, dtype=torch.bool)).repeat(len(groups), 1, 1)  # padding: causal
    rows, cols = [], []
    for g, (row_ids, row_positions, segments, scored) in enumerate(packed):
        n = row_ids.numel()
        ids[g, :n], positions[g, :n] = row_ids, row_positions
        # a token sees earlier tokens of the prompt (segment 0) and of its own continuation
        same = (segments[None, :] == 0) | (segments[None, :] == segments[:, None])
        allowed[g, :n, :n] &= same
        cols.append(scored)
        rows.append(torch.full((scored.numel(),), g))
    mask = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    sequences = [s for group in groups for s in group]
    return Batch(ids, positions, mask[:, None], torch.cat(rows), torch.cat(cols),
                 torch.cat([s.top_ids for s in sequences]), torch.cat([s.top_logprobs for s in sequences]).float())


def _pack(group: list[Sequence]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One prompt group as (ids [T], positions [T], segments [T], scored packed indices [M])."""
    length = group[0].prompt_length
    ids, positions, segments, scored = [group[0].ids[:length]], [torch.arange(length)], [torch.zeros(length, dtype=torch.long)], []
    offset = length
    for i, s in enumerate(group, start=1):
        # the continuation's last token predicts nothing we score: feed all but it
        fed = s.ids[length:-1]
        ids.append(fed)
        positions.append(torch.arange(fed.numel()) + length)
        segments.append(torch.full((fed.numel(),), i))
        # continuation token 0 is predicted by the last prompt token, token j by the fed token j - 1
        scored.append(torch.cat([torch.tensor([length - 1]), torch.arange(fed.numel()) + offset]))
        offset += fed.numel()
    return torch.cat(ids), torch.cat(positions), torch.cat(segments), torch.cat(scored)


def batches(groups: list[list[Sequence]], size: int, steps: int, generator: torch.Generator):
    """`steps` batches of `size` prompt groups, drawn without replacement epoch after epoch, in a seeded order."""
    order: list[int] = []
    for _ in range(steps):
        if len(order) < size:
            order += torch.randperm(len(groups), generator=generator).tolist()
        chosen, order = order[:size], order[size:]
        yield make_batch([groups[i] for i in chosen])


# --------------------------------------------------------------------------- students


def decoder_inputs(target: LoadedModel, batch: Batch) -> tuple[torch.Tensor, dict]:
    """The token embeddings [G, T, H] and the keyword arguments every decoder layer takes."""
    inner = target.model.model
    hidden = inner.embed_tokens(batch.ids)
    return hidden, {
        "attention_mask": batch.mask,
        "position_embeddings": inner.rotary_emb(hidden, position_ids=batch.positions),
        "position_ids": batch.positions,
    }


class Student:
    """What a training run optimises: one or more drafters that share each batch.

    `hidden(batch)` returns one final-norm hidden state [G, T, H] per drafter, in `names` order.
    """

    names: list[str]
    drafters: list[nn.Module]
    shared_layers: list[int]  # per drafter: how many target layers it shares

    def parameters(self) -> list[nn.Parameter]:
        return [p for d, shared in zip(self.drafters, self.shared_layers)
                for m in own_modules(d, shared).values() for p in m.parameters()]

    def hidden(self, batch: Batch) -> list[torch.Tensor]:
        raise NotImplementedError

    def describe(self) -> dict:
        """What identifies the student's architecture and initialisation (for checkpoints)."""
        raise NotImplementedError


class DistilledStudent(Student):
    def __init__(self, target: LoadedModel, source_layers: tuple[int, ...]):
        self.target = target
        self.names = [DISTILLED]
        self.drafters = [new_distilled(target, source_layers)]
        self.shared_layers = [0]
        self.source_layers = source_layers

    def describe(self) -> dict:
        return {"kind": DISTILLED, "source_layers": list(self.source_layers)}

    def hidden(self, batch: Batch) -> list[torch.Tensor]:
        inner = self.drafters[0].model
        hidden, layer_kwargs = decoder_inputs(self.target, batch)
        for layer in inner.layers:
            hidden = layer(hidden, **layer_kwargs)
        return [inner.norm(hidden)]


class KangarooStudent(Student):
    """Adapters for several exit layers; the target's layers below run once per batch, without gradients."""

    def __init__(self, target: LoadedModel, exit_layers: tuple[int, ...]):
        self.target = target
        self.exit_layers = tuple(sorted(exit_layers))
        self.names = [f"{KANGAROO}:{e}" for e in self.exit_layers]
        self.drafters = [new_kangaroo(target, e) for e in self.exit_layers]
        self.shared_layers = list(self.exit_layers)

    def describe(self) -> dict:
        return {"kind": KANGAROO, "exit_layers": list(self.exit_layers)}

    def hidden(self, batch: Batch) -> list[torch.Tensor]:
        inner = self.target.model.model
        hidden, layer_kwargs = decoder_inputs(self.target, batch)
        # 1. the frozen target layers, keeping the hidden state at each exit
        taps = {}
        with torch.no_grad():
            for i in range(max(self.exit_layers)):
                hidden = inner.layers[i](hidden, **layer_kwargs)
                if i + 1 in self.exit_layers:
                    taps[i + 1] = hidden
        # 2. each adapter layer and its norm, with gradients
        return [d.model.norm(d.model.layers[e](taps[e], **layer_kwargs)) for d, e in zip(self.drafters, self.exit_layers)]


# --------------------------------------------------------------------------- loss and training


def distill_loss(hidden: torch.Tensor, head: torch.Tensor, slot: torch.Tensor, top_ids: torch.Tensor,
                 top_logprobs: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Cross-entropy from the teacher's renormalised top-K to the drafter's softmax over the train vocabulary.

    hidden: [M, H] drafter states at the scored positions; head: [N, H] LM-head rows of the train
    vocabulary; slot: [V] each token's row in head (-1 outside); top_ids, top_logprobs: [M, K].
    Teacher entries outside the train vocabulary are dropped (positions left with none are skipped).
    Returns (mean loss, number of positions whose drafter argmax is the teacher's top token).
    """
    log_q = torch.log_softmax(hidden @ head.T, dim=-1)  # [M, N]
    slots = slot[top_ids]  # [M, K]
    inside = slots >= 0
    valid = inside.any(dim=-1)  # [M]
    p = torch.softmax(top_logprobs.masked_fill(~inside, float("-inf"))[valid], dim=-1)  # [M', K]
    loss = -(p * log_q[valid].gather(-1, slots[valid].clamp(min=0))).sum(-1).mean()
    agree = int((log_q.argmax(-1) == slots[:, 0]).sum())
    return loss, agree


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay from lr to lr / 10."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


CHECKPOINT_EVERY = 25  # steps between training checkpoints (a killed run resumes from the last one)


def train(student: Student, target: LoadedModel, train_set: list[Sequence], data: TrainingData, config: TrainConfig,
          generator: torch.Generator, log: RunLog, checkpoint: Path) -> dict:
    """Optimise the student; returns training statistics for the model card.

    Every CHECKPOINT_EVERY steps the student's own weights, the optimiser state and the loss
    window go to `checkpoint`; a later call with the same settings resumes there (replaying the
    seeded batch order, so it sees the batches an uninterrupted run would) and deletes it at the end.
    """
    keep = data.frequency_order[: config.train_vocab].sort().values  # [N]
    head = target.model.get_output_embeddings().weight.detach()[keep]  # [N, H]
    slot = torch.full((data.frequency_order.numel(),), -1, dtype=torch.long)
    slot[keep] = torch.arange(keep.numel())
    params = student.parameters()
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    settings = {"train": dataclasses.asdict(config), "student": student.describe(),
                "data": data.config.fingerprint(data.target_name)}
    first, wall_before, recent = _resume(checkpoint, settings, student, optimizer, log)
    start = time.perf_counter()
    stream = batches(group_by_prompt(train_set), config.batch_prompts, config.steps, generator)
    bar = tqdm(total=config.steps, initial=first, desc=f"training {'+'.join(student.names)}", unit="step")
    for step, batch in enumerate(itertools.islice(stream, first, None), start=first):
        # 1. forward every drafter on the batch, score the continuation positions
        losses, agree = [], 0
        for hidden in student.hidden(batch):
            loss, hits = distill_loss(hidden[batch.rows, batch.cols], head, slot, batch.top_ids, batch.top_logprobs)
            losses.append(loss)
            agree += hits
        total = torch.stack(losses).sum()
        # 2. one optimiser step for all of them
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        # 3. progress: mean loss and top-1 agreement (train vocabulary) over the last 20 steps
        recent = (recent + [(total.item() / len(losses), agree, batch.rows.numel() * len(losses))])[-20:]
        mean_loss = sum(r[0] for r in recent) / len(recent)
        mean_agree = sum(r[1] for r in recent) / max(1, sum(r[2] for r in recent))
        bar.update()
        bar.set_postfix(loss=f"{mean_loss:.3f}", agree=f"{mean_agree:.3f}")
        if (step + 1) % max(1, config.steps // 10) == 0 or step + 1 == config.steps:
            log(f"step {step + 1}/{config.steps}: loss {mean_loss:.4f}, train top-1 agreement {mean_agree:.3f}")
        # 4. a checkpoint now and then
        if (step + 1) % CHECKPOINT_EVERY == 0 and step + 1 < config.steps:
            wall = wall_before + time.perf_counter() - start
            torch.save({"settings": settings, "step": step + 1, "wall_s": wall, "recent": recent,
                        "student": [own_state(d, n) for d, n in zip(student.drafters, student.shared_layers)],
                        "optimizer": optimizer.state_dict()}, checkpoint)
    bar.close()
    for p in params:
        p.requires_grad_(False)
    checkpoint.unlink(missing_ok=True)
    mean_loss = sum(r[0] for r in recent) / len(recent)
    return {"steps": config.steps, "batch_prompts": config.batch_prompts, "lr": config.lr,
            "warmup_steps": config.warmup_steps, "train_vocab": config.train_vocab,
            "wall_s": round(wall_before + time.perf_counter() - start, 1), "final_loss": round(mean_loss, 4)}


def _resume(checkpoint: Path, settings: dict, student: Student, optimizer: torch.optim.Optimizer,
            log: RunLog) -> tuple[int, float, list]:
    """(first step, wall time so far, loss window) from a matching checkpoint, loaded into student and optimiser."""
    if not checkpoint.is_file():
        return 0, 0.0, []
    saved = torch.load(checkpoint, weights_only=True)
    if saved["settings"] != settings:
        log(f"Ignoring checkpoint {checkpoint}: it was made with other settings")
        return 0, 0.0, []
    for drafter, shared, state in zip(student.drafters, student.shared_layers, saved["student"]):
        load_own_state(drafter, shared, state)
    optimizer.load_state_dict(saved["optimizer"])
    log(f"Resuming from {checkpoint} at step {saved['step']}")
    return saved["step"], saved["wall_s"], [tuple(r) for r in saved["recent"]]


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def heldout_agreement(drafter: nn.Module, heldout: list[Sequence]) -> dict:
    """Teacher-forced top-1 agreement of the drafter with the target on held-out continuations.

    "greedy" counts only sequences the target generated greedily: there it is the chance that a
    greedy draft token is accepted, given an accepted prefix. Returns fractions and the position count.
    """
    hits = {"all": 0, "greedy": 0}
    counts = {"all": 0, "greedy": 0}
    for s in heldout:
        n = s.continuation_length
        # logits of the last n + 1 positions; the last one predicts past the sequence
        logits = drafter(input_ids=s.ids[None], use_cache=False, logits_to_keep=n + 1).logits[0, :-1]  # [n, V]
        agree = int((logits.argmax(-1) == s.top_ids[:, 0]).sum())
        for key in ("all", "greedy") if s.temperature == 0 else ("all",):
            hits[key] += agree
            counts[key] += n
    return {key: round(hits[key] / counts[key], 4) if counts[key] else None for key in hits} | {"positions": counts["all"]}


def vocab_coverage(data: TrainingData, heldout: list[Sequence], n: int) -> float | None:
    """Share of the target's held-out top-1 tokens that lie in the n most frequent tokens."""
    if not heldout or n <= 0:
        return None
    kept = torch.zeros(data.frequency_order.numel(), dtype=torch.bool)
    kept[data.frequency_order[:n]] = True
    top1 = torch.cat([s.top_ids[:, 0] for s in heldout])
    return round(float(kept[top1].float().mean()), 4)


# --------------------------------------------------------------------------- saving


def _fp16(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(torch.float16).contiguous() for k, v in state.items()}


def save_student(student: Student, out: Path, target: LoadedModel, meta: dict) -> None:
    """Write <kind>.safetensors (own tensors in float16) and <kind>.json."""
    from safetensors.torch import save_file

    common = {
        "format": FORMAT_VERSION,
        "target": target.name,
        "hidden_size": target.model.config.hidden_size,
        "vocab_size": target.model.config.vocab_size,
        "target_num_layers": target.model.config.num_hidden_layers,
        "dtype": "float16",
    }
    if isinstance(student, DistilledStudent):
        kind = DISTILLED
        save_file(_fp16(own_state(student.drafters[0], 0)), str(out / f"{kind}.safetensors"))
        config = common | {"kind": kind, "num_layers": len(student.source_layers), "source_layers": list(student.source_layers)}
    else:
        assert isinstance(student, KangarooStudent)
        kind = KANGAROO
        state = {f"exit{e}.{k}": v for d, e in zip(student.drafters, student.exit_layers) for k, v in own_state(d, e).items()}
        save_file(_fp16(state), str(out / f"{kind}.safetensors"))
        config = common | {"kind": kind, "exit_layers": list(student.exit_layers)}
    (out / f"{kind}.json").write_text(json.dumps(config | meta, indent=2) + "\n")


def write_model_card(out: Path) -> None:
    """README.md from the JSON configs in the folder (so it describes every kind trained into it)."""
    kinds = available(out)
    configs = {kind: json.loads((out / f"{kind}.json").read_text())
               for kind in (DISTILLED, KANGAROO) if (out / f"{kind}.json").is_file()}
    if not configs:
        return
    first = next(iter(configs.values()))
    data = first["data"]
    lines = [
        f"# Trained drafters for {first['target']}",
        "",
        "Small drafters for speculative decoding with this target, trained by `specviz train-drafter` on text the",
        "target itself generated (distillation on its top-K next-token distributions). They share the target's",
        "token embeddings, rotary embedding and LM head (not stored here); only their own layers are stored",
        "(float16). Verification by the target keeps decoding lossless whatever the drafter proposes.",
        "",
        "```python",
        "from engine.loading.trained_drafters import load_trained_drafter",
        'drafter = load_trained_drafter(target, "distilled", vocab_trim=N)   # or "kangaroo:<exit layer>"',
        "```",
        "",
        "## Data",
        "",
        f"- {data['prompts']} training prompts written for this project (specviz/training/prompts.py; none from the",
        f"  evaluation suite), chat-templated, each continued by the target at temperatures {data['temperatures']}",
        f"  (up to {data['max_new_tokens']} new tokens, seed {data['seed']}): {data['sequences']} sequences,",
        f"  {data['continuation_tokens']} continuation tokens, top-{data['top_k']} distributions kept per position;",
        f"  generation took {data['wall_s']:.0f} s.",
        f"- Held out: the sequences of {data['heldout_prompts']} prompts ({data['heldout_positions']} positions).",
        f"- `{FREQUENCY_FILE}`: every token id, most often produced by the target first (the VocabTrim list).",
        "",
        "## Drafters",
        "",
    ]
    if DISTILLED in configs:
        c = configs[DISTILLED]
        lines += [
            f"- `distilled` ({DISTILLED}.safetensors): {c['num_layers']} own decoder layers (initialised from target layers",
            f"  {c['source_layers']}) and an own final norm.",
        ]
    if KANGAROO in configs:
        lines += [
            f"- `kangaroo:<e>` ({KANGAROO}.safetensors), e in {kinds[KANGAROO]}: the target's first e layers, then one",
            "  trained adapter decoder layer (initialised from target layer e) and norm.",
        ]
    lines += ["", "Reproduce: `specviz train-drafter --out <folder> --seed <seed>` trains both kinds (each draws its",
              "batches from its own seeded generator, so `--kind` runs give the same weights); the data is cached under",
              "~/.cache/specviz/training and reused when its settings match.",
              "", "## Training and held-out top-1 agreement with the target", "",
              "Agreement = how often the drafter's argmax equals the target's, teacher-forced on held-out continuations",
              "(\"greedy\": sequences the target decoded greedily, the greedy acceptance rate per token).", ""]
    for kind, c in configs.items():
        t = c["training"]
        lines += [
            f"### {kind}",
            "",
            f"- Command: `{c['command']}`",
            f"- {t['steps']} steps x {t['batch_prompts']} prompts (all their sequences), AdamW lr {t['lr']}, softmax over the "
            f"{t['train_vocab']} most frequent tokens, {t['wall_s']:.0f} s ({c['torch_threads']} CPU threads).",
            "",
            "| drafter | vocabulary | greedy | all temperatures | before training (greedy) |",
            "|---|---|---|---|---|",
        ]
        for name, result in c["heldout"].items():
            for vocab, scores in result["after"].items():
                before = result["before"] if vocab == "full" else ""
                lines.append(f"| `{name}` | {vocab} | {scores['greedy']} | {scores['all']} | {before} |")
        lines.append("")
    sizes = {p.name: p.stat().st_size for p in sorted(out.glob("*.safetensors"))}
    lines += ["## Files", ""] + [f"- `{name}`: {size / 1e6:.1f} MB" for name, size in sizes.items()] + [""]
    # sections other commands wrote into the card (train-predictor, train-diffusion) are kept
    existing = (out / CARD_FILE).read_text() if (out / CARD_FILE).is_file() else ""
    lines += other_sections(existing, {line for line in lines if line.startswith("## ")})
    (out / CARD_FILE).write_text("\n".join(lines))


def other_sections(text: str, own_headings: set[str]) -> list[str]:
    """The lines of the "## " sections of `text` whose headings are not in `own_headings`.

    >>> other_sections("# T\n## Data\nd\n## Mine\nm\n", {"## Data"})
    ['## Mine', 'm']
    """
    kept, keep = [], False
    for line in text.splitlines():
        if line.startswith("## "):
            keep = line not in own_headings
        if keep:
            kept.append(line)
    return kept


# --------------------------------------------------------------------------- the command


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def build_parser() -> argparse.ArgumentParser:
    d, t = DataConfig(), TrainConfig()
    parser = argparse.ArgumentParser(prog="specviz train-drafter", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--kind", choices=(DISTILLED, KANGAROO, "all"), default="all", help="what to train")
    parser.add_argument("--out", required=True, help="output folder (e.g. assets/drafters/smollm2-135m-instruct)")
    parser.add_argument("--target", default=EMBEDDED_DEFAULT, help="target model spec")
    parser.add_argument("--seed", type=int, default=t.seed)
    parser.add_argument("--data", help="training data file (default: the cache, keyed by the data settings)")
    parser.add_argument("--prompts", type=int, default=d.prompts, help="training prompts")
    parser.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    parser.add_argument("--temperatures", type=_floats, default=d.temperatures, help="comma-separated")
    parser.add_argument("--top-k", type=int, default=d.top_k, help="teacher distribution entries kept")
    parser.add_argument("--steps", type=int, default=t.steps, help="optimiser steps per kind")
    parser.add_argument("--batch", type=int, default=t.batch_prompts, help="prompts per step (with all their sequences)")
    parser.add_argument("--lr", type=float, default=t.lr)
    parser.add_argument("--train-vocab", type=int, default=t.train_vocab, help="tokens in the training softmax")
    parser.add_argument("--layers", type=_ints, default=DEFAULT_SOURCE_LAYERS,
                        help="distilled: target layers its own layers start from (comma-separated; their count is L)")
    parser.add_argument("--exit-layers", type=_ints, default=DEFAULT_EXIT_LAYERS, help="kangaroo: comma-separated")
    parser.add_argument("--vocab-trim", type=int, default=t.eval_vocab_trim, help="also evaluate with this VocabTrim N")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default; 1 suits a busy machine)")
    return parser


def run(args: argparse.Namespace, command: str) -> Path:
    """Generate (or reuse) the data, train the requested kinds, evaluate, save; returns the output folder."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out / LOG_FILE)
    try:
        try:
            data_config = DataConfig(prompts=args.prompts, max_new_tokens=args.max_new_tokens,
                                     temperatures=tuple(args.temperatures), top_k=args.top_k, seed=args.seed)
        except ValueError as exc:
            raise ConfigError("data", str(exc)) from None
        train_config = TrainConfig(steps=args.steps, batch_prompts=args.batch, lr=args.lr, train_vocab=args.train_vocab,
                                   eval_vocab_trim=args.vocab_trim, seed=args.seed)
        log(f"$ {command}")
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        torch.manual_seed(args.seed)
        target = ModelCache().get(args.target, progress=log)
        data = load_or_generate(target, data_config, Path(args.data) if args.data else None, log)
        save_frequency_table(out / FREQUENCY_FILE, data.frequency_order, data.token_counts)
        train_set, heldout = split_heldout(data, train_config.heldout_fraction, torch.Generator().manual_seed(args.seed))
        log(f"{len(train_set)} training sequences, {len(heldout)} held out "
            f"({len({s.prompt_id for s in heldout})} prompts); VocabTrim {train_config.eval_vocab_trim} covers "
            f"{vocab_coverage(data, heldout, train_config.eval_vocab_trim)} of the held-out target tokens")
        data_meta = {
            "prompts": data_config.prompts, "temperatures": list(data_config.temperatures),
            "max_new_tokens": data_config.max_new_tokens, "top_k": data_config.top_k, "seed": data_config.seed,
            "sequences": len(data.sequences), "continuation_tokens": data.continuation_tokens,
            "wall_s": round(data.wall_s, 1), "heldout_prompts": len({s.prompt_id for s in heldout}),
            "heldout_positions": sum(s.continuation_length for s in heldout),
        }
        kinds = (DISTILLED, KANGAROO) if args.kind == "all" else (args.kind,)
        for kind in kinds:
            student = (DistilledStudent(target, tuple(args.layers)) if kind == DISTILLED
                       else KangarooStudent(target, tuple(args.exit_layers)))
            greedy_heldout = [s for s in heldout if s.temperature == 0]
            before = {name: heldout_agreement(d, greedy_heldout)["greedy"] for name, d in zip(student.names, student.drafters)}
            # each kind draws its batches from its own generator: the same whether trained alone or not
            stats = train(student, target, train_set, data, train_config, torch.Generator().manual_seed(args.seed), log,
                          out / f"{kind}.checkpoint.pt")
            meta = {"command": command, "torch_threads": torch.get_num_threads(), "data": data_meta, "training": stats}
            save_student(student, out, target, meta)
            # evaluate what was saved: reloaded from disk (float16 weights), with and without VocabTrim
            results = {}
            for name in student.names:
                trims = {"full": 0} | ({f"top {args.vocab_trim}": args.vocab_trim} if args.vocab_trim else {})
                after = {label: heldout_agreement(load_trained_drafter(target, name, n, folder=out).model, heldout)
                         for label, n in trims.items()}
                results[name] = {"before": before[name], "after": after}
                log(f"{name}: held-out top-1 agreement (greedy / all temperatures): before training {before[name]} / -, "
                    "after " + ", ".join(f"{k} vocabulary {v['greedy']} / {v['all']}" for k, v in after.items()))
            config_path = out / f"{kind}.json"
            config_path.write_text(json.dumps(json.loads(config_path.read_text()) | {"heldout": results}, indent=2) + "\n")
        write_model_card(out)
        log(f"Wrote {', '.join(sorted(p.name for p in out.iterdir() if not p.name.endswith('.checkpoint.pt')))} to {out}")
        return out
    finally:
        log.close()


def main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors and --help
        return int(exc.code or 0)
    run(args, shlex.join(["specviz", "train-drafter", *argv]))
    return 0
