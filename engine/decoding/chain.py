"""Chain steps for the decoding driver: draft a chain of the length policy's choice, verify it in one target pass.

The autoregressive baseline is a chain decoder with no proposer: every step drafts nothing and the
target adds one "baseline" token.
"""

from __future__ import annotations

import torch

from engine.decoding.driver import Decoder, Run, StepOutcome, alternating_phases, drafted_tokens, lattice_columns, output_token
from engine.decoding.verification import ChainVerdict, verify_greedy, verify_rejection_sampling
from engine.drafting.policies import ConstantLength, DraftLengthPolicy
from engine.drafting.proposers.base import Proposal, Proposer
from engine.events import LengthDecision, StepFeedback
from engine.loading.causal_lm import CachedCausalLM, FeatureTap
from engine.loading.models import LoadedModel
from engine.sampling import SamplingConfig, check_finite, logits_to_probs


class SpeculativeDecoder(Decoder):
    """Target + optional chain proposer + draft-length policy + sampling settings.

    `proposer=None` is the autoregressive baseline.
    """

    def __init__(
        self,
        target: LoadedModel,
        proposer: Proposer | None = None,
        policy: DraftLengthPolicy | None = None,
        sampling: SamplingConfig = SamplingConfig(),
        features: FeatureTap | None = None,
    ):
        super().__init__(target, sampling, features)
        self.proposer = proposer
        self.policy = policy or ConstantLength(1)

    def stepper(self, run: Run) -> ChainStepper:
        if self.proposer is not None:
            self.proposer.start(list(run.tokens))
        return ChainStepper(self.proposer, self.policy)


class ChainStepper:
    """Draft a chain of the policy's length, verify it in one target pass."""

    def __init__(self, proposer: Proposer | None, policy: DraftLengthPolicy):
        self.proposer = proposer
        self.policy = policy

    def step(self, run: Run) -> StepOutcome:
        sampling, detok = run.sampling, run.detok
        # 1. how much to draft: the policy's choice, clamped so accepted + 1 fits the budget
        budget = run.budget
        if self.proposer is None:
            requested, reason, inputs = 0, "autoregressive: no draft", {}
        else:
            requested, reason, inputs = self.policy.decide()
        allowed = max(0, min(requested, budget - 1))
        if allowed < requested:
            reason = f"{reason}; clamped to {allowed} by the remaining budget of {budget} tokens"
        decision = LengthDecision(requested, allowed, reason, dict(inputs))

        # 2. draft
        proposal = Proposal([], None)
        if self.proposer is not None and allowed > 0:
            proposal = self.proposer.propose(run.tokens, allowed, sampling, run.generator)
        draft = proposal.token_ids[:allowed]
        draft_probs = None if proposal.draft_probs is None else proposal.draft_probs[: len(draft)]
        drafted_at = run.clock()

        # 3. verify: one target forward pass over [last, d1..dk] -> k + 1 distributions
        target_probs, verdict = verify_chain(run.target, run.tokens[-1], draft, draft_probs, sampling, run.generator)
        verified_at = run.clock()
        n = verdict.num_accepted
        return StepOutcome(
            decision=decision,
            draft=drafted_tokens(draft, draft_probs, target_probs, verdict, detok, sampling),
            accepted=tuple(draft[:n]),
            verdict=verdict,
            output=output_token(verdict, target_probs[n], detok, sampling),
            drafted_at=drafted_at,
            verified_at=verified_at,
            phases=alternating_phases(run.step_started, drafted_at, verified_at) if draft else (),
            proposer_info=proposal.info,
            lattice=lattice_columns(proposal.lattice, draft, detok),
            feedback=StepFeedback(len(draft), n, tuple(draft[:n]), proposal.generated),
        )

    def settle(self, run: Run, outcome: StepOutcome, context_length: int) -> None:
        # the target keeps context + accepted drafts; the proposer crops to match
        feedback = outcome.feedback
        run.target.rollback(context_length + feedback.num_accepted)
        self.policy.update(feedback)
        if self.proposer is not None and feedback.drafted:
            self.proposer.observe(feedback)

    def close(self) -> None:
        pass


def verify_chain(
    target: CachedCausalLM,
    last: int,
    draft: list[int],
    draft_probs: torch.Tensor | None,  # [k, vocab]
    sampling: SamplingConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, ChainVerdict]:
    """One target forward pass over [last, d1..dk]; returns the target's distributions [k + 1, vocab] and the verdict."""
    logits = target.forward([last] + draft, keep_logits=len(draft) + 1)  # [k + 1, vocab]
    check_finite(logits, "target")
    target_probs = logits_to_probs(logits, sampling)  # [k + 1, vocab]
    if sampling.greedy:
        return target_probs, verify_greedy(draft, logits)
    return target_probs, verify_rejection_sampling(draft, draft_probs, target_probs, generator)
