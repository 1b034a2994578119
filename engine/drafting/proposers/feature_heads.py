"""Proposers that draft from the target's own features: EAGLE's head (chains and trees) and Medusa's heads.

The target's `FeatureTap` (engine.loading.causal_lm) holds its feature after every committed token
but the last: row i predicts token i + 1. The decoder shares the tap with the proposer, so every
verification pass hands over the accepted positions' features at no extra cost.

EAGLE's head sits at "pair" positions: pair i = (feature i, token i + 1), and its output there is the
predicted feature i + 1 (whose LM-head distribution drafts token i + 2). Its KV cache holds the pairs
read from the target's true features, then (within a step) the drafted pairs, which read the head's
own predicted features; every step starts by cropping those away and reading the new true features:

    context  x0 .. x(m-1) x(m)        target features f0 .. f(m-1)    (x(m): the last token, not yet verified)
    catch up:  pairs (f_i, x(i+1)) for the unread i < m  ->  predicted f^(m), drafts d1 = argmax head(f^(m))
    draft:     pair (f^(m), d1) -> f^(m+1) -> d2, ...   (a tree: each node reads its parent's predicted feature)
"""

from __future__ import annotations

from typing import Any

import torch

from engine.decoding.draft_tree import DraftTree
from engine.drafting.policies import DraftStopRule
from engine.drafting.proposers.base import Proposal
from engine.events import StepFeedback
from engine.loading.causal_lm import CachedCausalLM, FeatureTap
from engine.loading.feature_drafters import EagleHead, MedusaHeads
from engine.sampling import SamplingConfig, check_finite, logits_to_probs, sample


class EagleHeadCache:
    """EAGLE's head with its KV cache of pairs and a tap of its own predicted features."""

    def __init__(self, head: EagleHead, target_features: FeatureTap):
        self.head = head
        self.target_features = target_features
        self.own = FeatureTap()  # the head's predicted feature at each of its cached positions
        self.lm: CachedCausalLM | None = None
        self.true_pairs = 0  # cached pairs that read the target's (true) features
        self.prefix = 0  # cached pairs before this step's drafted ones (the true pairs, or a stand-in)

    def start(self) -> None:
        self.lm = CachedCausalLM(self.head, self.own)
        self.true_pairs = self.prefix = 0

    def catch_up(self, context: list[int]) -> tuple[torch.Tensor, int]:
        """Drop the drafted pairs, read the target's unread features; the logits after context[-1] [vocab]
        and how many new target features were read."""
        assert self.lm is not None, "start() first"
        self.lm.rollback(min(self.lm.cached_length, self.true_pairs))
        rows = self.target_features.rows  # [len(context) - 1, H]
        first, last = self.lm.cached_length, len(rows)
        if last == first:  # nothing to read (a one-token prompt): a stand-in pair, cropped again next step
            stand_in = torch.zeros(1, 1, self.head.config.hidden_size, device=self.lm.device)
            logits = self.lm.forward([context[-1]], features=stand_in)[-1]
            self.prefix = self.lm.cached_length
            return logits, 0
        logits = self.lm.forward(context[first + 1 : last + 1], features=rows[None, first:last])[-1]
        self.true_pairs = self.prefix = last
        return logits, last - first

    def feed(self, token_ids: list[int], parent_features: torch.Tensor, parents: list[int] | None = None) -> torch.Tensor:
        """Feed drafted tokens with their parents' predicted features [N, H]; their logits [N, vocab].
        parents: tree-region parents (forward_tree); None feeds one chain token after the cache."""
        assert self.lm is not None
        if parents is None:
            return self.lm.forward(token_ids, features=parent_features[None])[-1:]
        return self.lm.forward_tree(token_ids, parents, self.prefix, features=parent_features[None])

    def predicted(self, position: int) -> torch.Tensor:
        """The head's predicted feature at one of its cached positions [H]."""
        return self.own.rows[position]


class EagleProposer:
    """EAGLE chain drafting: the head drafts k tokens autoregressively on its own predicted features.

    `stop_rule`: an adaptive length policy's in-draft stop (confidence, SpecDec++), as for a drafter model.
    """

    def __init__(self, head: EagleHead, target_features: FeatureTap, stop_rule: DraftStopRule | None = None):
        self.cache = EagleHeadCache(head, target_features)
        self.stop_rule = stop_rule

    def start(self, prompt_ids: list[int]) -> None:
        self.cache.start()

    def propose(self, context: list[int], k: int, sampling: SamplingConfig, generator: torch.Generator) -> Proposal:
        # 1. read the target's new features (the last step's accepted positions) -> the first distribution
        logits, read = self.cache.catch_up(context)
        tokens: list[int] = []
        probs: list[torch.Tensor] = []
        info: dict[str, Any] = {}
        for i in range(k):
            check_finite(logits, "drafter")
            dist = logits_to_probs(logits[None], sampling)[0]
            feature = self.cache.predicted(-1)
            # 2. an adaptive policy may stop here, on the head's distribution and predicted feature
            reason = self.stop_rule.should_stop(i, dist, feature) if self.stop_rule is not None else None
            if reason is not None:
                info = {"stopped_at": i, "stop_reason": reason}
                break
            token = int(dist.argmax()) if sampling.greedy else sample(dist, generator)
            tokens.append(token)
            probs.append(dist)
            # 3. the next pair reads the head's own predicted feature (not after the last token)
            if i + 1 < k:
                logits = self.cache.feed([token], feature[None])[-1]
        info["summary"] = (f"EAGLE head read the target's features at {read} new position{'s' if read != 1 else ''}, "
                           f"then drafted {len(tokens)} from its own predicted features"
                           + (f"; stopped at position {info['stopped_at']}: {info['stop_reason']}" if "stopped_at" in info else ""))
        info["features_read"] = read
        return Proposal(tokens, torch.stack(probs) if probs else None, info)

    def observe(self, feedback: StepFeedback) -> None:
        pass  # the next catch_up crops the drafted pairs and reads the accepted positions' true features


class EagleTreeDrafter:
    """The TreeDrafter seam (root, expand) for EAGLE's head: EAGLE-2's dynamic tree, static trees, RSD, SpecTr."""

    def __init__(self, head: EagleHead, target_features: FeatureTap):
        self.cache = EagleHeadCache(head, target_features)
        self.root_feature = torch.empty(0)

    def start(self) -> None:
        self.cache.start()

    def root(self, context: list[int]) -> torch.Tensor:
        logits, _ = self.cache.catch_up(context)
        self.root_feature = self.cache.predicted(-1)
        return logits

    def expand(self, tree: DraftTree, nodes: list[int], region: dict[int, int]) -> torch.Tensor:
        """Feed tree nodes (their parents already fed) in one pass, each with its parent's predicted feature."""
        parents = [region.get(tree.parents[n], -1) for n in nodes]
        base = self.cache.prefix
        parent_features = torch.stack([self.root_feature if p < 0 else self.cache.predicted(base + p) for p in parents])
        logits = self.cache.feed([tree.tokens[n] for n in nodes], parent_features, parents)
        for n in nodes:
            region[n] = len(region)
        return logits


class MedusaHeadsDrafter:
    """Medusa's heads on the target's last feature: head j's distribution drafts the token j + 1 after the last.

    As a chain proposer it drafts head j's token at position j; as a tree drafter (root, expand) every node
    at depth d gets head d's distribution (the heads do not read the drafted tokens: Medusa's candidate tree).
    """

    def __init__(self, heads: MedusaHeads, target_features: FeatureTap):
        self.heads = heads
        self.target_features = target_features
        self.logits = torch.empty(0)  # [J, vocab] this step's heads

    @property
    def depth(self) -> int:
        return self.heads.heads

    def _read(self) -> torch.Tensor:
        rows = self.target_features.rows
        feature = rows[-1] if len(rows) else torch.zeros(self.heads.blocks[0].in_features,
                                                         device=self.heads.blocks[0].weight.device)
        with torch.inference_mode():
            self.logits = self.heads.lm_head(self.heads(feature)).cpu()  # [J, vocab], on the CPU (where sampling runs)
        return self.logits

    # chain proposer
    def start(self, prompt_ids: list[int] | None = None) -> None:
        pass

    def propose(self, context: list[int], k: int, sampling: SamplingConfig, generator: torch.Generator) -> Proposal:
        logits = self._read()[: min(k, self.depth)]
        check_finite(logits, "drafter")
        dists = logits_to_probs(logits, sampling)  # [k, vocab]
        tokens = [int(d.argmax()) if sampling.greedy else sample(d, generator) for d in dists]
        summary = (f"Medusa: {len(tokens)} heads read the target's feature at the last verified position and "
                   f"drafted one token each")
        return Proposal(tokens, dists if tokens else None, {"summary": summary, "features_read": 1})

    def observe(self, feedback: StepFeedback) -> None:
        pass

    # tree drafter
    def root(self, context: list[int]) -> torch.Tensor:
        return self._read()[0]

    def expand(self, tree: DraftTree, nodes: list[int], region: dict[int, int]) -> torch.Tensor:
        depths = tree.depths()
        return torch.stack([self.logits[min(depths[n], self.depth - 1)] for n in nodes])
