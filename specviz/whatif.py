"""What-if and fork: re-run the engine from the context of one recorded step (no Gradio here).

A run's step i was decided from a token context: the prompt's ids and every token of steps 0..i-1.
`step_context` rebuilds that context from the run's `RunSetup` and events (and checks its length against
the step's own `context_length`), so the real engine can be asked two questions about it:

- `what_if_k`: what one step of a fixed-K chain drafter would have done there, for K = 1..8 (the run's own
  chain strategy with a constant K, else `draft_model`): the draft with its verdicts, the tokens produced, the
  measured drafter and verification time. Under greedy decoding, where the draft equals a prefix of the
  recorded chain, the recorded step already answers the question (accepted = min(K, recorded accepted)); the
  report says so and checks the re-run agrees.
- `fork`: continue the same context with another strategy, and (for a fair side by side) with the run's own
  strategy again, one after the other with the same token budget. Under greedy decoding every lossless
  strategy must produce the same text.

Models come through `Runner.prepare` (so the runner's `RunLimits` apply); the rebuilt ids go straight to the
decoder's `generate`, never back through the chat template. Nothing here is logged.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from engine import (
    DraftedToken,
    NewToken,
    RunMetrics,
    SamplingConfig,
    SpecVizError,
    SpeculativeDecoder,
    StepEvent,
    StrategyConfig,
    encode_prompt,
    parse_strategy,
)
from engine.drafting.proposers.draft_model import DraftModelProposer
from engine.events import StepFeedback

from .runner import PreparedRun, RunRequest, Runner
from .traces import RunSetup

DEFAULT_MAX_K = 8  # what-if asks K = 1..max(DEFAULT_MAX_K, the recorded K)
TIMING_REPEATS = 2  # each K's step runs this often; the fastest counts (a shared CPU makes single timings noisy)
FALLBACK_STRATEGY = "draft_model"  # the chain drafter that stands in for strategies without a K (trees, PEARL, ar)


class WhatIfError(SpecVizError):
    """The run or step cannot be explored (no run, still streaming, unknown settings, a bad step)."""


# -- the run and its step ---------------------------------------------------------------------------------

def run_from_state(state: dict | None) -> tuple[RunSetup, list[StepEvent]]:
    """A RunView state's setup and events, or a WhatIfError saying why there is nothing to explore yet."""
    events = list((state or {}).get("events") or [])
    if not events:
        raise WhatIfError("no run to explore yet: run a prompt (or open one from History) first")
    if (state or {}).get("running"):
        raise WhatIfError("the run is still streaming: wait until it finishes (or press Stop), then try again")
    setup = (state or {}).get("setup")
    if not isinstance(setup, RunSetup):
        raise WhatIfError("this run's settings (prompt, strategy, sampling) are unknown, so its context cannot be "
                          "rebuilt")
    return setup, events


def check_step(events: Sequence[StepEvent], step: Any) -> int:
    """`step` as a valid index into `events`, or a WhatIfError for the person."""
    if not events:
        raise WhatIfError("no run to explore yet: run a prompt (or open one from History) first")
    try:
        index = int(step)
    except (TypeError, ValueError, OverflowError):
        raise WhatIfError(f"step must be a step number from 0 to {len(events) - 1}, got {step!r}") from None
    if isinstance(step, float) and index != step or not 0 <= index < len(events):
        raise WhatIfError(f"step must be a step number from 0 to {len(events) - 1}, got {step!r}")
    return index


def step_context(tokenizer, setup: RunSetup, events: Sequence[StepEvent], step: int) -> list[int]:
    """The token ids the run decided step `step` from: the encoded prompt, then every new token of the steps
    before it. A WhatIfError when that differs in length from what the step recorded (another tokenizer, an
    edited prompt: the context could not be rebuilt faithfully)."""
    step = check_step(events, step)
    # 1. the prompt as the run encoded it (chat template unless raw)
    ids = encode_prompt(tokenizer, setup.prompt, raw=setup.raw_prompt)
    # 2. every token committed before this step
    ids += [t.token_id for e in events[:step] for t in e.new_tokens]
    # 3. the step recorded how long its context was: a mismatch means the rebuild is not the run's context
    expected = events[step].context_length
    if len(ids) != expected:
        raise WhatIfError(f"cannot rebuild the context of step {step}: it had {expected} tokens, the rebuild has "
                          f"{len(ids)} (was the run made with another target or tokenizer?)")
    return ids


def tokens_before(events: Sequence[StepEvent], step: int) -> int:
    return sum(len(e.new_tokens) for e in events[:step])


# -- what if K = 1..8 -----------------------------------------------------------------------------------

def has_chain_k(strategy: StrategyConfig) -> bool:
    """A chain strategy whose draft length is a `k` field that a constant length policy can fix."""
    names = {f.name for f in dataclasses.fields(strategy)}
    return {"k", "length_policy"} <= names


def fixed_k_strategy(setup: RunSetup, k: int) -> tuple[StrategyConfig, bool]:
    """The chain strategy that drafts exactly `k` tokens at a step: the run's own with k=K and a constant length
    (True), else `draft_model` with k=K and the run's drafter where it has one (False)."""
    own = setup.strategy_config()
    if has_chain_k(own):
        max_k = max(k, getattr(own, "max_k", k))
        return dataclasses.replace(own, k=k, length_policy="constant", max_k=max_k), True
    params: dict[str, Any] = {"k": k, "length_policy": "constant", "max_k": max(k, 12)}
    if isinstance(setup.params.get("drafter"), str) and own.name not in ("cross_vocab", "diffusion"):
        params["drafter"] = setup.params["drafter"]
        params["vocab_trim"] = int(setup.params.get("vocab_trim") or 0)
    return parse_strategy(FALLBACK_STRATEGY, params), False


@dataclass(frozen=True)
class KOutcome:
    """One step of a fixed-K chain from the step's context, measured."""

    k: int
    draft: tuple[DraftedToken, ...]  # with verdicts (fewer than K when the run's remaining budget clamped it)
    new_tokens: tuple[NewToken, ...]  # accepted drafts then the target's own token
    target_forwards: int  # target passes of the step (the context's prefill not counted)
    draft_s: float
    verify_s: float
    step_s: float  # the whole step: drafting, verification and bookkeeping
    recorded_accepted: int | None = None  # what the recorded step already says (greedy, same draft prefix), else None
    agrees: bool | None = None  # the re-run matches that (None: the recorded step cannot answer)

    @property
    def accepted(self) -> int:
        return sum(1 for d in self.draft if d.verdict == "accepted")

    @property
    def produced(self) -> int:
        return len(self.new_tokens)

    @property
    def tokens_per_s(self) -> float | None:
        return self.produced / self.step_s if self.step_s > 0 else None


@dataclass(frozen=True)
class WhatIfReport:
    step: int
    context_length: int
    strategy: str  # the label of the chain strategy at K (with the K of the first outcome)
    own_strategy: bool  # the run's own strategy with a fixed K (False: draft_model stands in)
    run_strategy: str
    recorded: StepEvent
    recorded_k: int | None  # the recorded chain's drafted length (None: a tree step)
    budget: int  # tokens the run could still add at this step (clamps K to budget - 1)
    greedy: bool
    outcomes: tuple[KOutcome, ...]
    repeats: int  # each K's step ran this often; its fastest run is reported
    seconds: float  # wall time of the whole what-if (loading included)

    @property
    def checked(self) -> list[KOutcome]:
        """The outcomes the recorded step already answered."""
        return [o for o in self.outcomes if o.agrees is not None]

    @property
    def all_agree(self) -> bool | None:
        return all(o.agrees for o in self.checked) if self.checked else None


class WarmStartProposer:
    """A drafter model whose cache already holds the context but its last token when the step begins, as in the
    middle of a run; so the step's drafter time is one catch-up pass plus K - 1 drafting passes, not a prefill of
    the whole context. The warm-up happens in `start`, before the step's clock starts."""

    def __init__(self, inner: DraftModelProposer):
        self.inner = inner

    def start(self, prompt_ids: list[int]) -> None:
        self.inner.start(prompt_ids)
        if len(prompt_ids) > 1:
            # a throwaway one-token proposal over context[:-1], then "rejected at 0": the cache keeps context[:-1]
            self.inner.propose(prompt_ids[:-1], 1, SamplingConfig(), torch.Generator())
            self.inner.observe(StepFeedback(drafted=1, num_accepted=0))

    def propose(self, context, k, sampling, generator):
        return self.inner.propose(context, k, sampling, generator)

    def observe(self, feedback: StepFeedback) -> None:
        self.inner.observe(feedback)


def one_step(prepared: PreparedRun, context: list[int], budget: int) -> StepEvent:
    """One step of the prepared decoder from `context` (the target prefills context[:-1] before the step)."""
    decoder = prepared.decoder
    # a drafter model starts warm, as it would be mid-run (other proposers start as they are)
    if isinstance(decoder, SpeculativeDecoder) and isinstance(decoder.proposer, DraftModelProposer):
        decoder.proposer = WarmStartProposer(decoder.proposer)
    steps = decoder.generate(context, budget)
    try:
        return next(steps)
    finally:
        steps.close()


def recorded_answer(recorded: StepEvent, event: StepEvent, greedy: bool) -> tuple[int | None, bool | None]:
    """What the recorded step says this re-run must accept, and whether it did: only under greedy decoding, for a
    chain step whose drafted tokens begin with this re-run's whole draft (the target's verdict on them is then
    already known: accepted = min(drafted, recorded accepted), and the same tokens come out)."""
    drafted = [d.token_id for d in event.draft]
    recorded_ids = [d.token_id for d in recorded.draft]
    if not greedy or recorded.tree or len(drafted) > len(recorded_ids) or drafted != recorded_ids[: len(drafted)]:
        return None, None
    expected = min(len(drafted), recorded.num_accepted)
    produced = [t.token_id for t in event.new_tokens]
    recorded_new = [t.token_id for t in recorded.new_tokens]
    return expected, event.num_accepted == expected and produced == recorded_new[: len(produced)]


def default_ks(recorded: StepEvent) -> list[int]:
    recorded_k = 0 if recorded.tree else recorded.num_drafted
    return list(range(1, max(DEFAULT_MAX_K, recorded_k) + 1))


def setup_request(setup: RunSetup, strategy: StrategyConfig, max_new_tokens: int, device: str) -> RunRequest:
    """A request with the run's prompt, sampling, target and document, and another strategy and budget."""
    return RunRequest(prompt=setup.prompt, strategy=strategy, sampling=setup.sampling(), max_new_tokens=max_new_tokens,
                      target=setup.target, raw=setup.raw_prompt, source="whatif", document=setup.document,
                      device=device)


def what_if_k(runner: Runner, setup: RunSetup, events: Sequence[StepEvent], step: Any,
              ks: Sequence[int] | None = None, device: str = "cpu", repeats: int = TIMING_REPEATS) -> WhatIfReport:
    """At step `step` of the run: one step of a fixed-K chain for each K in `ks` (default 1..max(8, recorded K)),
    each timed as the fastest of `repeats` identical re-runs."""
    started = time.perf_counter()
    step = check_step(events, step)
    recorded = events[step]
    ks = list(ks) if ks is not None else default_ks(recorded)
    if not ks or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in ks):
        raise WhatIfError(f"K must be whole numbers from 1 up, got {ks!r}")
    if repeats < 1:
        raise WhatIfError(f"repeats must be at least 1, got {repeats!r}")
    # 1. the run's remaining budget at this step (the what-if step is clamped by it, as the run's step was)
    budget = setup.max_new_tokens - tokens_before(events, step)
    if budget < 1:
        raise WhatIfError(f"step {step} lies beyond the run's max new tokens ({setup.max_new_tokens})")
    context: list[int] | None = None
    outcomes = []
    own, label = False, ""
    for k in ks:
        # 2. the chain strategy at this K, prepared (validated, models loaded) through the runner
        strategy, own = fixed_k_strategy(setup, k)
        label = label or strategy.label()
        prepared = runner.prepare(setup_request(setup, strategy, budget, device))
        # 3. the step's context, rebuilt once with the target's tokenizer and checked
        if context is None:
            context = step_context(prepared.tokenizer, setup, events, step)
        # 4. one step from it (the fastest of `repeats`: the same tokens each time, less noise in the timing), and
        #    what the recorded step already said about it
        event = min((one_step(prepared, context, budget) for _ in range(repeats)),
                    key=lambda e: e.timings.end_s - e.timings.start_s)
        expected, agrees = recorded_answer(recorded, event, setup.sampling().greedy)
        t = event.timings
        outcomes.append(KOutcome(k, event.draft, event.new_tokens, 1, t.draft_s, t.verify_s, t.end_s - t.start_s,
                                 expected, agrees))
    return WhatIfReport(step, len(context or ()), label, own, setup.label(), recorded,
                        None if recorded.tree else recorded.num_drafted, budget, setup.sampling().greedy,
                        tuple(outcomes), repeats, time.perf_counter() - started)


# -- fork from here -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Continuation:
    """One strategy's continuation of the forked context."""

    strategy: str  # its label
    lossless: bool
    events: tuple[StepEvent, ...]
    token_ids: tuple[int, ...]
    text: str
    metrics: RunMetrics

    @property
    def steps(self) -> int:
        return self.metrics.steps

    @property
    def target_forwards(self) -> int:
        return self.metrics.target_forwards

    @property
    def mean_acceptance_length(self) -> float | None:
        return self.metrics.mean_acceptance_length

    @property
    def wall_s(self) -> float:
        return self.metrics.wall_s

    @property
    def tokens_per_s(self) -> float | None:
        return self.metrics.tokens_per_s


@dataclass(frozen=True)
class ForkReport:
    step: int
    context_length: int
    greedy: bool
    original: Continuation  # the run's own strategy again, from the same context
    other: Continuation  # the chosen strategy
    recorded_ids: tuple[int, ...]  # what the run itself produced from this step on

    @property
    def identical(self) -> bool:
        return self.original.token_ids == self.other.token_ids

    @property
    def lossless_check(self) -> bool | None:
        """Greedy and both strategies lossless: the texts must be identical (True when they are). None: not a
        case where they must (sampled, or a lossy strategy)."""
        if not (self.greedy and self.original.lossless and self.other.lossless):
            return None
        return self.identical

    @property
    def matches_recorded(self) -> bool | None:
        """Greedy: the re-run of the run's own strategy gives the run's own continuation (compared over the tokens
        both have). None when there is nothing to compare or decoding samples."""
        n = min(len(self.original.token_ids), len(self.recorded_ids))
        if not self.greedy or n == 0:
            return None
        return self.original.token_ids[:n] == self.recorded_ids[:n]


def continue_from(prepared: PreparedRun, context: list[int], max_new_tokens: int) -> Continuation:
    """The prepared decoder's whole continuation of `context` (its prefill counted in the wall time)."""
    events = tuple(prepared.decoder.generate(context, max_new_tokens))
    ids = tuple(t.token_id for e in events for t in e.new_tokens)
    strategy = prepared.request.strategy
    return Continuation(strategy.label(), type(strategy).lossless, events, ids,
                        prepared.tokenizer.decode(list(ids), skip_special_tokens=True), RunMetrics.from_events(events))


def as_strategy(strategy: StrategyConfig | str) -> StrategyConfig:
    return strategy if isinstance(strategy, StrategyConfig) else parse_strategy(str(strategy))


def fork(runner: Runner, setup: RunSetup, events: Sequence[StepEvent], step: Any, strategy: StrategyConfig | str,
         max_new_tokens: int = 32, device: str = "cpu") -> ForkReport:
    """Continue the context of step `step` with `strategy` and with the run's own strategy (one after the other,
    the same budget); `strategy` is a config or a strategy name (its defaults)."""
    step = check_step(events, step)
    # 1. both sides prepared first: a bad strategy or budget fails before anything runs
    original = runner.prepare(setup_request(setup, setup.strategy_config(), max_new_tokens, device))
    other = runner.prepare(setup_request(setup, as_strategy(strategy), max_new_tokens, device))
    # 2. the step's context, rebuilt and checked
    context = step_context(original.tokenizer, setup, events, step)
    # 3. the run's own strategy, then the other, from the same context
    first = continue_from(original, context, max_new_tokens)
    second = continue_from(other, context, max_new_tokens)
    recorded = tuple(t.token_id for e in events[step:] for t in e.new_tokens)
    return ForkReport(step, len(context), setup.sampling().greedy, first, second, recorded)

