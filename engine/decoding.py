"""The decoding loop: one generator that yields a `StepEvent` per draft-verify step.

The autoregressive baseline is the same loop with no proposer (every step drafts nothing and the
target adds one "baseline" token), so baseline and speculation share every line that matters
for speed and for correctness.

Target cache convention (as in transformers' assisted generation): the target's KV cache holds
every committed token except the last one; each step feeds [last, d1..dk] in ONE forward pass
and gets k + 1 next-token distributions. After the verdict the cache is cropped to
(old context + accepted drafts); the recovered/bonus token becomes the new "last".
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import torch

from .causal_lm import CachedCausalLM
from .detokenize import IncrementalDetokenizer
from .errors import PromptError
from .events import (
    DraftedToken,
    LatticeColumn,
    LengthDecision,
    NewToken,
    OutputToken,
    PhaseTimings,
    StepEvent,
    TokenCandidate,
    WorkerPhase,
)
from .models import LoadedModel
from .policies import ConstantLength, DraftLengthPolicy
from .proposers.base import Proposal, Proposer
from .sampling import SamplingConfig, check_finite, logits_to_probs
from .draft_tree import TreeVerdict
from .token_lattice import LatticeDraft
from .verification import ChainVerdict, verify_greedy, verify_rejection_sampling

TOP_CANDIDATES = 5  # how many of the target's best tokens each event records per position


class SpeculativeDecoder:
    """Target + optional proposer + draft-length policy + sampling settings.

    `proposer=None` is the autoregressive baseline.
    """

    def __init__(
        self,
        target: LoadedModel,
        proposer: Proposer | None = None,
        policy: DraftLengthPolicy | None = None,
        sampling: SamplingConfig = SamplingConfig(),
    ):
        self.target = target
        self.proposer = proposer
        self.policy = policy or ConstantLength(1)
        self.sampling = sampling

    def check_prompt(self, prompt_ids: list[int]) -> None:
        window = self.target.context_window
        if not prompt_ids:
            raise PromptError("the prompt is empty")
        if len(prompt_ids) >= window:
            raise PromptError(
                f"the prompt has {len(prompt_ids)} tokens but the model's context window is {window}; "
                "shorten the prompt"
            )

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> Iterator[StepEvent]:
        """Yield one StepEvent per step until EOS, max_new_tokens or the context window.

        Closing the generator (a consumer that stops iterating) stops the run between steps.
        """
        self.check_prompt(prompt_ids)
        sampling, window = self.sampling, self.target.context_window
        eos_ids = self.target.eos_token_ids
        generator = sampling.make_generator()
        detok = IncrementalDetokenizer(self.target.tokenizer, prompt_ids)
        target = CachedCausalLM(self.target.model)
        if self.proposer is not None:
            self.proposer.start(list(prompt_ids))
        tokens = list(prompt_ids)
        run_start = time.perf_counter()
        paused = 0.0  # time spent suspended at `yield` (the consumer's work) is not the engine's time
        # Prefill every prompt token but the last: the first step feeds the last one.
        prefill_forwards = 0
        if len(tokens) > 1:
            target.forward(tokens[:-1])
            prefill_forwards = 1
        produced = 0
        step = 0
        while True:
            step_start = time.perf_counter()
            # 1. how much to draft: the policy's choice, clamped so accepted + 1 fits the budget
            budget = min(max_new_tokens - produced, window - len(tokens))
            requested, reason, inputs = self.policy.decide() if self.proposer is not None else (0, "autoregressive: no draft", {})
            allowed = max(0, min(requested, budget - 1))
            if allowed < requested and self.proposer is not None:
                reason = f"{reason}; clamped to {allowed} by the remaining budget of {budget} tokens"
            decision = LengthDecision(requested, allowed, reason, dict(inputs))

            # 2. draft
            proposal = Proposal([], None)
            if self.proposer is not None and allowed > 0:
                proposal = self.proposer.propose(tokens, allowed, sampling, generator)
            draft = proposal.token_ids[:allowed]
            draft_probs = None if proposal.draft_probs is None else proposal.draft_probs[: len(draft)]
            drafted_at = time.perf_counter()

            # 3. verify: one target forward pass over [last, d1..dk] -> k + 1 distributions
            target_probs, verdict = verify_chain(target, tokens[-1], draft, draft_probs, sampling, generator)
            verified_at = time.perf_counter()

            # 4. commit accepted + recovered/bonus, cut at EOS and the token budget
            n = verdict.num_accepted
            context_length = len(tokens)
            committed, kinds, stop_reason = commit(tokens, draft[:n], verdict, bool(draft), eos_ids,
                                                   max_new_tokens - produced, window)
            produced += len(committed)

            # 5. roll back: target keeps context + accepted drafts; the proposer crops to match
            if stop_reason is None:
                target.rollback(context_length + n)
                self.policy.update(len(draft), n)
                if self.proposer is not None and draft:
                    self.proposer.observe(n)

            event = StepEvent(
                index=step,
                context_length=context_length,
                decision=decision,
                draft=drafted_tokens(draft, draft_probs, target_probs, verdict, detok, sampling),
                output=output_token(verdict, target_probs[n], bool(draft), detok, sampling),
                new_tokens=tuple(NewToken(t, detok.push(t), kind) for t, kind in zip(committed, kinds)),
                target_forwards=1 + (prefill_forwards if step == 0 else 0),  # the prefill counts in step 0
                timings=step_timings(step_start, drafted_at, verified_at, run_start + paused, bool(draft)),
                stop_reason=stop_reason,
                proposer_info=proposal.info,
                lattice=lattice_columns(proposal.lattice, draft, detok),
            )
            yielded_at = time.perf_counter()
            yield event
            paused += time.perf_counter() - yielded_at
            if stop_reason is not None:
                return
            step += 1


def step_timings(step_start: float, drafted_at: float, verified_at: float, origin: float, drafted: bool) -> PhaseTimings:
    """A draft-then-verify step's timings from perf_counter readings; `origin` is the engine clock's zero
    (run start + time paused at yields). Drafting and verifying alternate on one worker each."""
    now = time.perf_counter()
    return PhaseTimings(
        draft_s=drafted_at - step_start,
        verify_s=verified_at - drafted_at,
        overhead_s=now - verified_at,
        start_s=step_start - origin,
        end_s=now - origin,
        phases=(
            WorkerPhase("drafter", "draft", step_start - origin, drafted_at - origin),
            WorkerPhase("target", "verify", drafted_at - origin, verified_at - origin),
        ) if drafted else (),
    )


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


def commit(
    tokens: list[int], accepted: list[int], verdict: ChainVerdict | TreeVerdict, drafted: bool,
    eos_ids: set[int], budget: int, window: int,
) -> tuple[list[int], list[str], str | None]:
    """Append the accepted drafted tokens and the verdict's token to `tokens`, cut at EOS and the budget.

    `drafted`: whether anything was drafted this step (else the verdict's token is a baseline token).
    Returns (committed ids, their kinds, stop reason or None). `budget`: tokens the run may still add.
    """
    kinds = ["accepted"] * len(accepted) + [verdict.next_kind if drafted else "baseline"]
    committed = list(accepted) + [verdict.next_token]
    stop_reason = None
    for i, token in enumerate(committed):
        if token in eos_ids:
            committed, kinds, stop_reason = committed[: i + 1], kinds[: i + 1], "eos"
            break
    tokens.extend(committed)
    if stop_reason is None and len(committed) >= budget:
        stop_reason = "max_new_tokens"
    elif stop_reason is None and len(tokens) >= window:
        stop_reason = "context_window"
    return committed, kinds, stop_reason


def top_candidates(dist: torch.Tensor, detok: IncrementalDetokenizer) -> tuple[TokenCandidate, ...]:
    probs, ids = torch.topk(dist, min(TOP_CANDIDATES, dist.shape[-1]))
    return tuple(TokenCandidate(int(i), detok.piece(int(i)), float(p)) for p, i in zip(probs, ids) if p > 0)


def drafted_tokens(
    draft: list[int],
    draft_probs: torch.Tensor | None,  # [k, vocab]
    target_probs: torch.Tensor,  # [k + 1, vocab]
    verdict: ChainVerdict,
    detok: IncrementalDetokenizer,
    sampling: SamplingConfig,
) -> tuple[DraftedToken, ...]:
    out = []
    for i, token in enumerate(draft):
        checked = i <= verdict.num_accepted and i < len(verdict.accept_probs)
        verdict_name = "accepted" if i < verdict.num_accepted else ("rejected" if checked else "unchecked")
        out.append(
            DraftedToken(
                position=i,
                token_id=token,
                text=detok.piece(token),
                draft_prob=None if draft_probs is None else float(draft_probs[i, token]),
                target_prob=float(target_probs[i, token]) if checked else None,
                accept_prob=verdict.accept_probs[i] if checked else None,
                uniform=verdict.uniforms[i] if checked and not sampling.greedy else None,
                verdict=verdict_name,
                target_top=top_candidates(target_probs[i], detok) if checked else (),
            )
        )
    return tuple(out)


def lattice_columns(lattice_draft: LatticeDraft | None, draft: list[int],
                    detok: IncrementalDetokenizer) -> tuple[LatticeColumn, ...]:
    """A diffusion step's lattice for the event: every block position's candidates, and the path over the draft."""
    if lattice_draft is None:
        return ()
    lattice, columns = lattice_draft.lattice, []
    for i in range(lattice.length):
        ids, probs = lattice.candidate_ids[i].tolist(), lattice.candidate_probs[i].tolist()
        candidates = tuple(TokenCandidate(t, detok.piece(t), p) for t, p in zip(ids, probs) if p > 0)
        if i >= len(draft):
            columns.append(LatticeColumn(i, candidates))
            continue
        token = draft[i]
        causal = lattice_draft.causal_logprobs[i] if i < len(lattice_draft.causal_logprobs) else None
        columns.append(LatticeColumn(
            i, candidates, token, detok.piece(token), lattice_draft.path_probs[i],
            next((r for r, c in enumerate(candidates) if c.token_id == token), None),
            None if causal is None else math.exp(causal),
        ))
    return tuple(columns)


def output_token(
    verdict: ChainVerdict,
    target_row: torch.Tensor,  # [vocab] the target's distribution at the output position
    drafted: bool,
    detok: IncrementalDetokenizer,
    sampling: SamplingConfig,
) -> OutputToken:
    # Greedy draws from a one-hot; show the target's softmax there instead, which says more.
    dist = target_row if sampling.greedy else verdict.next_distribution
    return OutputToken(
        token_id=verdict.next_token,
        text=detok.piece(verdict.next_token),
        kind=verdict.next_kind if drafted else "baseline",
        prob=float(dist[verdict.next_token]),
        residual_top=top_candidates(dist, detok),
    )
