"""Draft heads that read the target's own features: EAGLE's autoregressive head and Medusa's heads.

A target's *feature* at position i is its final (normed) hidden state after token i: the vector its
LM head turns into the distribution of token i + 1. The target computes it anyway when it verifies,
so a head that starts from it skips almost all of a drafter model's work (EAGLE, Medusa, Hydra).

- **EAGLE** (spec "eagle"): input at position i is [embedding of token i + 1 ; feature i] -> one
  fusion layer (2H -> H) -> ONE decoder layer of the target's class (causal attention over the
  head's own earlier positions, with its own KV cache) -> its own final norm -> the predicted
  feature i + 1, which the target's (shared, VocabTrim-able) LM head turns into token i + 2's
  distribution. Drafting goes on autoregressively on the head's own predicted features.
- **Medusa** (spec "medusa"): k independent residual blocks on feature i; block j's output, through
  the target's LM head, predicts token i + 1 + j. One pass drafts k tokens; no cache.

Both share the target's token embeddings, rotary embedding and LM head (not stored); only their own
modules are saved, float16, in assets/drafters/<target>/{eagle,medusa}.{json,safetensors} by
`specviz train-heads`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from safetensors.torch import load_file, save_file

from engine.devices import model_device, uses_cpu_kernels
from engine.errors import ModelLoadError, shown_path
from engine.loading.linear_kernels import KernelCalibration, pack_linears
from engine.loading.models import LoadedModel, default_cache_dir, meta_causal_lm
from engine.loading.vocab_trim import FREQUENCY_FILE, TrimmedHead, kept_ids, load_frequency_order

FORMAT_VERSION = 1
EAGLE = "eagle"
MEDUSA = "medusa"
FEATURE_DRAFTERS = (EAGLE, MEDUSA)


@dataclass
class HeadOutput:
    logits: torch.Tensor  # [B, keep, vocab]
    hidden_states: tuple[torch.Tensor, ...]  # (the predicted features [B, T, H],)


def _target_parts(target: LoadedModel) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The target's token embedding, rotary embedding and LM head (shared by every head)."""
    inner = getattr(target.model, "model", None)
    embed = getattr(inner, "embed_tokens", None)
    rotary = getattr(inner, "rotary_emb", None)
    head = target.model.get_output_embeddings()
    if embed is None or rotary is None or head is None:
        raise ModelLoadError(f"feature drafters need a decoder with embed_tokens, rotary_emb and an LM head; "
                             f"{type(target.model).__name__} lacks one")
    return embed, rotary, head


class EagleHead(nn.Module):
    """EAGLE's draft head (see the module docstring); called like a causal LM plus `features`.

    forward(input_ids [B, T], features [B, T, H], ...) -> HeadOutput: logits of the last
    `logits_to_keep` positions [B, keep, V] and the predicted features [B, T, H].
    """

    def __init__(self, target: LoadedModel):
        super().__init__()
        embed, rotary, head = _target_parts(target)
        hidden = target.model.config.hidden_size
        device = model_device(target.model)  # its own modules sit beside the target's
        self.config = target.model.config
        self.fc = nn.Linear(2 * hidden, hidden, bias=True, device=device)
        body = meta_causal_lm(target, 1).model  # one decoder layer of the target's class, with its norm
        body.embed_tokens, body.rotary_emb = embed, rotary
        body.layers.to_empty(device=device)
        body.norm.to_empty(device=device)
        self.body = body
        self.lm_head = head
        self._shared = {"body.embed_tokens", "body.rotary_emb", "lm_head"}

    def own_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not any(k.startswith(s + ".") for s in self._shared)}

    def init_from_target(self, target: LoadedModel) -> None:
        """Start the decoder layer as a copy of the target's last layer, the norm as its final norm, and
        the fusion layer as (embedding + feature) / 2."""
        layers = target.model.model.layers
        with torch.no_grad():
            self.body.layers[0].load_state_dict(layers[len(layers) - 1].state_dict())
            self.body.norm.load_state_dict(target.model.model.norm.state_dict())
            hidden = self.fc.out_features
            eye = torch.eye(hidden)
            self.fc.weight.copy_(torch.cat([eye, eye], dim=1) * 0.5)
            self.fc.bias.zero_()

    def forward(self, input_ids: torch.Tensor, features: torch.Tensor, attention_mask=None, position_ids=None,
                cache=None, use_cache: bool = True, logits_to_keep: int = 1, **_) -> HeadOutput:
        tokens = self.body.embed_tokens(input_ids)  # [B, T, H]
        fused = self.fc(torch.cat([tokens, features.to(tokens.dtype)], dim=-1))  # [B, T, H]
        out = self.body(inputs_embeds=fused, attention_mask=attention_mask, position_ids=position_ids,
                        cache=cache, use_cache=use_cache)
        predicted = out.last_hidden_state  # [B, T, H]
        keep = predicted[:, -logits_to_keep:] if logits_to_keep else predicted
        return HeadOutput(self.lm_head(keep), (predicted,))


class MedusaHeads(nn.Module):
    """Medusa: `heads` residual blocks on one feature; block j predicts the token j + 1 after the next.

    forward(features [..., H]) -> predicted features [..., heads, H] (the LM head is applied by the caller).
    """

    def __init__(self, target: LoadedModel, heads: int):
        super().__init__()
        _, _, head = _target_parts(target)
        hidden = target.model.config.hidden_size
        device = model_device(target.model)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden, device=device) for _ in range(heads))
        self.lm_head = head

    @property
    def heads(self) -> int:
        return len(self.blocks)

    def own_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("lm_head.")}

    def init_zero(self) -> None:
        """Every block starts as the identity (so each head starts as the target's own next-token head)."""
        with torch.no_grad():
            for block in self.blocks:
                block.weight.zero_()
                block.bias.zero_()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.stack([features + nn.functional.silu(block(features)) for block in self.blocks], dim=-2)


# --------------------------------------------------------------------------- saving and loading


def save_head(module: EagleHead | MedusaHeads, kind: str, folder: Path, target: LoadedModel, card: dict) -> None:
    """Write <folder>/<kind>.safetensors (own tensors, float16) and <kind>.json (shape + what `card` says)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().half().contiguous() for k, v in module.own_state().items()}
    save_file(state, str(folder / f"{kind}.safetensors"))
    config = {"format": FORMAT_VERSION, "kind": kind, "hidden_size": target.model.config.hidden_size,
              "vocab_size": target.model.config.vocab_size, **card}
    if isinstance(module, MedusaHeads):
        config["heads"] = module.heads
    (folder / f"{kind}.json").write_text(json.dumps(config, indent=2) + "\n")


def read_head_config(folder: Path, kind: str, target: LoadedModel) -> dict:
    path = folder / f"{kind}.json"
    if not path.is_file():
        raise ModelLoadError(f"no trained {kind} head for target {target.name!r} "
                             f"(train one with `specviz train-heads --out {shown_path(folder)}`)")
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT_VERSION:
        raise ModelLoadError(f"the {kind} head has format {config.get('format')!r}; this version reads {FORMAT_VERSION}")
    for key in ("hidden_size", "vocab_size"):
        if config.get(key) != getattr(target.model.config, key):
            raise ModelLoadError(f"the {kind} head was trained for another target ({key} {config.get(key)} vs "
                                 f"{getattr(target.model.config, key)})")
    return config


def load_feature_drafter(target: LoadedModel, kind: str, folder: Path, vocab_trim: int = 0,
                         packed: bool = False) -> EagleHead | MedusaHeads:
    """The trained `kind` ("eagle" | "medusa") head for `target` from `folder`, in eval mode, VocabTrim'd if asked;
    `packed`: its own linear layers on the kernels this machine's calibration chose (as the target's; CPU only)."""
    if kind not in FEATURE_DRAFTERS:
        raise ModelLoadError(f"unknown feature drafter {kind!r}: use one of {', '.join(FEATURE_DRAFTERS)}")
    config = read_head_config(folder, kind, target)
    module = EagleHead(target) if kind == EAGLE else MedusaHeads(target, int(config["heads"]))
    state = load_file(str(folder / f"{kind}.safetensors"))
    own = module.own_state()
    if set(state) != set(own):
        raise ModelLoadError(f"the {kind} head's weights do not fit this target (missing "
                             f"{sorted(set(own) - set(state))[:3]}, unexpected {sorted(set(state) - set(own))[:3]})")
    with torch.no_grad():
        for key, tensor in own.items():
            tensor.copy_(state[key])
    if vocab_trim:
        module.lm_head = TrimmedHead(target.model.get_output_embeddings().weight,
                                     kept_ids(load_frequency_order(folder / FREQUENCY_FILE), vocab_trim))
    module.eval().requires_grad_(False)
    if packed and uses_cpu_kernels(model_device(target.model)):
        pack_linears(module, KernelCalibration(default_cache_dir() / "kernel-calibration.json"))
    return module
