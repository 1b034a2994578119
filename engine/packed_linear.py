"""Linear layers with oneDNN-packed weights: multi-token verification at nearly the cost of one token.

Speculative decoding only pays when the target scores k + 1 tokens for little more than the cost of
one. On a CPU, PyTorch's default `F.linear` calls MKL's sgemm, which handles one row (decoding)
with a fast matrix-vector kernel but two to eight rows (verification) with a general kernel
about twice as slow: measured on SmolLM2-135M with 2 threads, a whole forward pass over 2-8 new
tokens cost ~1.7x a one-token pass. oneDNN's linear with the weight reordered once into its
blocked layout runs 1 to 8 rows in nearly the same time, and its one-row speed matches MKL's
(the 49152 x 576 LM head is faster: ~9 ms against ~14 ms).

`pack_linears(model)` swaps every `nn.Linear` of an inference model for a `PackedLinear` that
shares the same weight and bias Parameters (state dicts, weight tying and drafters that share the
target's modules are unaffected) and keeps the packed copy beside them. The packed copy is made
on first use and rebuilt whenever the weight changes (tracked by its storage and version
counter). Anything the packed kernel cannot serve falls back to `F.linear`: autograd (training a
drafter on top of the target's frozen layers), dtypes other than float32, tensors off the CPU, or
a PyTorch built without oneDNN.

Results agree with `F.linear` to float32 rounding (~1e-4 absolute on logits), like MKL's own one-
and many-row kernels agree with each other; tests check both the numbers and that greedy
speculative decoding stays identical to the baseline.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def packed_kernel_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinear(nn.Module):
    """y = x W^T + b through oneDNN with W pre-packed; same Parameters as the `nn.Linear` it replaces.

    weight: [out, in], bias: [out] or None; forward(x [..., in]) -> [..., out].
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # the same Parameter object: tying and sharing survive the swap
        self.bias = linear.bias
        self._packed: torch.Tensor | None = None
        self._packed_for: tuple[int, int] | None = None  # (storage pointer, version) of the packed weight

    def _uses_packed_kernel(self, x: torch.Tensor) -> bool:
        weight = self.weight
        if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
            return False
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
            return False  # the packed kernel has no backward
        return weight.device.type == "cpu"

    def _packed_weight(self) -> torch.Tensor:
        key = (self.weight.data_ptr(), self.weight._version)
        if self._packed_for != key:
            self._packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach())
            self._packed_for = key
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._uses_packed_kernel(x):
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


def pack_linears(model: nn.Module) -> int:
    """Replace every `nn.Linear` in `model` with a `PackedLinear` in place; returns how many were swapped.

    Does nothing (returns 0) where PyTorch has no oneDNN kernel.
    """
    if not packed_kernel_available():
        return 0
    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
    ]
    for parent, name, child in swaps:
        setattr(parent, name, PackedLinear(child))
    return len(swaps)
