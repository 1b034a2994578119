"""A causal LM fed incrementally through its own KV cache, with rollback by cropping.

Both the target and model drafters use it. The cache always holds a prefix of the token
sequence the caller is building; `rollback(n)` keeps the first n cached positions
(`DynamicCache.crop` with a negative count removes the rest).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache


class CachedCausalLM:
    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.cache = DynamicCache(config=model.config)
        self.forward_passes = 0

    @property
    def cached_length(self) -> int:
        return self.cache.get_seq_length()

    @torch.inference_mode()
    def forward(self, token_ids: list[int], keep_logits: int = 1) -> torch.Tensor:
        """Append token_ids to the cache; return the logits of the last `keep_logits` positions.

        Returns [keep_logits, vocab]: row i scores the token that follows
        token_ids[len(token_ids) - keep_logits + i].
        """
        input_ids = torch.tensor([token_ids], dtype=torch.long)
        out = self.model(input_ids=input_ids, cache=self.cache, use_cache=True, logits_to_keep=keep_logits)
        self.forward_passes += 1
        return out.logits[0]

    def rollback(self, keep: int) -> None:
        """Keep only the first `keep` cached positions (the accepted prefix)."""
        remove = self.cached_length - keep
        if remove < 0:
            raise ValueError(f"cannot roll back to {keep} positions: only {self.cached_length} are cached")
        if remove:
            self.cache.crop(-remove)
