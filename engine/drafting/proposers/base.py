"""The proposer seam (after transformers' candidate generator): propose, then learn from the verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from engine.events import StepFeedback
from engine.sampling import SamplingConfig

if TYPE_CHECKING:
    from engine.drafting.token_lattice import LatticeDraft


@dataclass(frozen=True)
class Proposal:
    token_ids: list[int]  # the drafted chain, k ids (possibly fewer than asked, possibly none)
    draft_probs: torch.Tensor | None  # [k, vocab] the drafter's (transformed) distributions; None = no probabilities
    # What drove this proposal, for the step inspector and the log (JSON-serialisable; see
    # engine.events.StepEvent.proposer_info for the conventional keys).
    info: dict[str, Any] = field(default_factory=dict)
    # Diffusion drafters: the token lattice the chain was taken from (engine.drafting.token_lattice.LatticeDraft)
    lattice: LatticeDraft | None = None
    # Tokens the drafter generated before its own cut (diffusion: up to its first EOS); None = it does not say
    generated: int | None = None


class Proposer(Protocol):
    def start(self, prompt_ids: list[int]) -> None:
        """Reset per-run state before the first step."""

    def propose(self, context: list[int], k: int, sampling: SamplingConfig, generator: torch.Generator) -> Proposal:
        """Draft up to k tokens continuing `context` (prompt + output so far)."""

    def observe(self, feedback: StepFeedback) -> None:
        """What the verifier did with the last proposal (it kept the first feedback.num_accepted tokens)."""
