"""Linear layers that pick their CPU kernel per call shape, from a measurement made on this machine.

Speculative decoding only pays when the target scores k + 1 tokens for little more than the cost of
one. PyTorch's default `F.linear` calls MKL's sgemm; oneDNN's linear with the weight reordered once
into its blocked layout is another kernel for the same product. Which one wins depends on the CPU,
the thread count, the weight's shape and the number of rows: on one Xeon the packed kernel won at
every row count (1-8 rows at nearly the cost of one); on another it cost 44% more per decoded token
(one row) and won only from ~8 rows up. So no constant decides it: `KernelCalibration` times both
kernels on the model's own weight shapes at 1, 2, 4, ... rows (a second or two, once per machine,
thread count and torch version; the result is cached on disk beside the de-quantised weights) and
each call uses the faster one for its row count.

`pack_linears(model, calibration)` swaps every `nn.Linear` of an inference model for a
`PackedLinear` that shares the same weight and bias Parameters (state dicts, weight tying and
drafters that share the target's modules are unaffected) and keeps the packed copy beside them,
made on first use and rebuilt whenever the weight changes (tracked by its storage and version
counter). Anything the packed kernel cannot serve falls back to `F.linear`: autograd (training a
drafter on top of the target's frozen layers), dtypes other than float32, tensors off the CPU, or a
PyTorch built without oneDNN.

Results agree with `F.linear` to float32 rounding (~1e-4 absolute on logits), like MKL's own one-
and many-row kernels agree with each other. Tests that compare recorded event streams pin one
kernel for every call with `pinned_kernel("packed")` (or "plain").
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

KERNELS = ("plain", "packed")
ROW_BUCKETS = (1, 2, 4, 8, 16, 32)  # row counts measured; a call uses the largest bucket <= its rows
CALIBRATION_VERSION = 2
_MIN_GAIN = 0.03  # the packed kernel is chosen only where it is at least this much faster


def packed_kernel_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class _KernelPin:
    """A process-wide pin of one kernel for every call (tests and kernel benchmarks only)."""

    def __init__(self) -> None:
        self.kernel: str | None = None
        self.lock = threading.Lock()


_PIN = _KernelPin()


@contextlib.contextmanager
def pinned_kernel(kernel: str) -> Iterator[None]:
    """Use `kernel` ("plain" or "packed") for every PackedLinear call inside the block, on every thread."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    with _PIN.lock:
        before, _PIN.kernel = _PIN.kernel, kernel
    try:
        yield
    finally:
        _PIN.kernel = before


def _packed_weight_of(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach())


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one), for the calibration cache key."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _best_call_s(fn, min_reps: int = 8, budget_s: float = 0.03, max_reps: int = 200) -> float:
    """The fastest of repeated calls: a call that another process interrupted (the scheduler hands a
    2-core machine out in milliseconds) only ever reads slower, so the minimum is what the kernel costs."""
    fn()  # warm-up: first calls allocate and (packed) reorder
    times = []
    started = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - started < budget_s and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


class KernelCalibration:
    """Which kernel is faster for each (weight shape, row bucket), measured on this machine.

    One calibration serves all the linears of a model (and of models with the same shapes). It
    measures lazily, on the first call under a thread count it has not seen, and caches the table
    in `cache_file` (keyed by CPU, torch version, thread count and shape) when one is given.
    """

    def __init__(self, cache_file: Path | None = None):
        self.cache_file = cache_file
        self._weights: dict[tuple[int, int], list[torch.Tensor]] = {}  # (out, in) -> the model's weights of that shape
        self._tables: dict[int, dict[tuple[int, int], dict[int, dict[str, float]]]] = {}  # threads -> shape -> rows -> ms
        self._decisions: dict[int, dict[tuple[int, int], tuple[bool, ...]]] = {}  # threads -> shape -> rows -> packed?
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict) -> "KernelCalibration":
        return self  # copies of a model share its calibration (the measurements hold for the copy too)

    def register(self, weight: torch.Tensor) -> None:
        self._weights.setdefault(tuple(weight.shape), []).append(weight)

    def uses_packed(self, shape: tuple[int, int], rows: int) -> bool:
        """Whether a call on `rows` rows of a weight of this shape should take the packed kernel."""
        pinned = _PIN.kernel
        if pinned is not None:
            return pinned == "packed"
        threads = torch.get_num_threads()
        decisions = self._decisions.get(threads)
        if decisions is None:
            decisions = self._decide(threads)
        by_rows = decisions.get(shape)
        return False if by_rows is None else by_rows[min(rows, ROW_BUCKETS[-1])]

    def _decide(self, threads: int) -> dict[tuple[int, int], tuple[bool, ...]]:
        """shape -> packed? for 0..max rows (a row count between buckets uses the bucket below it)."""
        table = self.table(threads)
        decisions = {}
        for shape, by_bucket in table.items():
            wins = {b: ms["packed"] < ms["plain"] * (1 - _MIN_GAIN) for b, ms in by_bucket.items()}
            decisions[shape] = tuple(wins[max((b for b in ROW_BUCKETS if b <= rows), default=1)]
                                     for rows in range(ROW_BUCKETS[-1] + 1))
        self._decisions[threads] = decisions
        return decisions

    def table(self, threads: int | None = None) -> dict[tuple[int, int], dict[int, dict[str, float]]]:
        """shape -> rows -> {"plain": ms, "packed": ms} for `threads` (default: the current count), measuring if needed."""
        threads = threads or torch.get_num_threads()
        return self._tables.get(threads) or self._calibrate(threads)

    def _cache_key(self, threads: int, shape: tuple[int, int]) -> str:
        return f"v{CALIBRATION_VERSION}|{cpu_name()}|torch {torch.__version__}|{threads} threads|{shape[0]}x{shape[1]}"

    def _read_cache(self) -> dict:
        if self.cache_file is None:
            return {}
        try:
            return json.loads(self.cache_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def _write_cache(self, entries: dict) -> None:
        if self.cache_file is None:
            return
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            merged = {**self._read_cache(), **entries}
            tmp = self.cache_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(merged, indent=1), encoding="utf-8")
            os.replace(tmp, self.cache_file)
        except OSError:
            pass  # a read-only cache directory only costs a re-measurement next time

    def _calibrate(self, threads: int) -> dict:
        with self._lock:
            if threads in self._tables:
                return self._tables[threads]
            cached, fresh, table = self._read_cache(), {}, {}
            for shape, weights in self._weights.items():
                key = self._cache_key(threads, shape)
                entry = cached.get(key)
                if entry is None:
                    entry = fresh[key] = {str(rows): _time_both(weights, rows) for rows in ROW_BUCKETS}
                table[shape] = {int(rows): ms for rows, ms in entry.items()}
            if fresh:
                self._write_cache(fresh)
            self._tables[threads] = table
            return table


@torch.inference_mode()
def _time_both(weights: list[torch.Tensor], rows: int) -> dict[str, float]:
    """Best ms per call of F.linear and of the packed kernel on `rows` rows, cycling through the
    model's weights of one shape (as a forward pass does) so no weight stays hot in the cache."""
    packed = [_packed_weight_of(w) for w in weights]
    x = torch.randn(rows, weights[0].shape[1])
    turn = {"plain": 0, "packed": 0}

    def plain() -> None:
        F.linear(x, weights[turn["plain"] % len(weights)])
        turn["plain"] += 1

    def packed_call() -> None:
        torch.ops.mkldnn._linear_pointwise(x, packed[turn["packed"] % len(packed)], None, "none", [], "")
        turn["packed"] += 1

    # two interleaved rounds each, so a slow spell hits both kernels alike
    plain_s = [_best_call_s(plain), 0.0]
    packed_s = [_best_call_s(packed_call), 0.0]
    plain_s[1], packed_s[1] = _best_call_s(plain), _best_call_s(packed_call)
    return {"plain": 1000 * min(plain_s), "packed": 1000 * min(packed_s)}


class PackedLinear(nn.Module):
    """y = x W^T + b, through oneDNN with W pre-packed or through F.linear, whichever the calibration
    found faster for this weight shape and row count; same Parameters as the `nn.Linear` it replaces.

    weight: [out, in], bias: [out] or None; forward(x [..., in]) -> [..., out].
    """

    def __init__(self, linear: nn.Linear, calibration: KernelCalibration):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.shape = (linear.out_features, linear.in_features)
        self.weight = linear.weight  # the same Parameter object: tying and sharing survive the swap
        self.bias = linear.bias
        self.calibration = calibration
        self._packed: torch.Tensor | None = None
        self._packed_for: tuple[int, int] | None = None  # (storage pointer, version) of the packed weight

    def _packed_kernel_serves(self, x: torch.Tensor) -> bool:
        weight = self.weight
        if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
            return False
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
            return False  # the packed kernel has no backward
        return weight.device.type == "cpu"

    def _packed_weight(self) -> torch.Tensor:
        key = (self.weight.data_ptr(), self.weight._version)
        if self._packed_for != key:
            self._packed = _packed_weight_of(self.weight)
            self._packed_for = key
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if not self._packed_kernel_serves(x) or not self.calibration.uses_packed(self.shape, rows):
            return F.linear(x, self.weight, self.bias)
        bias = None if self.bias is None else self.bias.detach()
        return torch.ops.mkldnn._linear_pointwise(x, self._packed_weight(), bias, "none", [], "")

    def __getstate__(self) -> dict:
        """Copies and pickles leave the packed cache behind (it is rebuilt on first use)."""
        state = self.__dict__.copy()
        state["_packed"], state["_packed_for"] = None, None
        return state

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def pack_linears(model: nn.Module, calibration: KernelCalibration | None = None) -> int:
    """Replace every `nn.Linear` in `model` with a `PackedLinear` in place; returns how many were swapped.

    `calibration`: shared by the model's linears (default: a fresh one, not cached on disk). Does
    nothing (returns 0) where PyTorch has no oneDNN kernel.
    """
    if not packed_kernel_available():
        return 0
    calibration = calibration or KernelCalibration()
    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
    ]
    for parent, name, child in swaps:
        calibration.register(child.weight)
        setattr(parent, name, PackedLinear(child, calibration))
    return len(swaps)


def unpack_linears(model: nn.Module) -> int:
    """Undo `pack_linears` in place: every `PackedLinear` back to an `nn.Linear` with the same Parameters (for a
    model leaving the CPU, where the packed kernel never serves); returns how many were swapped."""
    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, PackedLinear)
    ]
    for parent, name, child in swaps:
        linear = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None, device="meta")
        linear.weight, linear.bias = child.weight, child.bias
        setattr(parent, name, linear)
    return len(swaps)
