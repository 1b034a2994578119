"""ZeroGPU Spaces: the model work of a run inside `spaces.GPU` when the `spaces` package is importable.

On a Hugging Face ZeroGPU Space a GPU is attached to the process only while a function decorated with
`spaces.GPU` runs; `spaces` is installed there (and `@spaces.GPU` does nothing on other hardware). `on_gpu`
applies that decorator when `spaces` can be imported and returns the function unchanged otherwise, so the
CLI, the tests and CPU machines run exactly the code they ran before. specviz.runner applies it to the
function that streams a run's steps (every forward pass of the target and the drafters happens there);
loading models stays outside, as ZeroGPU expects (models are moved to "cuda" at load time, outside a GPU
function).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TypeVar

ZERO_GPU_DURATION_S = 120  # the longest a streamed run may hold the GPU: 4096 new tokens of a small model fit

F = TypeVar("F", bound=Callable)


def zero_gpu_decorator() -> Callable[[F], F] | None:
    """`spaces.GPU(duration=...)` when the `spaces` package is importable, else None."""
    try:
        spaces = importlib.import_module("spaces")
    except ImportError:
        return None
    gpu = getattr(spaces, "GPU", None)
    return gpu(duration=ZERO_GPU_DURATION_S) if callable(gpu) else None


def on_gpu(fn: F) -> F:
    """`fn` wrapped with `spaces.GPU` on a ZeroGPU Space (the `spaces` package importable); `fn` itself elsewhere."""
    decorator = zero_gpu_decorator()
    return fn if decorator is None else decorator(fn)
