"""The bounded model cache shared by runs, UI sessions and drafters (thread-safe).

It lives apart from engine.loading.models (how one model is loaded) because getting a drafter
needs both the loaders and the project's trained drafters (engine.loading.trained_drafters), which
themselves build on engine.loading.models.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable

from engine.devices import CPU, resolve_device
from engine.errors import ModelLoadError
from engine.loading.models import (
    EMBEDDED_DEFAULT,
    LoadedModel,
    ProgressFn,
    check_same_tokenizer,
    early_exit_drafter,
    load_model,
)
from engine.loading.trained_drafters import DrafterSpec, drafters_dir, load_trained_drafter, trim_to_frequent
from engine.strategies import EARLY_EXIT_PREFIX


class ModelCache:
    """A bounded LRU of loaded models, shared across UI sessions and runs (thread-safe).

    Keys are (model spec, device): the same model on two devices is two entries. Early-exit drafters
    are built from the target and layer count and share the target's weights, so they cost almost nothing.

    device: where `get` loads models when the caller names no device (a device choice, see
    engine.devices.resolve_device; default the CPU). A loader is called with `device=` (resolved) only for other
    devices, so a loader that knows nothing of devices serves the CPU as before.
    """

    def __init__(self, max_models: int = 2, loader: Callable[..., LoadedModel] = load_model, device: str = CPU):
        self.max_models = max_models
        self._loader = loader
        self.device = device
        self._models: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, str], threading.Lock] = {}

    def get(self, spec: str, progress: ProgressFn | None = None, device: str | None = None) -> LoadedModel:
        """The model `spec` loaded for `device` (a device choice; None: the cache's own), loading it if needed.
        ConfigError for a device this machine lacks."""
        spec = (spec or EMBEDDED_DEFAULT).strip() or EMBEDDED_DEFAULT
        device = resolve_device(device or self.device)  # "cuda" and "cuda:0" on a one-GPU machine: one entry
        key = (spec, device)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:  # one load per spec and device even when several sessions ask at once
            with self._lock:
                if key in self._models:
                    return self._models[key]
            if device == CPU:
                loaded = self._loader(spec, progress=progress)
            else:
                loaded = self._loader(spec, progress=progress, device=device)
            with self._lock:
                self._models[key] = loaded
                self._models.move_to_end(key)
                while len(self._models) > self.max_models:
                    self._models.popitem(last=False)
            return loaded

    def drafter(
        self, target: LoadedModel, spec: str, progress: ProgressFn | None = None, vocab_trim: int = 0
    ) -> LoadedModel:
        """A same-tokenizer drafter for `target`: "early-exit:N", a trained one ("distilled",
        "kangaroo:N", from assets/drafters/<target>/), or any causal LM by spec.

        vocab_trim > 0 (VocabTrim) keeps only the target's N most frequent tokens in the drafter's
        head; it needs the token-frequency table shipped with the target's trained drafters.
        """
        if spec.startswith(EARLY_EXIT_PREFIX):
            drafter = early_exit_drafter(target, int(spec[len(EARLY_EXIT_PREFIX):]))
            return trim_to_frequent(target, drafter, vocab_trim, drafters_dir(target.name)) if vocab_trim else drafter
        if DrafterSpec.matches(spec):
            return load_trained_drafter(target, spec, vocab_trim)
        if vocab_trim:
            raise ModelLoadError(
                f"vocab_trim works with early-exit, distilled and kangaroo drafters, not with {spec!r}; use vocab_trim=0"
            )
        drafter = self.get(spec, progress=progress, device=target.device)  # beside its target
        check_same_tokenizer(target, drafter)
        return drafter

    def __len__(self) -> int:
        return len(self._models)

    def loaded(self) -> list[tuple[str, str, LoadedModel]]:
        """What the cache holds now, least recently used first: (spec, device, model)."""
        with self._lock:
            return [(spec, device, model) for (spec, device), model in self._models.items()]
