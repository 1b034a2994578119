"""Trained drafters for a target: a distilled few-layer model and Kangaroo adapters.

Both are ordinary transformers causal LMs of the target's class (so `DraftModelProposer` and
`CachedCausalLM` run them unchanged), built on the meta device and completed with modules
shared from the target, as `engine.loading.models.early_exit_drafter` does; only their own modules hold
new weights:

- **distilled** (spec "distilled"): L decoder layers of its own and its own final norm, between
  the target's (shared) token embeddings and rotary embedding and the target's (shared) LM head.
- **Kangaroo** (spec "kangaroo:<exit_layer>"): the target's first `exit_layer` decoder layers
  (shared, frozen), then ONE trained adapter decoder layer and a norm of its own, then the
  target's LM head. One adapter is trained per exit layer, so a policy can choose among them.

Either head can be trimmed to the target's N most frequent tokens (`vocab_trim=N`, see
`engine.loading.vocab_trim`). Weights live in `assets/drafters/<target-name>/`, written by
`specviz train-drafter`:

    distilled.json, distilled.safetensors   own layers + norm ("layers.<i>.*", "norm.weight")
    kangaroo.json, kangaroo.safetensors     per exit layer e: "exit<e>.layers.<e>.*", "exit<e>.norm.weight"
    token_frequency.safetensors             the VocabTrim list
    acceptance_predictor.json (+ .safetensors) SpecDec++ predictors, by `specviz train-predictor`
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from safetensors import SafetensorError
from safetensors.torch import load_file

from engine.devices import model_device
from engine.errors import ModelLoadError, shown_path
from engine.drafting.policies import HiddenStateProjection, TrainedPredictor
from engine.loading.models import EMBEDDED_DEFAULT, LoadedModel, meta_causal_lm
from engine.loading.vocab_trim import FREQUENCY_FILE, TrimmedHead, kept_ids, load_frequency_order

FORMAT_VERSION = 1
DISTILLED = "distilled"
KANGAROO = "kangaroo"
_SPEC = re.compile(r"distilled|kangaroo:([1-9][0-9]*)")


def assets_dir() -> Path:
    """The repository's assets folder (next to the `engine` package in a checkout or editable install)."""
    return Path(__file__).resolve().parents[2] / "assets"


def target_key(target_name: str) -> str:
    """The folder name for a target's drafters: the embedded default's name, or a spec's last path part."""
    name = (target_name or EMBEDDED_DEFAULT).strip().rstrip("/")
    return name.replace("\\", "/").split("/")[-1].lower() or EMBEDDED_DEFAULT


def drafters_dir(target_name: str) -> Path:
    """Where the shipped trained drafters of a target live: assets/drafters/<target-key>/."""
    return assets_dir() / "drafters" / target_key(target_name)


@dataclass(frozen=True)
class DrafterSpec:
    kind: str  # "distilled" | "kangaroo"
    exit_layer: int = 0  # Kangaroo only: how many target layers run before the adapter

    @staticmethod
    def parse(spec: str) -> DrafterSpec:
        text = (spec or "").strip()
        match = _SPEC.fullmatch(text)
        if match is None:
            raise ModelLoadError(f"unknown trained drafter {spec!r}: use 'distilled' or 'kangaroo:<exit layer>'")
        return DrafterSpec(KANGAROO, int(match.group(1))) if match.group(1) else DrafterSpec(DISTILLED)

    @staticmethod
    def matches(spec: str) -> bool:
        """Whether a drafter spec names a trained drafter ("distilled" or "kangaroo:<exit layer>")."""
        return _SPEC.fullmatch((spec or "").strip()) is not None

    def __str__(self) -> str:
        return f"{KANGAROO}:{self.exit_layer}" if self.kind == KANGAROO else DISTILLED


# --------------------------------------------------------------------------- building


def _decoder_layers(target: LoadedModel) -> nn.ModuleList:
    layers = getattr(getattr(target.model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ModelLoadError(f"trained drafters need a decoder with model.layers; {type(target.model).__name__} has none")
    return layers


def assemble(target: LoadedModel, num_layers: int, shared_layers: int) -> nn.Module:
    """A causal LM of the target's class with `num_layers` decoder layers.

    Layers [0, shared_layers) and every module but the final norm are the target's own (shared);
    layers [shared_layers, num_layers) and the final norm are new, uninitialised (float32) modules on the target's
    device. Fill them with `init_from_target` or `load_own_state`.
    """
    inner = target.model.model
    drafter = meta_causal_lm(target, num_layers)
    # 1. share the target's modules, except the new layers and the final norm
    for name, child in inner.named_children():
        if name == "layers":
            drafter.model.layers = nn.ModuleList(list(child)[:shared_layers] + list(drafter.model.layers)[shared_layers:])
        elif name != "norm":
            setattr(drafter.model, name, child)
    for name, child in target.model.named_children():
        if name != "model":
            setattr(drafter, name, child)
    # 2. give the new modules real (uninitialised) storage
    for module in own_modules(drafter, shared_layers).values():
        module.to_empty(device=model_device(target.model))
    leftovers = [n for n, t in list(drafter.named_parameters()) + list(drafter.named_buffers()) if t.is_meta]
    if leftovers:
        raise ModelLoadError(f"could not build the drafter; unfilled tensors: {', '.join(leftovers[:5])}")
    drafter.generation_config = target.model.generation_config
    drafter.eval()
    drafter.requires_grad_(False)
    return drafter


def own_modules(drafter: nn.Module, shared_layers: int) -> dict[str, nn.Module]:
    """The drafter's own (trainable) modules by name relative to `drafter.model`: new layers and the norm."""
    layers = drafter.model.layers
    own = {f"layers.{i}": layers[i] for i in range(shared_layers, len(layers))}
    own["norm"] = drafter.model.norm
    return own


def own_state(drafter: nn.Module, shared_layers: int) -> dict[str, torch.Tensor]:
    """The tensors `load_own_state` expects: "layers.<i>.<param>" and "norm.<param>"."""
    return {
        f"{prefix}.{key}": tensor
        for prefix, module in own_modules(drafter, shared_layers).items()
        for key, tensor in module.state_dict().items()
    }


def load_own_state(drafter: nn.Module, shared_layers: int, state: dict[str, torch.Tensor]) -> None:
    """Copy saved tensors (any float dtype) into the drafter's own modules; every one must be present."""
    expected = own_state(drafter, shared_layers)
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise ModelLoadError(f"trained drafter weights do not fit the target (missing {missing[:3]}, unexpected {extra[:3]})")
    with torch.no_grad():
        for key, tensor in expected.items():
            if state[key].shape != tensor.shape:
                raise ModelLoadError(f"trained drafter tensor {key} has shape {tuple(state[key].shape)}, expected {tuple(tensor.shape)}")
            tensor.copy_(state[key])


def init_from_target(target: LoadedModel, drafter: nn.Module, shared_layers: int, source_layers: Sequence[int]) -> None:
    """Initialise the drafter's own layers from the given target layers and its norm from the target's final norm."""
    layers = _decoder_layers(target)
    own = own_modules(drafter, shared_layers)
    if len(source_layers) != len(own) - 1:
        raise ValueError(f"need {len(own) - 1} source layers, got {len(source_layers)}")
    with torch.no_grad():
        for i, source in zip(range(shared_layers, shared_layers + len(source_layers)), source_layers):
            own[f"layers.{i}"].load_state_dict(layers[source].state_dict())
        own["norm"].load_state_dict(target.model.model.norm.state_dict())


def new_distilled(target: LoadedModel, source_layers: Sequence[int]) -> nn.Module:
    """A distilled drafter with len(source_layers) own layers, initialised from those target layers."""
    drafter = assemble(target, len(source_layers), 0)
    init_from_target(target, drafter, 0, source_layers)
    return drafter


def new_kangaroo(target: LoadedModel, exit_layer: int) -> nn.Module:
    """A Kangaroo drafter at `exit_layer`; the adapter starts as a copy of target layer `exit_layer`."""
    _check_exit_layer(target, exit_layer)
    drafter = assemble(target, exit_layer + 1, exit_layer)
    init_from_target(target, drafter, exit_layer, [exit_layer])
    return drafter


def _check_exit_layer(target: LoadedModel, exit_layer: int) -> None:
    total = len(_decoder_layers(target))
    if not 1 <= exit_layer < total:
        raise ModelLoadError(f"Kangaroo exit layer must be between 1 and {total - 1} for this target, got {exit_layer}")


def trim_head(target: LoadedModel, drafter: nn.Module, keep: torch.Tensor) -> None:
    """Replace the drafter's (shared) LM head with a TrimmedHead over the token ids `keep`."""
    drafter.lm_head = TrimmedHead(target.model.get_output_embeddings().weight, keep)


# --------------------------------------------------------------------------- loading


def read_config(folder: Path, kind: str) -> dict:
    path = Path(folder) / f"{kind}.json"
    if not path.is_file():
        raise ModelLoadError(
            f"no trained {kind} drafter in {shown_path(folder)}; train one with "
            f"`specviz train-drafter --kind {kind} --out {shown_path(folder)}`"
        )
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT_VERSION:
        raise ModelLoadError(f"{shown_path(path)} has format {config.get('format')!r}; this version reads format {FORMAT_VERSION}")
    return config


def available(folder: Path) -> dict[str, object]:
    """What a drafter folder offers: {"distilled": layer count or None, "kangaroo": [exit layers]}."""
    out: dict[str, object] = {DISTILLED: None, KANGAROO: []}
    if (Path(folder) / f"{DISTILLED}.json").is_file():
        out[DISTILLED] = read_config(folder, DISTILLED)["num_layers"]
    if (Path(folder) / f"{KANGAROO}.json").is_file():
        out[KANGAROO] = list(read_config(folder, KANGAROO)["exit_layers"])
    return out


def check_target(config: dict, target: LoadedModel, folder: Path) -> None:
    """ModelLoadError unless the weights described by `config` (from `folder`) were trained for this target's shape."""
    shape = {
        "hidden_size": target.model.config.hidden_size,
        "vocab_size": target.model.config.vocab_size,
        "target_num_layers": len(_decoder_layers(target)),
    }
    wrong = {k: (config.get(k), v) for k, v in shape.items() if config.get(k) != v}
    if wrong:
        details = ", ".join(f"{k} {saved} vs target {actual}" for k, (saved, actual) in wrong.items())
        raise ModelLoadError(f"the trained drafter in {shown_path(folder)} was made for another target ({details})")


def trained_drafter_name(spec: str, vocab_trim: int = 0) -> str:
    """The name of a loaded trained drafter: "distilled", "kangaroo:4+vocab-trim:8192", ..."""
    return f"{spec}+vocab-trim:{vocab_trim}" if vocab_trim else spec


def load_trained_drafter(target: LoadedModel, spec: str, vocab_trim: int = 0, folder: Path | str | None = None) -> LoadedModel:
    """A trained drafter for `target`: spec "distilled" or "kangaroo:<exit_layer>".

    folder: where the drafter files are (default `drafters_dir(target.name)`). vocab_trim: keep
    only the N most frequent target tokens in the drafter's head (0 = the full vocabulary).
    Raises ModelLoadError when the folder has no such drafter or N is out of range.
    """

    parsed = DrafterSpec.parse(spec)
    folder = Path(folder) if folder is not None else drafters_dir(target.name)
    if not folder.is_dir():
        raise ModelLoadError(
            f"no trained drafters for target {target.name!r}: {shown_path(folder)} does not exist "
            f"(train them with `specviz train-drafter --out {shown_path(folder)}`)"
        )
    config = read_config(folder, parsed.kind)
    check_target(config, target, folder)
    if not isinstance(vocab_trim, int) or isinstance(vocab_trim, bool) or vocab_trim < 0:
        raise ModelLoadError(f"vocab_trim must be an integer >= 0 (0 = full vocabulary), got {vocab_trim!r}")
    keep = kept_ids(load_frequency_order(folder / FREQUENCY_FILE), vocab_trim) if vocab_trim else None
    weights = load_file(str(folder / f"{parsed.kind}.safetensors"))
    if parsed.kind == DISTILLED:
        shared, drafter = 0, assemble(target, int(config["num_layers"]), 0)
        state = weights
    else:
        exits = [int(e) for e in config["exit_layers"]]
        if parsed.exit_layer not in exits:
            raise ModelLoadError(
                f"no Kangaroo adapter for exit layer {parsed.exit_layer} in {shown_path(folder)}; trained exit layers: "
                f"{', '.join(map(str, exits))}"
            )
        shared, drafter = parsed.exit_layer, assemble(target, parsed.exit_layer + 1, parsed.exit_layer)
        prefix = f"exit{parsed.exit_layer}."
        state = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    load_own_state(drafter, shared, state)
    if keep is not None:
        trim_head(target, drafter, keep)
    return LoadedModel(trained_drafter_name(str(parsed), vocab_trim), drafter, None, target.device)


def trim_to_frequent(target: LoadedModel, drafter: LoadedModel, vocab_trim: int, folder: Path) -> LoadedModel:
    """VocabTrim for a freshly built drafter sharing the target's head (e.g. early exit), in place.

    Only the drafter's own `lm_head` attribute is replaced; the target's head is untouched.
    """
    path = Path(folder) / FREQUENCY_FILE
    if not path.is_file():
        raise ModelLoadError(f"vocab_trim needs the target's token-frequency table ({shown_path(path)}); train drafters "
                             "first or use 0")
    trim_head(target, drafter.model, kept_ids(load_frequency_order(path), vocab_trim))
    return LoadedModel(trained_drafter_name(drafter.name, vocab_trim), drafter.model, None, target.device)


def kangaroo_agreement(target: LoadedModel, folder: Path | str | None = None) -> dict[int, float]:
    """Exit layer -> held-out greedy top-1 agreement of its trained Kangaroo adapter ({} when none is trained)."""
    folder = Path(folder) if folder is not None else drafters_dir(target.name)
    if not (folder / f"{KANGAROO}.json").is_file():
        return {}
    config = read_config(folder, KANGAROO)
    heldout = config.get("heldout", {})
    out = {}
    for layer in config["exit_layers"]:
        measured = heldout.get(f"{KANGAROO}:{layer}", {}).get("after", {}).get("full", {}).get("greedy")
        out[int(layer)] = float(measured) if isinstance(measured, (int, float)) else 0.5
    return out


# --------------------------------------------------------------------------- SpecDec++ acceptance predictors

PREDICTOR_FILE = "acceptance_predictor.json"
PROJECTION_FILE = "acceptance_predictor.safetensors"  # hidden-state projections: "<key>.mean", "<key>.components"


def predictor_key(drafter: str, vocab_trim: int) -> str:
    """How a predictor is filed: the drafter spec and its VocabTrim, e.g. "distilled:vocab_trim=8192"."""
    return f"{drafter}:vocab_trim={vocab_trim}"


def load_acceptance_predictor(target_name: str, drafter: str, vocab_trim: int,
                              folder: Path | str | None = None) -> TrainedPredictor | None:
    """SpecDec++'s acceptance predictor trained for this target and drafter (weights and, if it
    was trained with one, the hidden-state projection), or None if none was trained."""
    folder = Path(folder or drafters_dir(target_name))
    path, key = folder / PREDICTOR_FILE, predictor_key(drafter, vocab_trim)
    if not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text()).get("predictors", {}).get(key)
        if not entry:
            return None
        projection = None
        if entry.get("hidden_components"):
            tensors = load_file(str(folder / PROJECTION_FILE))
            projection = HiddenStateProjection(tensors[f"{key}.mean"].double(), tensors[f"{key}.components"].double())
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        raise ModelLoadError(f"unreadable acceptance predictor for {key} in {shown_path(folder)}: "
                             f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    return TrainedPredictor(tuple(float(w) for w in entry["weights"]), projection)
