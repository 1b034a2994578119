"""VocabTrim: a drafter's LM head restricted to the target's N most frequent tokens.

On a small model the LM head is a large share of a drafter's cost (49152 x 576 multiply-adds per
token for SmolLM2); most of those rows belong to tokens the target almost never produces.
`TrimmedHead` computes only the kept rows and returns full-vocabulary logits in which every other
token gets `masked_logit(dtype)`: a finite value (the engine rejects non-finite drafter logits)
so negative that softmax gives it exactly 0.0, in float32 and after any temperature. Those tokens
then have zero drafter probability; speculative sampling stays lossless because the target still
reaches them through the residual max(0, p - q) at a rejection.

The frequency table (written by `specviz train-drafter`) lists every token id, most frequently
produced by the target first; its first N entries are the kept ids.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from engine.errors import ModelLoadError, shown_path

FREQUENCY_FILE = "token_frequency.safetensors"


def masked_logit(dtype: torch.dtype) -> float:
    """The logit of a trimmed token: -1e30, or the dtype's lowest value where -1e30 does not fit.

    exp(-1e30 - max) is exactly 0.0 in float32, and -1e30 / temperature stays finite down to
    temperatures of 1e-8, so softmax never sees an overflow it would turn into NaN.
    """
    return max(-1e30, float(torch.finfo(dtype).min))


class TrimmedHead(nn.Module):
    """An LM head computing only the rows of `keep_ids`; every other token gets `masked_logit`.

    weight: [V, H] the full head (copied rows only: the result owns [N, H]); keep_ids: [N] token ids.
    forward(hidden [..., H]) -> logits [..., V]. The kept rows are an `nn.Linear` (`rows`), so a model's
    kernel choice (engine.loading.linear_kernels.pack_linears) reaches them like any other layer.
    """

    def __init__(self, weight: torch.Tensor, keep_ids: torch.Tensor):
        super().__init__()
        vocab_size = weight.shape[0]
        keep_ids = torch.as_tensor(keep_ids, dtype=torch.long).flatten()
        if keep_ids.numel() == 0 or keep_ids.unique().numel() != keep_ids.numel():
            raise ValueError("keep_ids must be a non-empty list of distinct token ids")
        if int(keep_ids.min()) < 0 or int(keep_ids.max()) >= vocab_size:
            raise ValueError(f"keep_ids must lie in [0, {vocab_size})")
        self.vocab_size = vocab_size
        self.register_buffer("keep_ids", keep_ids.to(weight.device).clone())  # beside the head it trims
        self.rows = nn.Linear(weight.shape[1], keep_ids.numel(), bias=False)
        self.rows.weight = nn.Parameter(weight.detach()[keep_ids].clone(), requires_grad=False)  # [N, H]

    @property
    def weight(self) -> torch.Tensor:
        return self.rows.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        kept = self.rows(hidden)  # [..., N]
        logits = kept.new_full((*kept.shape[:-1], self.vocab_size), masked_logit(kept.dtype))
        return logits.index_copy_(-1, self.keep_ids, kept)

    def extra_repr(self) -> str:
        return f"kept={self.keep_ids.numel()}, vocab_size={self.vocab_size}"


def save_frequency_table(path: Path, order: torch.Tensor, counts: torch.Tensor) -> None:
    """Write the table: token ids most frequent first [V] and each token's produced count [V] (indexed by id)."""
    from safetensors.torch import save_file

    save_file({"token_ids": order.long().contiguous(), "counts": counts.long().contiguous()}, str(path))


def load_frequency_order(path: Path) -> torch.Tensor:
    """The token ids of a frequency table, most frequent first: [V] int64."""
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise ModelLoadError(f"VocabTrim needs a token-frequency table, and {shown_path(path)} does not exist")
    return load_file(str(path))["token_ids"]


def kept_ids(order: torch.Tensor, n: int) -> torch.Tensor:
    """The first n ids of a frequency order, sorted by id: [n] int64."""
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= order.numel():
        raise ModelLoadError(f"vocab_trim must be between 1 and {order.numel()} (0 = full vocabulary), got {n!r}")
    return order[:n].sort().values
