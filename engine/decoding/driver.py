"""The decoding driver: the ONE loop every strategy runs, yielding a `StepEvent` per draft-verify step.

A `Run` owns one generation's state: the tokens, the target's KV cache, the detokenizer, the token
budget, the random generator and the pause-aware engine clock. A strategy contributes a `Stepper`
(`start` a run, then per step: draft and verify, returning a typed `StepOutcome`; after the commit,
`settle` the caches and tell the proposer and the length policy what happened). The driver commits
the outcome, assembles the StepEvent (in one place) and yields it:

    run = Run(...)                       # prefill the prompt but its last token
    loop:
        outcome = stepper.step(run)      # draft, verify: accepted tokens + the target's own token
        committed = run.commit(outcome)  # append, cut at EOS / budget / window
        stepper.settle(run, outcome)     # roll caches back to the accepted prefix, learn (unless stopping)
        yield run.event(outcome, ...)

Steppers: chain (engine.decoding.chain; the autoregressive baseline is a chain with no proposer, so
baseline and speculation share every line that matters for speed and for correctness), tree
(engine.decoding.tree) and PEARL (engine.decoding.pearl, with its second worker).

Target cache convention (as in transformers' assisted generation): the target's KV cache holds
every committed token except the last one; each step feeds [last, d1..dk] in ONE forward pass
and gets k + 1 next-token distributions. After the verdict the cache is cropped to
(old context + accepted drafts); the recovered/bonus token becomes the new "last".
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from engine.decoding.detokenize import IncrementalDetokenizer
from engine.decoding.draft_tree import TreeVerdict
from engine.decoding.verification import ChainVerdict
from engine.drafting.token_lattice import LatticeDraft
from engine.errors import PromptError
from engine.events import (
    DraftedToken,
    LatticeColumn,
    LengthDecision,
    NewToken,
    OutputToken,
    PhaseTimings,
    StepEvent,
    StepFeedback,
    TokenCandidate,
    TreeNode,
    WorkerPhase,
)
from engine.loading.causal_lm import CachedCausalLM, FeatureTap
from engine.loading.models import LoadedModel
from engine.sampling import SamplingConfig

TOP_CANDIDATES = 5  # how many of the target's best tokens each event records per position


@dataclass(frozen=True)
class StepOutcome:
    """What one step drafted and what verification kept; the driver turns it into a StepEvent.

    "Nothing drafted" is a verdict like any other: `verdict.next_kind == "baseline"`.
    """

    decision: LengthDecision
    draft: tuple[DraftedToken, ...]  # the proposal with verdicts (a tree's nodes below the root, position = depth - 1)
    accepted: tuple[int, ...]  # the accepted drafted token ids, in order
    verdict: ChainVerdict | TreeVerdict  # next_token / next_kind: the target's own token
    output: OutputToken
    drafted_at: float  # engine clock: drafting (on the critical path) ended, verification began
    verified_at: float  # engine clock: verification ended
    phases: tuple[WorkerPhase, ...]  # who worked when (empty when nothing was drafted)
    proposer_info: dict[str, Any] = field(default_factory=dict)
    tree: tuple[TreeNode, ...] = ()
    lattice: tuple[LatticeColumn, ...] = ()
    feedback: StepFeedback | None = None  # what the proposer and policy learn (None: nothing to learn)
    last_step_info: dict[str, Any] | None = None  # proposer_info instead, if this step ends the run (PEARL)


class Run:
    """One generation's state: tokens, the target's cache, detokenizer, budget, random generator, clock."""

    def __init__(self, target: LoadedModel, sampling: SamplingConfig, prompt_ids: list[int], max_new_tokens: int,
                 features: FeatureTap | None = None):
        self.sampling = sampling
        self.window = target.context_window
        self.eos_ids = target.eos_token_ids
        self.max_new_tokens = max_new_tokens
        self.generator = sampling.make_generator()
        self.detok = IncrementalDetokenizer(target.tokenizer, prompt_ids)
        self.target = CachedCausalLM(target.model, features)  # features: what feature-level draft heads read
        self.tokens = list(prompt_ids)
        self.produced = 0
        self.step = 0
        self._origin = time.perf_counter()  # engine clock zero; pushed forward by the time paused at `yield`
        self.step_started = 0.0
        # Prefill every prompt token but the last: the first step feeds the last one.
        self.prefill_forwards = 0
        if len(self.tokens) > 1:
            self.target.forward(self.tokens[:-1])
            self.prefill_forwards = 1

    def clock(self) -> float:
        """Engine time: seconds since the run began, without the time the consumer held it paused."""
        return time.perf_counter() - self._origin

    @property
    def budget(self) -> int:
        """Tokens this step may still add (accepted + the target's own token must fit)."""
        return min(self.max_new_tokens - self.produced, self.window - len(self.tokens))

    def commit(self, outcome: StepOutcome) -> tuple[list[int], list[str], str | None]:
        """Append the accepted drafted tokens and the verdict's token, cut at EOS and the budget.

        Returns (committed ids, their kinds, stop reason or None).
        """
        budget = self.max_new_tokens - self.produced
        kinds = ["accepted"] * len(outcome.accepted) + [outcome.verdict.next_kind]
        committed = list(outcome.accepted) + [outcome.verdict.next_token]
        stop_reason = None
        for i, token in enumerate(committed):
            if token in self.eos_ids:
                committed, kinds, stop_reason = committed[: i + 1], kinds[: i + 1], "eos"
                break
        self.tokens.extend(committed)
        self.produced += len(committed)
        if stop_reason is None and len(committed) >= budget:
            stop_reason = "max_new_tokens"
        elif stop_reason is None and len(self.tokens) >= self.window:
            stop_reason = "context_window"
        return committed, kinds, stop_reason

    def event(self, outcome: StepOutcome, context_length: int, committed: list[int], kinds: list[str],
              stop_reason: str | None) -> StepEvent:
        now = self.clock()
        return StepEvent(
            index=self.step,
            context_length=context_length,
            decision=outcome.decision,
            draft=outcome.draft,
            output=outcome.output,
            new_tokens=tuple(NewToken(t, self.detok.push(t), kind) for t, kind in zip(committed, kinds)),
            target_forwards=1 + (self.prefill_forwards if self.step == 0 else 0),  # the prefill counts in step 0
            timings=PhaseTimings(
                draft_s=outcome.drafted_at - self.step_started,
                verify_s=outcome.verified_at - outcome.drafted_at,
                overhead_s=now - outcome.verified_at,
                start_s=self.step_started,
                end_s=now,
                phases=outcome.phases,
            ),
            stop_reason=stop_reason,
            proposer_info=outcome.proposer_info if stop_reason is None or outcome.last_step_info is None
            else outcome.last_step_info,
            tree=outcome.tree,
            lattice=outcome.lattice,
        )

    def paused(self, seconds: float) -> None:
        self._origin += seconds


class Stepper(Protocol):
    """One strategy's step: draft and verify. Created per run (it may keep state between steps)."""

    def step(self, run: Run) -> StepOutcome:
        """Draft within `run.budget - 1` tokens, verify in one target pass, return the outcome."""

    def settle(self, run: Run, outcome: StepOutcome, context_length: int) -> None:
        """The run continues: roll the caches back to the committed prefix and learn from the verdict."""

    def close(self) -> None:
        """The run ended (or its consumer stopped it): release workers."""


class Decoder:
    """Target + sampling settings + a way to make each run's stepper; `generate` is the one loop.

    `features`: a tap that receives the target's features from every pass (prefill and verification),
    shared with a proposer that drafts from them (EAGLE, Medusa); None when nothing reads them.
    """

    def __init__(self, target: LoadedModel, sampling: SamplingConfig = SamplingConfig(),
                 features: FeatureTap | None = None):
        self.target = target
        self.sampling = sampling
        self.features = features

    def stepper(self, run: Run) -> Stepper:
        raise NotImplementedError

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
        run = Run(self.target, self.sampling, prompt_ids, max_new_tokens, self.features)
        with contextlib.closing(self.stepper(run)) as stepper:
            yield from self._loop(run, stepper)

    def _loop(self, run: Run, stepper: Stepper) -> Iterator[StepEvent]:
        while True:
            run.step_started = run.clock()
            # 1. draft and verify (the strategy's part)
            outcome = stepper.step(run)
            # 2. commit accepted + recovered/bonus/baseline, cut at EOS and the token budget
            context_length = len(run.tokens)
            committed, kinds, stop_reason = run.commit(outcome)
            # 3. roll the caches back to the committed prefix; the proposer and the policy learn
            if stop_reason is None:
                stepper.settle(run, outcome, context_length)
            event = run.event(outcome, context_length, committed, kinds, stop_reason)
            # 4. hand the event over; time suspended here is the consumer's, not the engine's
            yielded_at = time.perf_counter()
            yield event
            run.paused(time.perf_counter() - yielded_at)
            if stop_reason is not None:
                return
            run.step += 1


# --------------------------------------------------------------------------- event parts


def alternating_phases(started: float, drafted_at: float, verified_at: float) -> tuple[WorkerPhase, ...]:
    """Plain speculation's timeline: the drafter drafts, then the target verifies."""
    return (WorkerPhase("drafter", "draft", started, drafted_at), WorkerPhase("target", "verify", drafted_at, verified_at))




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
    verdict: ChainVerdict | TreeVerdict,
    target_row: torch.Tensor,  # [vocab] the target's distribution at the output position
    detok: IncrementalDetokenizer,
    sampling: SamplingConfig,
) -> OutputToken:
    # Greedy draws from a one-hot; show the target's softmax there instead, which says more.
    dist = target_row if sampling.greedy else verdict.next_distribution
    return OutputToken(
        token_id=verdict.next_token,
        text=detok.piece(verdict.next_token),
        kind=verdict.next_kind,
        prob=float(dist[verdict.next_token]),
        residual_top=top_candidates(dist, detok),
    )
