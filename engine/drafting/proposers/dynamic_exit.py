"""DEL-style dynamic early exit: pick the exit layer and the draft length per step from tracked acceptance.

Self-speculation drafts with the target's first layers (plus a small trained adapter, Kangaroo
style). A shallow exit drafts cheaply but is accepted less often; a deep exit is accepted more
often but costs more. DEL ("Dynamic Exit Layer") tracks, per exit layer, how often its drafts are
accepted, and before each step chooses the (exit layer, draft length K) pair with the highest
expected **tokens per layer** (TPL): tokens produced per decoder-layer evaluation, the cost unit
that makes a 4-layer draft comparable with a 30-layer verification.

With a per-token acceptance rate a (the chance a drafted token is accepted, given its prefix was),
a step that drafts K tokens from exit layer l yields on average (1 - a^(K+1)) / (1 - a) tokens
(accepted drafts plus the target's own token) and costs K * (l + adapter layers) drafter layers plus
one verification pass through all L target layers:

    TPL(l, K) = (1 - a_l^(K+1)) / (1 - a_l) / (K * (l + adapter) + L)

Worked example, L = 30, adapter = 1: layer 4 with a = 0.5 and K = 2 gives 1.75 / 40 = 0.044;
layer 8 with a = 0.7 and K = 4 gives 2.77 / 66 = 0.042, so layer 4 is chosen; if the tracked
acceptance of layer 8 rises to 0.8 (3.36 / 66 = 0.051) the choice moves to layer 8.

Tracking: each exit layer keeps Beta-style counts of accepted tokens and of rejections (a step
that accepted n of K drafted tokens adds n successes and, if n < K, one failure). Layers start
from a prior (the held-out agreement measured when the adapters were trained, worth a few
pseudo-observations) and an optimism bonus that shrinks with observations keeps rarely tried
layers in play. The rule depends only on past verdicts, so verification stays lossless.

One object is both the proposer and the draft-length policy (the decoding loop asks `decide()`
first, then `propose()`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from engine.events import StepFeedback
from engine.sampling import SamplingConfig
from engine.drafting.proposers.base import Proposal
from engine.drafting.proposers.draft_model import DraftModelProposer

PRIOR_WEIGHT = 4.0  # pseudo-observations behind each layer's prior acceptance
EXPLORATION = 0.5  # optimism bonus scale: bonus = EXPLORATION * sqrt(ln(total) / observations)


def expected_tokens(a: float, k: int) -> float:
    """E[tokens per step] for K drafted tokens at per-token acceptance a: (1 - a^(K+1)) / (1 - a)."""
    if a >= 1.0:
        return float(k + 1)
    return (1.0 - a ** (k + 1)) / (1.0 - a)


@dataclass
class ExitLayerStats:
    layer: int
    prior: float  # acceptance expected before any observation (held-out agreement)
    accepted: float = 0.0
    rejected: float = 0.0
    steps: int = 0

    @property
    def observations(self) -> float:
        return self.accepted + self.rejected

    @property
    def acceptance(self) -> float:
        """Posterior-mean per-token acceptance: the prior blended with what was observed."""
        return (self.prior * PRIOR_WEIGHT + self.accepted) / (PRIOR_WEIGHT + self.observations)


class DynamicExitProposer:
    """Chooses among early-exit drafters (one per exit layer) and the draft length, every step.

    `drafters` maps exit layer -> drafter model (the target's first layers + adapter); `priors`
    maps exit layer -> prior acceptance; `target_layers` is L; `adapter_layers` is the cost of
    the adapter in layer units.
    """

    stop_rule = None  # as its own length policy it chooses K (and the exit layer) before drafting

    def __init__(
        self,
        drafters: dict[int, torch.nn.Module],
        priors: dict[int, float],
        target_layers: int,
        max_k: int,
        adapter_layers: int = 1,
        stop_below: float = 0.0,
    ):
        self.proposers = {layer: DraftModelProposer(model, stop_below) for layer, model in sorted(drafters.items())}
        self.priors = priors
        self.target_layers = target_layers
        self.max_k = max_k
        self.adapter_layers = adapter_layers
        self.stats: dict[int, ExitLayerStats] = {}
        self.chosen: int = next(iter(self.proposers))
        self._last_info: dict[str, Any] = {}

    # -- proposer -------------------------------------------------------------------------------
    def start(self, prompt_ids: list[int]) -> None:
        self.stats = {layer: ExitLayerStats(layer, self.priors.get(layer, 0.5)) for layer in self.proposers}
        for proposer in self.proposers.values():
            proposer.start(prompt_ids)

    def propose(self, context: list[int], k: int, sampling: SamplingConfig, generator: torch.Generator) -> Proposal:
        # Layers not chosen last time have stale caches; DraftModelProposer catches up on the missing context.
        proposal = self.proposers[self.chosen].propose(context, k, sampling, generator)
        info = {**proposal.info, **self._last_info}  # the double early exit's note, then the layer choice
        if proposal.info.get("summary"):
            info["summary"] = f"{self._last_info['summary']}; {proposal.info['summary']}"
        return Proposal(proposal.token_ids, proposal.draft_probs, info)

    def observe(self, feedback: StepFeedback) -> None:
        self.proposers[self.chosen].observe(feedback)

    # -- draft-length policy ----------------------------------------------------------------------
    def _score(self, stats: ExitLayerStats, total: float) -> tuple[float, int, float]:
        """(optimistic TPL, best K, acceptance used) for one exit layer."""
        bonus = EXPLORATION * math.sqrt(math.log(total + 1.0) / (stats.observations + 1.0))
        a = min(0.99, stats.acceptance + bonus)
        cost_per_draft = stats.layer + self.adapter_layers
        best = max(
            range(1, self.max_k + 1),
            key=lambda k: expected_tokens(a, k) / (k * cost_per_draft + self.target_layers),
        )
        return expected_tokens(a, best) / (best * cost_per_draft + self.target_layers), best, a

    def decide(self) -> tuple[int, str, dict[str, Any]]:
        total = sum(s.observations for s in self.stats.values())
        scores = {layer: self._score(s, total) for layer, s in self.stats.items()}
        self.chosen = max(scores, key=lambda layer: scores[layer][0])
        tpl, k, a = scores[self.chosen]
        s = self.stats[self.chosen]
        others = ", ".join(f"layer {layer}: {v[0]:.3f}" for layer, v in scores.items() if layer != self.chosen)
        reason = (
            f"exit layer {self.chosen} (acceptance {s.acceptance:.2f} over {s.observations:.0f} tokens, "
            f"optimistic {a:.2f}); K = {k} maximises tokens per layer {tpl:.3f}"
            + (f" (best K elsewhere: {others})" if others else "")
        )
        inputs = {"exit_layer": self.chosen, "acceptance": round(s.acceptance, 3), "optimistic": round(a, 3),
                  "tokens_per_layer": round(tpl, 4)}
        self._last_info = {
            "summary": f"drafting from exit layer {self.chosen} with K = {k}",
            "exit_layer": self.chosen,
            "tables": [{
                "title": "tracked acceptance per exit layer",
                "columns": ["exit layer", "prior", "accepted", "rejections", "acceptance", "best K", "tokens/layer"],
                "rows": [
                    [layer, st.prior, int(st.accepted), int(st.rejected), st.acceptance, scores[layer][1], scores[layer][0]]
                    for layer, st in self.stats.items()
                ],
            }],
        }
        return k, reason, inputs

    def update(self, feedback: StepFeedback) -> None:
        drafted, accepted = feedback.drafted, feedback.num_accepted
        if drafted == 0:
            return
        s = self.stats[self.chosen]
        s.accepted += accepted
        s.rejected += 1 if accepted < drafted else 0
        s.steps += 1
