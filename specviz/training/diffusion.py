"""`specviz train-diffusion`: train the masked-diffusion drafter on data the target generated.

    specviz train-diffusion --out assets/drafters/smollm2-135m-instruct
    specviz train-diffusion --out /tmp/diffusion --steps 300 --block 8 --context 64 --layers 0,29

1. data: the target's continuations of the training prompts, the same (cached) data as
   `specviz train-drafter` (see `data.py`); every sequence of a few prompts is held out;
2. examples are (context, block) pairs cut from the training continuations: a start a, the W
   tokens before it (prompt included) as the context, the L continuation tokens from a as the
   block, every block position masked (DEER's one-step drafting: all L tokens from the context
   alone); blocks running past a continuation's end score only their real positions;
3. loss (DEER's alignment to the target): at block position j, the cross-entropy from the
   target's top-K distribution there (renormalised) to the drafter's softmax over the
   `train_vocab` most frequent target tokens, weighted decay**j: a drafted token only counts
   when every earlier one was accepted, so the positions next to the context weigh most
   (DEER's stage II). AdamW, linear warm-up then cosine decay; one seeded torch.Generator
   draws the blocks;
4. save the drafter's own tensors (float16) and diffusion.json, load them back and measure the
   held-out greedy acceptance: for block position i, the share of held-out greedy blocks whose
   first i + 1 argmax tokens all equal the target's; write the "## Diffusion drafter" section
   of the folder's model card (README.md; the rest of it is kept).
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from engine import EMBEDDED_DEFAULT, ModelCache
from engine.drafting.diffusion_drafter import (
    DIFFUSION,
    DiffusionConfig,
    MaskedDiffusionDrafter,
    load_diffusion_drafter,
    new_diffusion_drafter,
    save_diffusion_drafter,
)
from engine.errors import ConfigError

from .data import DataConfig, Sequence, TrainingData, load_or_generate
from .distill import CARD_FILE, RunLog, _floats, _ints, learning_rate, split_heldout

LOG_FILE = "diffusion.log"
CARD_HEADING = "## Diffusion drafter"
EVAL_STRIDE = 3  # held-out blocks start at every third continuation position
EVAL_BATCH = 32  # held-out blocks per forward pass


@dataclass(frozen=True)
class DiffusionTrainConfig:
    steps: int = 1500  # optimiser steps
    batch: int = 16  # (context, block) pairs per step
    lr: float = 2e-3  # peak AdamW learning rate (linear warm-up, cosine decay to 10 %)
    warmup_steps: int = 50
    decay: float = 0.8  # block position j's loss weighs decay**j
    train_vocab: int = 8192  # the training softmax covers the target's most frequent tokens
    heldout_fraction: float = 0.08  # share of prompts (all their temperatures) held out for evaluation
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch < 1 or self.train_vocab < 1:
            raise ConfigError("train", "--steps, --batch and --train-vocab must be >= 1")
        if not self.lr > 0:
            raise ConfigError("lr", f"must be > 0, got {self.lr}")
        if not 0.0 < self.decay <= 1.0:
            raise ConfigError("decay", f"must be in (0, 1], got {self.decay}")


# --------------------------------------------------------------------------- blocks


@dataclass
class Blocks:
    """(context, block) pairs, one per row; the block positions are the drafter's mask positions."""

    context: torch.Tensor  # [B, C] context ids, left-padded
    key_mask: torch.Tensor  # [B, C] bool: True at real context tokens
    top_ids: torch.Tensor  # [B, L, K] the target's top-K ids at each block position (0 past the end)
    top_logprobs: torch.Tensor  # [B, L, K] float32 their log-probabilities
    valid: torch.Tensor  # [B, L] bool: the block position lies inside its continuation


def block_starts(sequences: list[Sequence], block: int = 1, stride: int = 1) -> list[tuple[int, int]]:
    """(sequence index, continuation start) of every block with at least `block` real positions.

    >>> [(s.continuation_length) for s in seqs]      # e.g. [3, 2]
    >>> block_starts(seqs)                           # [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    >>> block_starts(seqs, block=2)                  # [(0, 0), (0, 1), (1, 0)]
    """
    return [(i, a) for i, s in enumerate(sequences) for a in range(0, s.continuation_length - block + 1, stride)]


def make_blocks(sequences: list[Sequence], starts: list[tuple[int, int]], context: int, block: int) -> Blocks:
    """The blocks at `starts`: the `context` tokens before each start, and the target's top-K at the
    `block` continuation positions from it. For a sequence [p0 p1 | c0 c1 c2] (prompt | continuation),
    start 1, context 2, block 3: context [p1 c0], block targets at c1 c2 and one invalid position."""
    rows = [(sequences[i], a) for i, a in starts]
    width = max(min(context, s.prompt_length + a) for s, a in rows)
    k = rows[0][0].top_ids.shape[1]
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    key_mask = torch.zeros(len(rows), width, dtype=torch.bool)
    top_ids = torch.zeros(len(rows), block, k, dtype=torch.long)
    top_logprobs = torch.zeros(len(rows), block, k)
    valid = torch.zeros(len(rows), block, dtype=torch.bool)
    for b, (s, a) in enumerate(rows):
        seen = s.ids[: s.prompt_length + a][-context:]
        ids[b, width - seen.numel():], key_mask[b, width - seen.numel():] = seen, True
        n = min(block, s.continuation_length - a)
        top_ids[b, :n], top_logprobs[b, :n], valid[b, :n] = s.top_ids[a : a + n], s.top_logprobs[a : a + n].float(), True
    return Blocks(ids, key_mask, top_ids, top_logprobs, valid)


def draws(population: int, size: int, steps: int, generator: torch.Generator) -> Iterator[list[int]]:
    """`steps` lists of `size` indices into range(population), without replacement epoch after epoch."""
    order: list[int] = []
    for _ in range(steps):
        while len(order) < size:
            order += torch.randperm(population, generator=generator).tolist()
        chosen, order = order[:size], order[size:]
        yield chosen


# --------------------------------------------------------------------------- loss and training


def training_vocabulary(frequency_order: torch.Tensor, train_vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep [N]: the N most frequent token ids, sorted; slot [V]: each token's row among them, -1 outside)."""
    keep = frequency_order[:train_vocab].sort().values
    slot = torch.full((frequency_order.numel(),), -1, dtype=torch.long)
    slot[keep] = torch.arange(keep.numel())
    return keep, slot


def position_weights(block: int, decay: float) -> torch.Tensor:
    """[L] the loss weight of each block position: decay**j (block 4, decay 0.5: [1, 0.5, 0.25, 0.125])."""
    return decay ** torch.arange(block, dtype=torch.float32)


def block_loss(drafter: MaskedDiffusionDrafter, blocks: Blocks, head: torch.Tensor, slot: torch.Tensor,
               weights: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Position-weighted cross-entropy from the target's top-K to the drafter, over the training vocabulary.

    head: [N, H] LM-head rows of the training vocabulary; slot: [V] each token's row in head (-1
    outside); weights: [L] per block position. Teacher entries outside the vocabulary are dropped.
    Returns (loss, positions whose drafter argmax is the target's top token, positions scored).
    """
    hidden = drafter.hidden(blocks.context, blocks.key_mask)[blocks.valid]  # [M, H]
    weight = weights.expand_as(blocks.valid)[blocks.valid]  # [M]
    log_q = torch.log_softmax(hidden @ head.T, dim=-1)  # [M, N]
    slots = slot[blocks.top_ids[blocks.valid]]  # [M, K]
    inside = slots >= 0
    p = torch.softmax(blocks.top_logprobs[blocks.valid].masked_fill(~inside, float("-inf")), dim=-1).nan_to_num(0.0)
    cross_entropy = -(p * log_q.gather(-1, slots.clamp(min=0))).sum(-1)  # [M]
    weight = weight * inside.any(-1)
    loss = (weight * cross_entropy).sum() / weight.sum().clamp(min=1e-12)
    hits = int((log_q.argmax(-1) == slots[:, 0]).sum())
    return loss, hits, slots.shape[0]


def train(drafter: MaskedDiffusionDrafter, train_set: list[Sequence], frequency_order: torch.Tensor,
          config: DiffusionTrainConfig, generator: torch.Generator, log: RunLog, progress: bool = True) -> dict:
    """Optimise the drafter's own tensors on blocks of `train_set`; returns statistics for the model card
    (first_loss: the first step's; final_loss: the mean over the last 20 steps)."""
    keep, slot = training_vocabulary(frequency_order, config.train_vocab)
    head = drafter.shared.head.weight.detach()[keep]  # [N, H]
    weights = position_weights(drafter.config.block, config.decay)
    starts = block_starts(train_set)
    params = list(drafter.parameters())
    drafter.train()
    drafter.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    start, recent, first_loss = time.perf_counter(), [], None
    bar = tqdm(total=config.steps, desc="training diffusion drafter", unit="step", disable=not progress)
    for step, chosen in enumerate(draws(len(starts), config.batch, config.steps, generator)):
        blocks = make_blocks(train_set, [starts[i] for i in chosen], drafter.config.context, drafter.config.block)
        loss, hits, scored = block_loss(drafter, blocks, head, slot, weights)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)  # distill's schedule: reads lr, warmup_steps and steps
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        # progress: mean loss and top-1 agreement (training vocabulary) over the last 20 steps
        recent = (recent + [(loss.item(), hits, scored)])[-20:]
        first_loss = loss.item() if first_loss is None else first_loss
        mean_loss = sum(r[0] for r in recent) / len(recent)
        mean_agree = sum(r[1] for r in recent) / max(1, sum(r[2] for r in recent))
        bar.update()
        bar.set_postfix(loss=f"{mean_loss:.3f}", agree=f"{mean_agree:.3f}")
        if (step + 1) % max(1, config.steps // 10) == 0 or step + 1 == config.steps:
            log(f"step {step + 1}/{config.steps}: loss {mean_loss:.4f}, train top-1 agreement {mean_agree:.3f}")
    bar.close()
    drafter.eval()
    drafter.requires_grad_(False)
    wall = time.perf_counter() - start
    return {"steps": config.steps, "batch": config.batch, "lr": config.lr, "warmup_steps": config.warmup_steps,
            "decay": config.decay, "train_vocab": config.train_vocab, "wall_s": round(wall, 1),
            "s_per_step": round(wall / config.steps, 3), "first_loss": round(first_loss, 4),
            "final_loss": round(sum(r[0] for r in recent) / len(recent), 4)}


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def heldout_acceptance(drafter: MaskedDiffusionDrafter, heldout: list[Sequence], stride: int = EVAL_STRIDE) -> dict:
    """Greedy acceptance of one-step block drafts on the held-out greedy continuations.

    Blocks start at every `stride`-th continuation position with L real positions after it. For
    block position i: the share of blocks whose first i + 1 drafted tokens (argmax) all equal the
    target's greedy tokens, which is the chance that a greedy draft of the block gets at least
    i + 1 tokens accepted; their sum is the mean number of accepted tokens per block. E.g.
    per_position [0.5, 0.25, 0.1] -> mean_accepted 0.85.
    """
    greedy = [s for s in heldout if s.temperature == 0]
    block = drafter.config.block
    starts = block_starts(greedy, block, stride)
    if not starts:
        return {"per_position": None, "mean_accepted": None, "blocks": 0}
    accepted = torch.zeros(block, dtype=torch.long)  # [L] blocks with at least i + 1 accepted tokens
    for i in range(0, len(starts), EVAL_BATCH):
        blocks = make_blocks(greedy, starts[i : i + EVAL_BATCH], drafter.config.context, block)
        logits = drafter.shared.head(drafter.hidden(blocks.context, blocks.key_mask))  # [B, L, V]
        match = logits.argmax(-1) == blocks.top_ids[..., 0]  # [B, L]
        accepted += match.long().cumprod(-1).sum(0)
    shares = [round(int(n) / len(starts), 4) for n in accepted]
    return {"per_position": shares, "mean_accepted": round(sum(shares), 4), "blocks": len(starts)}


@torch.no_grad()
def forward_ms(drafter: MaskedDiffusionDrafter, context: list[int], repeats: int = 5) -> float:
    """The median wall time of one `block_logits` call on `context`, in milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        drafter.block_logits(context, drafter.config.block)
        times.append(1000 * (time.perf_counter() - start))
    return round(sorted(times)[len(times) // 2], 1)


# --------------------------------------------------------------------------- model card


def replace_section(text: str, heading: str, body: str) -> str:
    """`text` with the section under `heading` (up to the next "## " heading) replaced by `body`,
    or with `body` appended when there is no such section.

    >>> replace_section("# A\\n\\n## B\\nold\\n\\n## C\\nc\\n", "## B", "## B\\nnew\\n")
    '# A\\n\\n## B\\nnew\\n\\n## C\\nc\\n'
    """
    lines, new = text.splitlines(), body.rstrip("\n").splitlines() + [""]
    if heading in lines:
        start = lines.index(heading)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines = lines[:start] + new + lines[end:]
    else:
        lines = lines + ([""] if lines and lines[-1] else []) + new
    return "\n".join(lines).rstrip("\n") + "\n"


def card_section(config: dict, folder: Path) -> str:
    """The "## Diffusion drafter" section of the model card, from diffusion.json."""
    data, t, held = config["data"], config["training"], config["heldout"]
    size = (folder / f"{DIFFUSION}.safetensors").stat().st_size / 1e6
    lines = [
        CARD_HEADING,
        "",
        f"`{DIFFUSION}.safetensors` ({size:.1f} MB, float16) and `{DIFFUSION}.json`: a masked-diffusion drafter "
        f"(`engine/diffusion_drafter.py`) that drafts a block of {config['block']} tokens in ONE forward pass. "
        f"The last {config['context']} context tokens and {config['block']} mask positions (a learned mask embedding) "
        f"go through {len(config['source_layers'])} own decoder layers with bidirectional attention (initialised from "
        f"target layers {config['source_layers']}) and an own final norm, between the target's shared token "
        "embeddings, rotary embedding and LM head (not stored here).",
        "",
        "```python",
        "from engine.drafting.diffusion_drafter import load_diffusion_drafter",
        "drafter = load_diffusion_drafter(target)   # drafter.block_logits(context_ids, length) -> [length, vocab]",
        "```",
        "",
        f"- Command: `{config['command']}`",
        f"- Data: the target-generated data of `specviz train-drafter` ({data['prompts']} prompts x temperatures "
        f"{data['temperatures']}, up to {data['max_new_tokens']} new tokens, seed {data['seed']}: {data['sequences']} "
        f"sequences, {data['continuation_tokens']} continuation tokens); held out: every sequence of "
        f"{data['heldout_prompts']} prompts.",
        f"- Training: {t['steps']} steps x {t['batch']} (context, block) pairs cut at random starts of the training "
        f"continuations, every block position masked. Loss: cross-entropy from the target's top-{data['top_k']} "
        f"distribution at each block position to the drafter's softmax over the {t['train_vocab']} most frequent "
        f"tokens, block position j weighted {t['decay']}^j (DEER). AdamW lr {t['lr']}; {t['wall_s']:.0f} s "
        f"({t['s_per_step']} s per step) on {config['torch_threads']} CPU threads; loss {t['first_loss']} (first "
        f"step) -> {t['final_loss']} (last 20 steps).",
        f"- One forward pass ({config['context']} + {config['block']} positions, full vocabulary): "
        f"{config['forward_ms']} ms on {config['torch_threads']} CPU threads.",
        "",
        f"Held-out greedy acceptance, over {held['after']['blocks']} blocks cut from the held-out prompts' greedy "
        f"continuations (one starting every {EVAL_STRIDE} tokens): for each i, the share of blocks whose first i "
        "drafted tokens all equal the target's greedy tokens; their sum is the mean number of accepted tokens per block.",
        "",
    ]
    block = config["block"]
    lines += ["| | " + " | ".join(f"i = {i + 1}" for i in range(block)) + " | mean accepted |",
              "|---|" + "---|" * (block + 1)]
    for label, key in (("before training", "before"), ("after training", "after")):
        shares = held[key]["per_position"] or ["-"] * block
        lines.append(f"| {label} | " + " | ".join(str(s) for s in shares) + f" | {held[key]['mean_accepted']} |")
    return "\n".join(lines) + "\n"


def write_card_section(folder: Path, target_name: str) -> None:
    """Put the diffusion section into folder/README.md, keeping the rest (a new card gets a title)."""
    path = folder / CARD_FILE
    config = json.loads((folder / f"{DIFFUSION}.json").read_text())
    text = path.read_text() if path.is_file() else f"# Trained drafters for {target_name}\n"
    path.write_text(replace_section(text, CARD_HEADING, card_section(config, folder)))


# --------------------------------------------------------------------------- the command


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors: one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    d, t, m = DataConfig(), DiffusionTrainConfig(), DiffusionConfig()
    parser = _ArgumentParser(prog="specviz train-diffusion", description=__doc__.split("\n")[0],
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (e.g. assets/drafters/smollm2-135m-instruct)")
    parser.add_argument("--target", default=EMBEDDED_DEFAULT, help="target model spec")
    parser.add_argument("--seed", type=int, default=t.seed, help="seeds the data, the held-out split and the block draws")
    parser.add_argument("--data", help="training data file (default: the cache, keyed by the data settings)")
    parser.add_argument("--prompts", type=int, default=d.prompts, help="training prompts")
    parser.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    parser.add_argument("--temperatures", type=_floats, default=d.temperatures, help="comma-separated")
    parser.add_argument("--top-k", type=int, default=d.top_k, help="teacher distribution entries kept")
    parser.add_argument("--steps", type=int, default=t.steps, help="optimiser steps")
    parser.add_argument("--batch", type=int, default=t.batch, help="(context, block) pairs per step")
    parser.add_argument("--lr", type=float, default=t.lr)
    parser.add_argument("--decay", type=float, default=t.decay, help="block position j's loss weighs decay^j")
    parser.add_argument("--train-vocab", type=int, default=t.train_vocab, help="tokens in the training softmax")
    parser.add_argument("--block", type=int, default=m.block, help="L: tokens drafted per forward pass")
    parser.add_argument("--context", type=int, default=m.context, help="W: context tokens the drafter sees")
    parser.add_argument("--layers", type=_ints, default=m.source_layers,
                        help="target layers its own layers start from (comma-separated; their count is the depth)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def data_summary(config: DataConfig, data: TrainingData, heldout: list[Sequence]) -> dict:
    """What the model card says about the data."""
    return {"prompts": config.prompts, "temperatures": list(config.temperatures),
            "max_new_tokens": config.max_new_tokens, "top_k": config.top_k, "seed": config.seed,
            "sequences": len(data.sequences), "continuation_tokens": data.continuation_tokens,
            "wall_s": round(data.wall_s, 1), "heldout_prompts": len({s.prompt_id for s in heldout}),
            "heldout_positions": sum(s.continuation_length for s in heldout)}


def configs(args: argparse.Namespace) -> tuple[DataConfig, DiffusionConfig, DiffusionTrainConfig]:
    """The settings from the flags; ConfigError (one line, exit 2) for bad values."""
    if args.threads < 0:
        raise ConfigError("threads", f"must be >= 0, got {args.threads}")
    try:
        data = DataConfig(prompts=args.prompts, max_new_tokens=args.max_new_tokens,
                          temperatures=tuple(args.temperatures), top_k=args.top_k, seed=args.seed)
    except ValueError as exc:
        raise ConfigError("data", str(exc)) from None
    model = DiffusionConfig(context=args.context, block=args.block, source_layers=tuple(args.layers))
    train_config = DiffusionTrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, decay=args.decay,
                                        train_vocab=args.train_vocab, seed=args.seed)
    return data, model, train_config


def run(args: argparse.Namespace, command: str) -> Path:
    """Generate (or reuse) the data, train, save, evaluate, write the card; returns the output folder."""
    data_config, model_config, train_config = configs(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out / LOG_FILE)
    try:
        log(f"$ {command}")
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        target = ModelCache().get(args.target, progress=log)
        data = load_or_generate(target, data_config, Path(args.data) if args.data else None, log)
        train_set, heldout = split_heldout(data, train_config.heldout_fraction, torch.Generator().manual_seed(args.seed))
        log(f"{len(train_set)} training sequences, {len(heldout)} held out ({len({s.prompt_id for s in heldout})} prompts)")
        drafter = new_diffusion_drafter(target, model_config)
        before = heldout_acceptance(drafter, heldout)
        log(f"held-out greedy acceptance before training: {before}")
        stats = train(drafter, train_set, data.frequency_order, train_config, torch.Generator().manual_seed(args.seed),
                      log, progress=not args.quiet)
        meta = {"command": command, "torch_threads": torch.get_num_threads(),
                "data": data_summary(data_config, data, heldout), "training": stats}
        path = save_diffusion_drafter(drafter, target, out, meta)
        # evaluate what was saved: reloaded from disk (float16 weights)
        saved = load_diffusion_drafter(target, out)
        after = heldout_acceptance(saved, heldout)
        log(f"held-out greedy acceptance after training: {after}")
        timing = forward_ms(saved, (heldout or train_set)[0].ids.tolist())
        path.write_text(json.dumps(json.loads(path.read_text()) | {"forward_ms": timing,
                                   "heldout": {"before": before, "after": after}}, indent=2) + "\n")
        write_card_section(out, target.name)
        log(f"Wrote {DIFFUSION}.safetensors, {DIFFUSION}.json and the model card section to {out}")
        return out
    finally:
        log.close()


def main(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # usage errors and --help
        return int(exc.code or 0)
    run(args, shlex.join(["specviz", "train-diffusion", *argv]))
    return 0
