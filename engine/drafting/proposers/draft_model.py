"""Chain drafting with a small causal LM (a separate model or the target's early-exit layers)."""

from __future__ import annotations

import torch

from engine.loading.causal_lm import CachedCausalLM, FeatureTap
from engine.drafting.policies import DraftStopRule
from engine.events import StepFeedback
from engine.sampling import SamplingConfig, check_finite, logits_to_probs, sample
from engine.drafting.proposers.base import Proposal


class DraftModelProposer:
    """Drafts k tokens one forward pass at a time, reusing its KV cache across steps.

    Cache bookkeeping: the drafter's cache always holds a prefix of the context. Proposing k
    tokens feeds the uncached context tokens, then d1..d(k-1); after the verdict the cache is
    cropped to the accepted prefix. When the whole draft was accepted the cache lacks dk, so the
    next proposal feeds [dk, bonus] to catch up.

    Double early exit (Kangaroo): with `stop_below > 0` drafting also stops at the first position
    whose top drafter probability falls below that threshold; the unsure token is not proposed,
    so a hard stretch costs one cheap drafter pass instead of a rejected chain. An adaptive length
    policy can stop drafting the same way through `stop_rule` (engine.drafting.policies.DraftStopRule).
    """

    def __init__(self, model: torch.nn.Module, stop_below: float = 0.0, stop_rule: DraftStopRule | None = None):
        self.model = model
        self.stop_below = stop_below
        self.stop_rule = stop_rule  # an adaptive length policy's in-draft stop (confidence, SpecDec++)
        self.lm: CachedCausalLM | None = None
        self._context_length = 0

    def start(self, prompt_ids: list[int]) -> None:
        uses_hidden = self.stop_rule is not None and self.stop_rule.uses_hidden_state
        self.lm = CachedCausalLM(self.model, FeatureTap() if uses_hidden else None)

    def propose(self, context: list[int], k: int, sampling: SamplingConfig, generator: torch.Generator) -> Proposal:
        assert self.lm is not None, "start() first"
        self._context_length = len(context)
        # 1. catch up on the context tokens the cache has not seen (1, or 2 after a full accept)
        logits, hidden = self._forward(context[self.lm.cached_length :])
        tokens: list[int] = []
        probs: list[torch.Tensor] = []
        info: dict = {}
        for i in range(k):
            # 2. the same sampling transforms as the target's
            check_finite(logits, "drafter")
            dist = logits_to_probs(logits[None], sampling)[0]
            # 3. double early exit: an unsure drafter stops here (the decision uses only the context)
            confidence = float(dist.max())
            if confidence < self.stop_below:
                info = {
                    "summary": f"stopped drafting at position {i}: top drafter probability "
                    f"{confidence:.2f} < threshold {self.stop_below:.2f}",
                    "stopped_at": i,
                    "confidence": confidence,
                }
                break
            # 4. the length policy's own stopping rule, if it has one (it also sees only the drafter's distribution)
            reason = self.stop_rule.should_stop(i, dist, hidden) if self.stop_rule is not None else None
            if reason is not None:
                info = {"summary": f"stopped drafting at position {i}: {reason}", "stopped_at": i}
                break
            token = int(dist.argmax()) if sampling.greedy else sample(dist, generator)
            tokens.append(token)
            probs.append(dist)
            # 5. feed the drafted token, except after the last one (its logits would be wasted)
            if i + 1 < k:
                logits, hidden = self._forward([token])
        if self.stop_below > 0 and not info:
            info = {"summary": f"drafted all {len(tokens)}: every top drafter probability >= {self.stop_below:.2f}"}
        return Proposal(tokens, torch.stack(probs) if probs else None, info)

    def _forward(self, token_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The next-token logits [vocab] after token_ids, and the hidden state [hidden_size] if the stop rule uses it."""
        logits = self.lm.forward(token_ids)[-1]
        uses_hidden = self.stop_rule is not None and self.stop_rule.uses_hidden_state
        return logits, (self.lm.features.rows[-1] if uses_hidden and self.lm.features is not None else None)

    def observe(self, feedback: StepFeedback) -> None:
        self.crop(self._context_length + feedback.num_accepted)

    def crop(self, keep: int) -> None:
        """Keep at most the first `keep` context tokens in the drafter's cache."""
        assert self.lm is not None
        self.lm.rollback(min(self.lm.cached_length, keep))
