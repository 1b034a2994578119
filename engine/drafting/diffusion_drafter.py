"""Masked-diffusion drafters: a whole block of draft tokens from ONE forward pass.

A masked-diffusion language model fills masked positions from everything around them
(bidirectional attention). As a drafter (DEER-style one-step drafting) it sees the context
followed by L mask positions and predicts all L tokens at once: one forward pass per draft,
whatever L is, instead of L autoregressive steps.

- `BlockDrafter`: what a speculative decoder needs from such a model, `block_logits(context, length)`.
- `MaskedDiffusionDrafter`: the project's own small one for a target, trained by
  `specviz train-diffusion` (specviz/training/diffusion.py). It shares the target's token
  embeddings, rotary embedding and LM head (frozen, never stored with it) and owns a few
  decoder layers (initialised from copies of target layers), a final norm and a learned mask
  embedding. Attention is bidirectional over [the last W context tokens + L mask positions].
  Stored as assets/drafters/<target>/diffusion.safetensors (own tensors, float16) +
  diffusion.json (sizes, training settings, measured acceptance).
- `HubDiffusionDrafter`: an adapter for a masked-diffusion LM from the Hugging Face hub that
  shares the target's tokenizer (see its docstring for which models fit).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from engine.devices import model_device
from engine.errors import ConfigError, ModelLoadError, shown_path
from engine.loading.models import LoadedModel, meta_causal_lm
from engine.loading.trained_drafters import check_target, drafters_dir
from engine.loading.vocab_trim import FREQUENCY_FILE, TrimmedHead, kept_ids, load_frequency_order, masked_logit

DIFFUSION = "diffusion"
DIFFUSION_FORMAT = 1
MAX_BLOCK = 64  # block lengths beyond this are refused (drafts that long are never accepted)


class BlockDrafter(Protocol):
    """A drafter that proposes a whole block of tokens from one forward pass.

    `block_logits(context, length)` returns logits [length, vocab] for the `length` positions
    right after `context` (token ids, prompt + output so far), all of them masked: position i
    is the drafter's guess for the token at len(context) + i, made without seeing its guesses
    for positions 0..i-1. The vocabulary is the target's (same ids), so a greedy draft is
    simply the argmax of each row:

        >>> logits = drafter.block_logits([1, 9690, 198, 28120], 4)   # [4, 49152]
        >>> draft = logits.argmax(-1).tolist()                         # e.g. [28, 1536, 314, 30]

    and the target verifies `draft` in one forward pass as usual; under sampling each row is
    the drafter's distribution q for that position.
    """

    def block_logits(self, context: list[int], length: int) -> torch.Tensor:
        """Logits [length, vocab] for the next `length` positions after `context`."""


# --------------------------------------------------------------------------- the project's own drafter


@dataclass(frozen=True)
class DiffusionConfig:
    context: int = 64  # W: context tokens the drafter sees (the last W)
    block: int = 8  # L: mask positions drafted per forward pass
    source_layers: tuple[int, ...] = (0, 29)  # target layers its own layers start from (their count is the depth)

    def __post_init__(self) -> None:
        if self.context < 1:
            raise ConfigError("context", f"must be >= 1, got {self.context}")
        if not 1 <= self.block <= MAX_BLOCK:
            raise ConfigError("block", f"must be between 1 and {MAX_BLOCK}, got {self.block}")
        if not self.source_layers:
            raise ConfigError("layers", "need at least one source layer")


@dataclass(frozen=True)
class SharedModules:
    """The target's modules a drafter uses without owning them (kept out of its state dict)."""

    embed: nn.Module  # token ids [..., T] -> embeddings [..., T, H]
    rotary: nn.Module  # (hidden, position_ids [B, T]) -> (cos, sin)
    head: nn.Module  # hidden [..., H] -> logits [..., V]


def block_attention_mask(key_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive attention mask [B, 1, T, T] of bidirectional attention over real positions.

    key_mask: [B, T] bool, False at left padding. Every query attends to every real key, later
    ones included (0.0); padding keys get the dtype's lowest value. For one row [pad, a, b]:

        [[min, 0, 0],
         [min, 0, 0],
         [min, 0, 0]]
    """
    blocked = ~key_mask[:, None, None, :]  # [B, 1, 1, T]
    mask = torch.zeros(key_mask.shape[0], 1, key_mask.shape[1], key_mask.shape[1], dtype=dtype, device=key_mask.device)
    return mask.masked_fill(blocked, torch.finfo(dtype).min)


class MaskedDiffusionDrafter(nn.Module):
    """The project's masked-diffusion drafter for one target (a `BlockDrafter`).

    Input: the last W context tokens (target embeddings) then L copies of the learned mask
    embedding; own decoder layers with bidirectional attention and rotary positions counted over
    the real tokens (0, 1, ..., so only relative offsets matter); own final norm; the target's LM
    head on the L mask positions. Build one with `new_diffusion_drafter` (initialised from the
    target) or `load_diffusion_drafter` (trained weights); the constructor leaves the own
    tensors uninitialised.

        >>> drafter = load_diffusion_drafter(target)                   # assets/drafters/<target>/
        >>> drafter.block_logits(prompt_ids, 4).shape                  # torch.Size([4, 49152])
    """

    name = DIFFUSION

    def __init__(self, target: LoadedModel, config: DiffusionConfig):
        super().__init__()
        inner = target.model.model
        self.config = config
        self.shared = SharedModules(inner.embed_tokens, inner.rotary_emb, target.model.get_output_embeddings())
        template = meta_causal_lm(target, len(config.source_layers)).model
        self.layers = template.layers
        self.norm = template.norm
        self.mask_embedding = nn.Parameter(torch.empty(target.model.config.hidden_size, device="meta"))
        self.to_empty(device=model_device(target.model))  # its own tensors sit beside the target's
        self.eval()
        self.requires_grad_(False)

    def hidden(self, context_ids: torch.Tensor, key_mask: torch.Tensor, block: int | None = None) -> torch.Tensor:
        """Final-norm hidden states [B, L, H] of the L mask positions after each context row.

        context_ids: [B, C] token ids, left-padded; key_mask: [B, C] bool, True at real tokens.
        block: how many mask positions follow (default the trained block length L).
        """
        block = block or self.config.block
        batch, width = context_ids.shape
        masks = self.mask_embedding.expand(batch, block, -1)  # [B, L, H]
        hidden = torch.cat([self.shared.embed(context_ids), masks], dim=1)  # [B, C + L, H]
        real = torch.ones(batch, block, dtype=torch.bool, device=key_mask.device)
        keys = torch.cat([key_mask, real], dim=1)  # [B, C + L]
        positions = (keys.long().cumsum(-1) - 1).clamp(min=0)  # [B, C + L]
        layer_kwargs = {
            "attention_mask": block_attention_mask(keys, hidden.dtype),
            "position_embeddings": self.shared.rotary(hidden, position_ids=positions),
            "position_ids": positions,
        }
        for layer in self.layers:
            hidden = layer(hidden, **layer_kwargs)
        return self.norm(hidden[:, width:])

    @torch.no_grad()
    def block_logits(self, context: list[int], length: int) -> torch.Tensor:
        """Logits [length, V] for the `length` positions after `context` (see `BlockDrafter`).

        The drafter always runs its trained L mask positions (so position i's guess does not
        depend on `length`) and returns the first `length` rows.
        """
        if not 1 <= length <= self.config.block:
            raise ConfigError("length", f"this diffusion drafter drafts 1 to {self.config.block} tokens, got {length}")
        if not context:
            raise ConfigError("context", "the diffusion drafter needs at least one context token")
        device = self.mask_embedding.device
        ids = torch.tensor([context[-self.config.context:]], dtype=torch.long, device=device)  # [1, C]
        hidden = self.hidden(ids, torch.ones_like(ids, dtype=torch.bool))  # [1, L, H]
        return self.shared.head(hidden[0, :length]).float().cpu()  # sampling and the lattice work on the CPU


def _decoder_layers(target: LoadedModel) -> nn.ModuleList:
    layers = getattr(getattr(target.model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ModelLoadError(f"diffusion drafters need a decoder with model.layers; {type(target.model).__name__} has none")
    return layers


def new_diffusion_drafter(target: LoadedModel, config: DiffusionConfig) -> MaskedDiffusionDrafter:
    """A drafter initialised from the target: own layer i = a copy of target layer
    config.source_layers[i], own norm = the target's final norm, mask embedding = the mean token embedding."""
    layers = _decoder_layers(target)
    bad = [i for i in config.source_layers if not 0 <= i < len(layers)]
    if bad:
        raise ConfigError("layers", f"source layers must be between 0 and {len(layers) - 1} for this target, got {bad}")
    drafter = MaskedDiffusionDrafter(target, config)
    with torch.no_grad():
        for own, source in zip(drafter.layers, config.source_layers):
            own.load_state_dict(layers[source].state_dict())
        drafter.norm.load_state_dict(target.model.model.norm.state_dict())
        drafter.mask_embedding.copy_(drafter.shared.embed.weight.mean(0))
    return drafter


# --------------------------------------------------------------------------- storing and loading


def _target_shape(target: LoadedModel) -> dict:
    return {
        "target": target.name,
        "hidden_size": target.model.config.hidden_size,
        "vocab_size": target.model.config.vocab_size,
        "target_num_layers": len(_decoder_layers(target)),
    }


def save_diffusion_drafter(drafter: MaskedDiffusionDrafter, target: LoadedModel, folder: Path | str,
                           meta: dict | None = None) -> Path:
    """Write <folder>/diffusion.safetensors (own tensors, float16) and diffusion.json; returns the JSON path.

    meta: anything else for the JSON (command, data, training, held-out acceptance).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in drafter.state_dict().items()}
    save_file(state, str(folder / f"{DIFFUSION}.safetensors"))
    config = {"format": DIFFUSION_FORMAT, "kind": DIFFUSION, **_target_shape(target), "dtype": "float16",
              "context": drafter.config.context, "block": drafter.config.block,
              "source_layers": list(drafter.config.source_layers)}
    path = folder / f"{DIFFUSION}.json"
    path.write_text(json.dumps(config | (meta or {}), indent=2) + "\n")
    return path


def read_diffusion_config(folder: Path | str) -> dict:
    """The diffusion.json of a drafter folder; ModelLoadError if it is missing or of another format."""
    path = Path(folder) / f"{DIFFUSION}.json"
    if not path.is_file():
        raise ModelLoadError(
            f"no diffusion drafter in {shown_path(folder)}; train one with "
            f"`specviz train-diffusion --out {shown_path(folder)}`"
        )
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"unreadable diffusion drafter config {shown_path(path)}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
    if config.get("format") != DIFFUSION_FORMAT:
        raise ModelLoadError(f"{shown_path(path)} has format {config.get('format')!r}; this version reads format "
                             f"{DIFFUSION_FORMAT}")
    return config


def load_diffusion_drafter(target: LoadedModel, folder: Path | str | None = None,
                           vocab_trim: int = 0) -> MaskedDiffusionDrafter:
    """The trained diffusion drafter of `target` from `folder` (default assets/drafters/<target>/).

    vocab_trim > 0 (VocabTrim): the drafter's head computes only the target's N most frequent tokens
    (the token-frequency table beside it); every other token gets probability 0. Its training
    targets were distributions over the 8192 most frequent tokens, so N = 8192 loses little and
    saves most of the head's cost (13 of 33 ms per pass with the full head on a 2-core CPU).
    Raises ModelLoadError when the folder or its files are missing, unreadable, or made for another target.
    """
    folder = Path(folder) if folder is not None else drafters_dir(target.name)
    config = read_diffusion_config(folder)
    check_target(config, target, folder)
    try:
        drafter = MaskedDiffusionDrafter(target, DiffusionConfig(
            int(config["context"]), int(config["block"]), tuple(int(i) for i in config["source_layers"])))
        state = load_file(str(folder / f"{DIFFUSION}.safetensors"))
    except (KeyError, ValueError, OSError, SafetensorError) as exc:
        raise ModelLoadError(f"unreadable diffusion drafter in {shown_path(folder)}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
    expected = drafter.state_dict()
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise ModelLoadError(f"diffusion drafter weights in {shown_path(folder)} do not fit (missing {missing[:3]}, "
                             f"unexpected {extra[:3]})")
    wrong = [k for k, v in state.items() if v.shape != expected[k].shape]
    if wrong:
        raise ModelLoadError(f"diffusion drafter tensor {wrong[0]} in {shown_path(folder)} has shape "
                             f"{tuple(state[wrong[0]].shape)}, expected {tuple(expected[wrong[0]].shape)}")
    with torch.no_grad():
        for key, tensor in expected.items():
            tensor.copy_(state[key])
    if vocab_trim:
        frequency = folder / FREQUENCY_FILE
        if not frequency.is_file():
            raise ModelLoadError(f"vocab_trim needs the target's token-frequency table ({shown_path(frequency)}); use "
                                 "vocab_trim=0")
        keep = kept_ids(load_frequency_order(frequency), vocab_trim)
        drafter.shared = replace(drafter.shared, head=TrimmedHead(drafter.shared.head.weight, keep))
    return drafter


# --------------------------------------------------------------------------- hub models


def check_shared_vocabulary(target: LoadedModel, tokenizer, output_size: int, name: str) -> None:
    """A drafter's token ids must mean the target's tokens: every token of the target's tokenizer has
    the same id in the drafter's, and the drafter's output covers the target's. Extra drafter tokens
    (a mask token) at ids the target's tokenizer does not use are fine.
    """
    target_size = target.model.get_output_embeddings().weight.shape[0]
    drafter_vocab = tokenizer.get_vocab()
    differing = [t for t, i in target.tokenizer.get_vocab().items() if drafter_vocab.get(t) != i]
    if differing:
        raise ModelLoadError(
            f"diffusion drafter {name!r} uses a different tokenizer from target {target.name!r} ({len(differing)} "
            f"target tokens differ, e.g. {differing[0]!r}); diffusion drafting needs the target's vocabulary"
        )
    if output_size < target_size:
        raise ModelLoadError(f"diffusion drafter {name!r} predicts {output_size} tokens, target {target.name!r} has {target_size}")


class HubDiffusionDrafter:
    """A masked-diffusion LM from the Hugging Face hub (or a folder) as a `BlockDrafter`.

    What fits: a model that fills mask tokens with bidirectional attention (called as
    `model(input_ids=ids [1, T]).logits` -> [1, T, V']) and whose tokenizer is the target's, the
    mask token (and other extras) at ids the target's tokenizer does not use; `check_shared_vocabulary`
    enforces this, the logits are cut to the target's vocabulary and the mask token is never drafted. Two conventions exist:
    LLaDA-style models predict each mask at its own position (shifted=False); Dream-style
    models, adapted from an autoregressive LM, predict position p from the output at p - 1
    (shifted=True).

    Which models: for a Qwen2.5 target, Dream-v0 (Dream-org/Dream-v0-Instruct-7B, Qwen2.5's
    tokenizer plus <|mask|>; `trust_remote_code=True`, shifted=True) should fit (not tried here). LLaDA
    (its own 126k tokenizer), MDLM and SEDD (GPT-2's) do NOT share SmolLM2's tokenizer, and we
    know of no public masked-diffusion LM that does: for the embedded SmolLM2 target use the
    project's own `MaskedDiffusionDrafter`. On a machine that has a fitting model:

        >>> from transformers import AutoModel, AutoTokenizer
        >>> model = AutoModel.from_pretrained(spec, trust_remote_code=True, dtype=torch.bfloat16).eval()
        >>> drafter = HubDiffusionDrafter(target, model, AutoTokenizer.from_pretrained(spec), shifted=True)
        >>> drafter.block_logits(prompt_ids, 8).shape                  # [8, target vocabulary]
    """

    def __init__(self, target: LoadedModel, model: nn.Module, tokenizer, mask_token_id: int | None = None,
                 context: int = 512, shifted: bool = False, name: str = "hub-diffusion"):
        self.mask_token_id = mask_token_id if mask_token_id is not None else getattr(tokenizer, "mask_token_id", None)
        if self.mask_token_id is None:
            raise ModelLoadError(f"diffusion drafter {name!r} has no mask token; pass mask_token_id")
        check_shared_vocabulary(target, tokenizer, int(model.config.vocab_size), name)
        self.model, self.context, self.shifted, self.name = model, context, shifted, name
        self.vocab_size = target.model.get_output_embeddings().weight.shape[0]

    @torch.no_grad()
    def block_logits(self, context: list[int], length: int) -> torch.Tensor:
        """Logits [length, V_target] for the `length` positions after the last `self.context` context tokens."""
        if length < 1 or not context:
            raise ConfigError("length", "need length >= 1 and at least one context token")
        kept = context[-self.context:]
        ids = torch.tensor([kept + [self.mask_token_id] * length], dtype=torch.long,
                           device=model_device(self.model))  # [1, C + length]
        logits = self.model(input_ids=ids).logits[0]  # [C + length, V']
        first = len(kept) - 1 if self.shifted else len(kept)
        logits = logits[first : first + length, : self.vocab_size].float().cpu()  # [length, V_target], on the CPU
        if self.mask_token_id < self.vocab_size:  # a mask id among the target's (padding) rows: never draft it
            logits[:, self.mask_token_id] = masked_logit(logits.dtype)
        return logits
