"""Where models run: the device choice, its validation, and putting drafters beside their target.

A device choice is "auto" (CUDA when this machine has it, else the CPU), "cpu", "cuda" or "cuda:N".
`resolve_device` turns it into what models are loaded for, or a ConfigError a person can act on
("no CUDA device here; choose cpu"):

- "cpu": the CPU, with the linear kernels a calibration on this machine chose
  (engine.loading.linear_kernels; those are CPU-only, so they are skipped on any other device);
- "cuda:N": that one GPU ("cuda" on a machine with one GPU is "cuda:0");
- "cuda" on a machine with several GPUs: all of them, a model's layers spread over them by
  accelerate (`device_map="sequential"`: fill the first GPU, then the next, so a model that fits on one GPU
  stays on one; only models larger than one GPU are split).

Only the models' forward passes run on the device. Their logits come back to the CPU
(`CachedCausalLM` and the draft heads hand back CPU tensors), where sampling, verification, draft
trees and every proposer's bookkeeping run as they always did, with the run's CPU
`torch.Generator`: a seeded run draws the same random numbers on every device, and a CPU run is
bit-identical to what it was before devices existed. The cost is one device-to-host copy of the kept
logits per forward pass ([positions, vocab] float32: 0.2 MB per position for a 49k vocabulary).

Drafters made from the target's own modules (early exit, Kangaroo, distilled, the EAGLE and Medusa
heads, the diffusion drafter) share the target's tensors where they are and put their own tensors on
the target's device (`place_own_tensors`); drafter models loaded by spec are loaded for the target's device.
"""

from __future__ import annotations

import importlib.util
import re

import torch
from torch import nn

from engine.errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda")  # and "cuda:N"
_DEVICE = re.compile(r"auto|cpu|cuda(?::(\d+))?")
CPU = "cpu"


def cuda_device_count() -> int:
    """Visible CUDA devices (0 on a machine without CUDA or with a CPU-only torch)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(choice: str | None, field: str = "device") -> str:
    """A device choice as models are loaded for it: "cpu", "cuda:N", or "cuda" (several GPUs, spread by accelerate).

    None or "" means "auto". Raises ConfigError(field, ...) for an unknown choice or a device this machine lacks.
    """
    text = (choice or "auto").strip().lower() if isinstance(choice, (str, type(None))) else None
    match = _DEVICE.fullmatch(text) if text is not None else None
    if match is None:
        raise ConfigError(field, f"unknown device {choice!r}: use auto, cpu, cuda or cuda:N")
    count = cuda_device_count()
    if text == "cpu" or (text == "auto" and not count):
        return CPU
    if not count:
        why = "this PyTorch is a CPU-only build" if torch.version.cuda is None else "no GPU is visible"
        raise ConfigError(field, f"no CUDA device here ({why}); choose cpu (or auto)")
    if match.group(1) is not None:
        index = int(match.group(1))
        if index >= count:
            raise ConfigError(field, f"{text} does not exist: this machine has {count} CUDA device"
                                     f"{'s' if count != 1 else ''} (cuda:0 .. cuda:{count - 1})")
        return f"cuda:{index}"
    return "cuda:0" if count == 1 else "cuda"  # "auto" or "cuda"


def device_choices() -> list[str]:
    """What a person may pick on this machine: "cpu" alone without CUDA; else "cuda:N" per GPU (and "cuda": all)."""
    count = cuda_device_count()
    gpus = [f"cuda:{i}" for i in range(count)] + (["cuda"] if count > 1 else [])
    return gpus + [CPU]


def default_device() -> str:
    """The "auto" choice on this machine."""
    return resolve_device("auto")


def uses_cpu_kernels(device: str | torch.device) -> bool:
    """Whether models on `device` get the CPU kernel choice (pack_linears): on the CPU only."""
    return torch.device(device).type == "cpu"


def accelerate_available() -> bool:
    return importlib.util.find_spec("accelerate") is not None


def from_pretrained_placement(device: str) -> dict:
    """Extra `from_pretrained` arguments that load a model straight onto `device` ({} for the CPU: as before).

    With accelerate: device_map {"": "cuda:N"} (one GPU) or "sequential" (every GPU, big models split). Without
    it: {} and the caller moves the model with `.to` (several GPUs then mean the first one).
    """
    if uses_cpu_kernels(device) or not accelerate_available():
        return {}
    return {"device_map": "sequential" if device == "cuda" else {"": device}}


def single_device(device: str) -> str:
    """The one device a whole model goes to with `.to`: "cuda" (several GPUs) means the first one."""
    return "cuda:0" if device == "cuda" else device


def model_device(model: nn.Module) -> torch.device:
    """Where a model's inputs go: its input embedding's device (the first shard of a split model), else the device
    of its first parameter or buffer, else the CPU."""
    embed = None
    get = getattr(model, "get_input_embeddings", None)
    if callable(get):
        try:
            embed = get()
        except (NotImplementedError, AttributeError):
            embed = None
    weight = getattr(embed, "weight", None)
    if isinstance(weight, torch.Tensor):
        return weight.device
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device(CPU)


def place_own_tensors(module: nn.Module, device: str | torch.device) -> nn.Module:
    """Move the module's CPU parameters and buffers to `device`, in place; tensors already on another device (the
    target's, shared with a drafter) stay where they are. Nothing happens for the CPU. Returns the module.

    Tied parameters stay tied: a Parameter object met twice is moved once.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return module
    moved: dict[int, torch.Tensor] = {}
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None and param.device.type == "cpu":
                if id(param) not in moved:
                    moved[id(param)] = nn.Parameter(param.data.to(device), requires_grad=param.requires_grad)
                sub._parameters[name] = moved[id(param)]
        for name, buffer in list(sub._buffers.items()):
            if buffer is not None and buffer.device.type == "cpu":
                if id(buffer) not in moved:
                    moved[id(buffer)] = buffer.to(device)
                sub._buffers[name] = moved[id(buffer)]
    return module


def synchronize(device: str | torch.device) -> None:
    """Wait for the device's queued work (for timing); nothing to wait for on the CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
