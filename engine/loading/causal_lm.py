"""A causal LM fed incrementally through its own KV cache, with rollback by cropping.

Both the target and model drafters use it. The cache always holds a prefix of the token
sequence the caller is building; `rollback(n)` keeps the first n cached positions
(`DynamicCache.crop` with a negative count removes the rest).

With a `FeatureTap` it also keeps the model's final hidden state at every cached position (taken from
the same forward pass, so at no extra cost), cropped and compacted with the cache: what a target
hands to the feature-level draft heads (engine.drafting.proposers.feature_heads).

Devices: the inputs go to the model's device (`engine.devices.model_device`); the logits come back on the
CPU, where sampling and verification run; the features stay on the model's device, for the draft heads
beside it.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from engine.devices import model_device


class FeatureTap:
    """The final (normed) hidden state at every position a `CachedCausalLM`'s cache holds.

    rows[i] is the feature after cached token i: the vector the LM head turns into token i + 1's
    distribution. For a target the cache holds every committed token but the last, so rows has
    one row per committed token but the last.
    """

    def __init__(self) -> None:
        self.rows = torch.empty(0)  # [cached positions, hidden]

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def reset(self) -> None:
        self.rows = torch.empty(0)

    def append(self, hidden: torch.Tensor) -> None:  # hidden: [n, H]
        self.rows = hidden.clone() if not len(self) else torch.cat([self.rows, hidden])

    def keep(self, positions: torch.Tensor | int) -> None:
        """Keep the first `positions` rows (an int) or exactly the listed ones (a tensor of indices)."""
        self.rows = self.rows[:positions] if isinstance(positions, int) else self.rows.index_select(0, positions)


class CachedCausalLM:
    def __init__(self, model: torch.nn.Module, features: FeatureTap | None = None):
        self.model = model
        self.device = model_device(model)  # where its inputs go
        self.cache = DynamicCache(config=model.config)
        self.forward_passes = 0
        self._region_parents: list[int] = []  # the tree region after the prefix (see forward_tree)
        self.features = features  # None: nobody reads the hidden states
        if features is not None:
            features.reset()

    @property
    def cached_length(self) -> int:
        return self.cache.get_seq_length()

    @torch.inference_mode()
    def forward(self, token_ids: list[int], keep_logits: int = 1, **inputs: torch.Tensor) -> torch.Tensor:
        """Append token_ids to the cache; return the logits of the last `keep_logits` positions.

        Returns [keep_logits, vocab]: row i scores the token that follows
        token_ids[len(token_ids) - keep_logits + i]. `inputs`: extra model inputs (a draft head's features).
        """
        input_ids = torch.tensor([token_ids], dtype=torch.long, device=self.device)
        out = self.model(input_ids=input_ids, cache=self.cache, use_cache=True, logits_to_keep=keep_logits,
                         output_hidden_states=self.features is not None, **inputs)
        self.forward_passes += 1
        if self.features is not None:
            self.features.append(out.hidden_states[-1][0])
        return out.logits[0].cpu()  # the same tensor on the CPU

    @torch.inference_mode()
    def forward_tree(self, token_ids: list[int], parents: list[int], prefix_length: int | None = None,
                     **inputs: torch.Tensor) -> torch.Tensor:
        """Append tree nodes in one pass; return the logits after every one of them [N, vocab].

        The cache is a prefix (the first `prefix_length` positions; default: everything cached, i.e.
        a new tree) followed by the tree region: nodes fed by earlier forward_tree calls on the same
        prefix, then these. parents[i] is the region index of node i's parent (-1: it follows the
        prefix directly); the new nodes get region indices after the earlier ones, parents first.
        Node i attends to the prefix and to its own ancestors and sits at position
        prefix_length + depth(i). A chain is the tree whose parents are [-1, 0, 1, ...].
        `keep_positions` or `rollback` ends the region.

        Example: the target verifies a tree rooted at the last committed token in one call;
        a drafter expands a tree one level per call with the same prefix_length.
        """
        n, cached = len(token_ids), self.cached_length
        if prefix_length is None or prefix_length == cached:
            prefix_length, self._region_parents = cached, []
        elif cached - prefix_length != len(self._region_parents):
            raise ValueError("forward_tree: the cache does not hold this tree's region")
        region = self._region_parents + list(parents)  # [R + N] parent per region node
        ancestors = torch.zeros(len(region), len(region), dtype=torch.bool)  # [R + N, R + N] node i sees node j
        depth = [0] * len(region)
        for i, p in enumerate(region):
            ancestors[i, i] = True
            if p >= 0:
                ancestors[i] |= ancestors[p]
                depth[i] = depth[p] + 1
        first = len(self._region_parents)
        dtype = next(self.model.parameters()).dtype
        mask = torch.zeros(1, 1, n, cached + n, dtype=dtype)  # additive: 0 attends, min blocks
        mask[0, 0, :, prefix_length:].masked_fill_(~ancestors[first:], torch.finfo(dtype).min)
        out = self.model(
            input_ids=torch.tensor([token_ids], dtype=torch.long, device=self.device),
            attention_mask=mask.to(self.device),  # built on the CPU (a Python loop above), moved once
            position_ids=torch.tensor([[prefix_length + d for d in depth[first:]]], dtype=torch.long,
                                      device=self.device),
            cache=self.cache,
            use_cache=True,
            logits_to_keep=n,
            output_hidden_states=self.features is not None,
            **inputs,
        )
        self.forward_passes += 1
        self._region_parents = region
        if self.features is not None:
            self.features.append(out.hidden_states[-1][0])
        return out.logits[0].cpu()

    def keep_positions(self, positions: list[int]) -> None:
        """Keep only the listed cached positions (ascending), in that order: the accepted path of a tree."""
        self._region_parents = []
        index = torch.tensor(positions, dtype=torch.long)
        for layer in self.cache.layers:
            if type(layer).__name__ != "DynamicLayer":
                raise NotImplementedError(f"tree verification needs full-attention caches, not {type(layer).__name__}")
            if layer.is_initialized and layer.keys.numel():
                at = index.to(layer.keys.device)  # each layer's cache sits with its layer (split models)
                layer.keys = layer.keys.index_select(-2, at)
                layer.values = layer.values.index_select(-2, at)
        if self.features is not None:
            self.features.keep(index.to(self.features.rows.device))

    def rollback(self, keep: int) -> None:
        """Keep only the first `keep` cached positions (the accepted prefix)."""
        self._region_parents = []
        remove = self.cached_length - keep
        if remove < 0:
            raise ValueError(f"cannot roll back to {keep} positions: only {self.cached_length} are cached")
        if remove:
            self.cache.crop(-remove)
        if self.features is not None:
            self.features.keep(keep)
