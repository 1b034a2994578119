"""The Sampling lab: losslessness made visible (no Gradio here; specviz.ui.sampling_lab_tab shows it).

From one context, draw N samples of the next L tokens with `ar` (the target alone) and with a speculative
strategy, sample i seeded with seed i, and test both empirical distributions against the target's EXACT
distribution of L-token continuations (the product of the target's own conditionals under the same
temperature / top_k / top_p): Pearson's chi-square (cells expecting fewer than 5 pooled), its p-value, and
the total-variation distance. A lossless strategy passes as often as `ar` does.

    ar_run, spec_run = runner.prepare(ar_request), runner.prepare(spec_request)   # each built once
    lab = run_lab([("ar", ar_run.decoder), ("draft_model", spec_run.decoder)], ar_run.prompt_ids, 2, 200)
    for progress in lab: ...                # a LabProgress after every sample, then the exact distribution
    result = lab_result                     # the generator's return value (see drive_lab)

Reseeding: a decoder creates each run's single torch.Generator from its `sampling` (SamplingConfig.make_generator,
in Decoder.generate), so `reseeded(decoder, seed)` — a shallow copy with another seed — is all a new sample
needs: the models, proposer and length policy are shared, nothing is rebuilt.

The exact distribution (`exact_distribution`) feeds the prompt to the target once, then every prefix whose
conditional it needs as nodes of a token tree, one tree pass per level (engine tree attention): the prefixes
the samples produced, plus every prefix of probability >= `min_prob`, so every continuation a chi-square cell
or the figure needs has its exact probability, and the rest is one "other" cell of exactly known mass.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections import Counter
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from engine import EMBEDDED_DEFAULT, LoadedModel, SamplingConfig, StrategyConfig, logits_to_probs, parse_strategy
from engine.decoding.detokenize import IncrementalDetokenizer
from engine.decoding.driver import Decoder
from engine.errors import ConfigError
from engine.loading.causal_lm import CachedCausalLM

from .goodness_of_fit import MIN_EXPECTED, ChiSquareTest, chi_square_test
from .runner import RunRequest

DEFAULT_SAMPLES = 200
MIN_SAMPLES = 20
MAX_SAMPLES = 1000
DEFAULT_TOKENS = 2
MAX_TOKENS = 3
DEFAULT_TEMPERATURE = 0.7  # sharper than 1.0: the samples fall on fewer continuations, a more telling test
DEFAULT_STRATEGY = "draft_model"
ALPHA = 1e-3  # the significance level the verdicts use: a correct sampler is flagged once in a thousand runs
SHOWN = 12  # continuations shown by name (the most likely ones); the rest are one "other" bar
DISPLAY_FLOOR = 0.005  # prefixes at least this likely are always expanded (with those of expected count >= 5)
MAX_UNOBSERVED_PER_LEVEL = 256  # prefixes expanded per level beyond the observed ones, most likely first
NODES_PER_PASS = 256  # tree nodes fed to the target in one forward pass
# Strategies the lab cannot run: they need an attached document, or sample only greedily.
UNSUPPORTED = {
    "rasd": "drafts from an attached document, which the lab has none of",
    "rasd_tree": "drafts from an attached document, which the lab has none of",
    "cross_vocab": "is greedy-only (temperature 0), and the lab needs sampling",
}

Continuation = tuple[int, ...]  # the token ids a sample produced (shorter than L when it ended with EOS)
OTHER = "other"  # the cell of every continuation not listed by name


# --------------------------------------------------------------------------- the request


@dataclass(frozen=True)
class LabRequest:
    """One lab run: the context, the strategy to test beside ar, the sampling settings (seed ignored: sample i
    uses seed i), how many samples and how many tokens each."""

    prompt: str
    strategy: StrategyConfig
    sampling: SamplingConfig
    samples: int = DEFAULT_SAMPLES
    tokens: int = DEFAULT_TOKENS
    target: str = EMBEDDED_DEFAULT
    raw: bool = False  # True: no chat template

    def __post_init__(self) -> None:
        check_int("samples", self.samples, MIN_SAMPLES, MAX_SAMPLES)
        check_int("tokens", self.tokens, 1, MAX_TOKENS)
        if self.sampling.greedy:
            raise ConfigError("temperature", "must be above 0: at temperature 0 every sample is the same (greedy), "
                                             "so there is no distribution to compare")
        if self.strategy.name in UNSUPPORTED:
            raise ConfigError("strategy", f"{self.strategy.name} {UNSUPPORTED[self.strategy.name]}; pick another")

    def run_requests(self) -> tuple[RunRequest, RunRequest]:
        """What Runner.prepare builds, once each: the ar baseline and the strategy (max_new_tokens = L)."""
        common = dict(prompt=self.prompt, sampling=self.sampling, max_new_tokens=self.tokens, target=self.target,
                      raw=self.raw, source="ui")
        return (RunRequest(strategy=parse_strategy("ar", {}), **common), RunRequest(strategy=self.strategy, **common))


def check_int(name: str, value: object, low: int, high: int) -> int:
    """An integer in [low, high] (a whole float from a slider counts), or a ConfigError naming `name`."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(name, f"must be a whole number from {low} to {high}, got {value!r}")
    return value


# --------------------------------------------------------------------------- sampling


def reseeded(decoder: Decoder, seed: int) -> Decoder:
    """The same decoder (models, proposer, policy shared) whose runs draw from a generator seeded with `seed`."""
    twin = copy.copy(decoder)
    twin.sampling = dataclasses.replace(decoder.sampling, seed=seed)
    return twin


@dataclass
class SideSamples:
    """One sampler's draws: how often each continuation came out, and what they cost."""

    name: str
    counts: Counter = field(default_factory=Counter)  # Continuation -> count
    samples: int = 0
    tokens: int = 0  # tokens generated over all samples
    target_forwards: int = 0  # the target's forward passes over all samples (each sample's prompt prefill included)
    prefills: int = 0  # of which prompt prefills
    drafted: int = 0  # tokens drafted over all samples (0 for ar)
    wall_s: float = 0.0

    @property
    def passes_per_sample(self) -> float:
        return self.target_forwards / max(1, self.samples)

    @property
    def decode_passes_per_token(self) -> float:
        """Target passes per generated token, the prompt prefill left out: 1.0 for ar, lower when drafts are accepted."""
        return (self.target_forwards - self.prefills) / max(1, self.tokens)

    @property
    def ms_per_sample(self) -> float:
        return 1000 * self.wall_s / max(1, self.samples)


def draw_sample(decoder: Decoder, prompt_ids: list[int], length: int) -> tuple[Continuation, int, int, int]:
    """One sample of at most `length` tokens: (the token ids, the target's forward passes, prefill passes, drafted)."""
    tokens: list[int] = []
    forwards = prefill = drafted = 0
    for event in decoder.generate(prompt_ids, length):
        tokens.extend(t.token_id for t in event.new_tokens)
        forwards += event.target_forwards
        prefill += event.target_forwards - 1 if event.index == 0 else 0  # step 0 counts the prefill too
        drafted += event.num_drafted
    return tuple(tokens), forwards, prefill, drafted


def sample_side(name: str, decoder: Decoder, prompt_ids: list[int], length: int,
                samples: int) -> Generator[int, None, SideSamples]:
    """Draw `samples` samples, sample i with seed i (after one uncounted warm-up draw, so the first side does not
    pay the process's warm-up in its timing); yields the number done after each, returns the tally."""
    side = SideSamples(name)
    draw_sample(reseeded(decoder, samples), prompt_ids, length)  # warm-up, not counted: the timing is per sample
    started = time.perf_counter()
    for seed in range(samples):
        continuation, forwards, prefill, drafted = draw_sample(reseeded(decoder, seed), prompt_ids, length)
        side.counts[continuation] += 1
        side.samples += 1
        side.tokens += len(continuation)
        side.target_forwards += forwards
        side.prefills += prefill
        side.drafted += drafted
        side.wall_s = time.perf_counter() - started
        yield side.samples
    return side


# --------------------------------------------------------------------------- the exact distribution


@dataclass(frozen=True)
class ExactDistribution:
    """The target's exact probabilities of L-token continuations: every one that a sample produced or that is at
    least `min_prob` likely; the rest, unnamed, hold `1 - covered` (each at most `unlisted_bound`)."""

    probs: dict[Continuation, float]
    length: int
    min_prob: float
    unlisted_bound: float  # no continuation outside `probs` is more likely than this
    target_passes: int  # forward passes it took (the prompt's one included)

    @property
    def covered(self) -> float:
        return sum(self.probs.values())

    def top(self, n: int) -> list[tuple[Continuation, float]]:
        """The n most likely listed continuations, most likely first (ties by token ids, so the order is stable)."""
        return sorted(self.probs.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    def top_is_exact(self, n: int) -> bool:
        """True when `top(n)` are certainly the n most likely continuations (none unlisted could beat them)."""
        top = self.top(n)
        return len(top) == n and top[-1][1] >= self.unlisted_bound or len(top) < n and self.unlisted_bound == 0



class _PrefixScorer:
    """The target's next-token distributions after the prompt + each prefix, fed as tree nodes over the prompt's
    cache (full-attention targets), or one prefix at a time with a rollback (sliding-window targets)."""

    def __init__(self, target: LoadedModel, prompt_ids: list[int], sampling: SamplingConfig, tree: bool | None = None):
        self.lm = CachedCausalLM(target.model)
        self.sampling = sampling
        self.prompt_length = len(prompt_ids)
        self.region: dict[Continuation, int] = {}  # prefix -> its node's index in the tree region
        layer_types = getattr(target.model.config, "layer_types", None) or ()
        self.tree = "sliding_attention" not in layer_types if tree is None else tree  # tree attention needs full attention
        self.root = logits_to_probs(self.lm.forward(list(prompt_ids)), sampling)[0]  # [vocab]

    @property
    def passes(self) -> int:
        return self.lm.forward_passes

    def score(self, prefixes: list[Continuation]) -> Iterator[tuple[Continuation, torch.Tensor]]:
        """(prefix, its next-token distribution [vocab]) for each prefix, a pass at a time (so only one pass's
        distributions are held); every prefix's parent was scored before (or is the empty prefix)."""
        for start in range(0, len(prefixes), NODES_PER_PASS):
            chunk = prefixes[start:start + NODES_PER_PASS]
            logits = self._tree_logits(chunk) if self.tree else self._one_by_one_logits(chunk)  # [len(chunk), vocab]
            yield from zip(chunk, logits_to_probs(logits, self.sampling))

    def _tree_logits(self, chunk: list[Continuation]) -> torch.Tensor:
        parents = [self.region[p[:-1]] if len(p) > 1 else -1 for p in chunk]
        logits = self.lm.forward_tree([p[-1] for p in chunk], parents, prefix_length=self.prompt_length)
        for prefix in chunk:  # region indices follow the order nodes are fed
            self.region[prefix] = len(self.region)
        return logits

    def _one_by_one_logits(self, chunk: list[Continuation]) -> torch.Tensor:
        rows = []
        for prefix in chunk:
            rows.append(self.lm.forward(list(prefix))[0])
            self.lm.rollback(self.prompt_length)
        return torch.stack(rows)


def _prefixes(continuations: Iterable[Continuation], depth: int) -> set[Continuation]:
    return {c[:depth] for c in continuations if len(c) > depth}


def _children(prefix: Continuation, prob: float, dist: torch.Tensor, min_prob: float,
              wanted: Iterable[int]) -> tuple[dict[Continuation, float], float]:
    """The prefix's one-token extensions that are at least min_prob likely or `wanted` (observed), with their
    probabilities; and the probability of the most likely extension left out (0 when none)."""
    joint = dist.double() * prob  # [vocab]
    keep = joint >= min_prob if min_prob > 0 else joint > 0  # [vocab] bool
    out = {prefix + (int(t),): float(joint[t]) for t in torch.nonzero(keep).flatten().tolist()}
    out.update({prefix + (t,): float(joint[t]) for t in wanted})
    left_out = joint[~keep]
    return out, float(left_out.max()) if min_prob > 0 and left_out.numel() else 0.0


def _wanted_by_parent(observed: set[Continuation], depth: int) -> dict[Continuation, list[int]]:
    """The observed continuations' prefixes of length `depth`, grouped by their parent: parent -> last tokens."""
    out: dict[Continuation, list[int]] = {}
    for prefix in {c[:depth] for c in observed if len(c) >= depth}:
        out.setdefault(prefix[:-1], []).append(prefix[-1])
    return out


def _extend(scored: Iterable[tuple[Continuation, torch.Tensor]], prob_of: dict[Continuation, float], min_prob: float,
            wanted: dict[Continuation, list[int]]) -> tuple[dict[Continuation, float], float]:
    """Every scored prefix's wanted one-token extensions with their probabilities, and the probability of the most
    likely extension left out."""
    children: dict[Continuation, float] = {}
    bound = 0.0
    for prefix, dist in scored:
        found, left_out = _children(prefix, prob_of[prefix], dist, min_prob, wanted.get(prefix, ()))
        children.update(found)
        bound = max(bound, left_out)
    return children, bound


def exact_distribution(target: LoadedModel, prompt_ids: list[int], sampling: SamplingConfig, length: int,
                       observed: Iterable[Continuation] = (), min_prob: float = DISPLAY_FLOOR,
                       max_unobserved: int = MAX_UNOBSERVED_PER_LEVEL, tree: bool | None = None) -> ExactDistribution:
    """The target's exact distribution of the next `length` tokens after prompt_ids, under `sampling`.

    A continuation ends early at an EOS token or when the context window is full (as a run does). Lists every
    observed continuation and every one at least `min_prob` likely (min_prob=0: all of them, for small vocabularies).
    `tree`: score prefixes as tree nodes (True) or one at a time (False); None: tree nodes unless the target has
    sliding-window layers (tree attention needs full attention).
    """
    observed = set(observed)
    scorer = _PrefixScorer(target, prompt_ids, sampling, tree)
    stops = target.eos_token_ids
    room = target.context_window - len(prompt_ids)  # tokens a run may add before the window is full
    probs: dict[Continuation, float] = {}
    children, bound = _extend([((), scorer.root)], {(): 1.0}, min_prob, _wanted_by_parent(observed, 1))
    for depth in range(1, length + 1):
        # 1. complete extensions (length reached, EOS, window full) are continuations; the others are prefixes
        ends = {c: p for c, p in children.items() if depth == length or c[-1] in stops or depth >= room}
        probs.update(ends)
        expand, dropped = _choose_expansions({c: p for c, p in children.items() if c not in ends},
                                             _prefixes(observed, depth), max_unobserved)
        # 2. score the chosen prefixes in tree passes; keep their wanted extensions
        children, left_out = _extend(scorer.score(list(expand)), expand, min_prob, _wanted_by_parent(observed, depth + 1))
        bound = max(bound, dropped, left_out)
    return ExactDistribution(probs, length, min_prob, bound, scorer.passes)


def _choose_expansions(candidates: dict[Continuation, float], must: set[Continuation],
                       max_unobserved: int) -> tuple[dict[Continuation, float], float]:
    """The prefixes to expand (all observed ones, then the most likely others up to max_unobserved), and the
    probability of the most likely one left out (0 when none)."""
    chosen = {c: p for c, p in candidates.items() if c in must}
    others = sorted(((p, c) for c, p in candidates.items() if c not in must), reverse=True)
    chosen.update({c: p for p, c in others[:max_unobserved]})
    return chosen, others[max_unobserved][0] if len(others) > max_unobserved else 0.0


# --------------------------------------------------------------------------- fit and result


@dataclass(frozen=True)
class SideFit:
    """One sampler against the exact distribution."""

    side: SideSamples
    test: ChiSquareTest
    tv: float  # total-variation distance between its empirical distribution and the exact one

    @property
    def passes(self) -> bool:
        return not self.test.rejects(ALPHA)


@dataclass(frozen=True)
class Row:
    """One bar group: a continuation (or OTHER), its text pieces, exact probability and each side's frequency."""

    key: Continuation | str
    pieces: tuple[str, ...]  # the text of each token ('' for a partial character); () for OTHER
    exact: float
    frequencies: tuple[float, ...]  # per side, in the order of LabResult.fits
    counts: tuple[int, ...]


@dataclass(frozen=True)
class LabResult:
    tokens: int
    samples: int
    exact: ExactDistribution
    fits: tuple[SideFit, ...]  # ar first, then the strategy
    rows: tuple[Row, ...]  # the SHOWN most likely continuations, then OTHER
    exact_s: float  # seconds the exact distribution took

    def fit(self, name: str) -> SideFit:
        return next(f for f in self.fits if f.side.name == name)


def fit_side(side: SideSamples, exact: ExactDistribution) -> SideFit:
    """Chi-square with a cell per continuation expecting at least 5 observations and one pooled cell for all the
    rest (whether listed or not: the cells must not depend on what was observed), and the exact total variation."""
    n = side.samples
    if exact.min_prob * n > MIN_EXPECTED:
        raise ValueError(f"the exact distribution lists continuations down to {exact.min_prob:g}; {n} samples need "
                         f"every one down to {MIN_EXPECTED / n:g}")
    large = {c: p for c, p in exact.probs.items() if n * p >= MIN_EXPECTED}  # all of them: min_prob <= 5 / n
    cells = {**large, OTHER: max(0.0, 1.0 - sum(large.values()))}
    counts: Counter = Counter()
    for continuation, count in side.counts.items():
        counts[continuation if continuation in large else OTHER] += count
    test = chi_square_test(counts, cells, n, MIN_EXPECTED)
    # TV = 1/2 sum |freq - p|: listed continuations term by term; unlisted ones were never observed (freq 0)
    listed = sum(abs(side.counts.get(c, 0) / n - p) for c, p in exact.probs.items())
    return SideFit(side, test, 0.5 * (listed + max(0.0, 1.0 - exact.covered)))


def continuation_pieces(tokenizer, prompt_ids: list[int], continuation: Continuation) -> tuple[str, ...]:
    """Each token's text as the run would print it (the prompt's last tokens as left context)."""
    detok = IncrementalDetokenizer(tokenizer, prompt_ids)
    return tuple(detok.push(t) for t in continuation)


def table_rows(exact: ExactDistribution, sides: Sequence[SideSamples], tokenizer, prompt_ids: list[int],
               shown: int = SHOWN) -> tuple[Row, ...]:
    """The `shown` most likely continuations and one OTHER row holding the rest (exact mass and observed share)."""
    rows = []
    for continuation, p in exact.top(shown):
        counts = tuple(s.counts.get(continuation, 0) for s in sides)
        rows.append(Row(continuation, continuation_pieces(tokenizer, prompt_ids, continuation), p,
                        tuple(c / max(1, s.samples) for c, s in zip(counts, sides)), counts))
    named = {row.key for row in rows}
    other_counts = tuple(sum(c for k, c in s.counts.items() if k not in named) for s in sides)
    rows.append(Row(OTHER, (), max(0.0, 1.0 - sum(r.exact for r in rows)),
                    tuple(c / max(1, s.samples) for c, s in zip(other_counts, sides)), other_counts))
    return tuple(rows)


@dataclass(frozen=True)
class LabProgress:
    """Where a lab run is: `done` of `total` samples drawn (over both sides), or computing the exact distribution."""

    stage: str  # "sampling" | "exact"
    side: str
    done: int
    total: int

    @property
    def fraction(self) -> float:
        return self.done / max(1, self.total)


def run_lab(sides: Sequence[tuple[str, Decoder]], prompt_ids: list[int], length: int,
            samples: int) -> Generator[LabProgress, None, LabResult]:
    """Sample every side (`samples` each, seeds 0..samples-1), then the exact distribution and the fits.

    Yields a LabProgress after every sample (closing the generator stops between samples); returns the LabResult.
    All sides must share the target and the sampling settings (the first side's are the reference).
    """
    target, sampling = sides[0][1].target, sides[0][1].sampling
    if any(d.target is not target or dataclasses.replace(d.sampling, seed=0) != dataclasses.replace(sampling, seed=0)
           for _, d in sides):
        raise ValueError("every side of a lab run must share the target model and the sampling settings")
    total = samples * len(sides)
    tallies: list[SideSamples] = []
    # 1. each side's samples, one seed each
    for name, decoder in sides:
        offset = len(tallies) * samples
        draws = sample_side(name, decoder, prompt_ids, length, samples)
        tallies.append((yield from _with_progress(draws, name, offset, total)))
    # 2. the exact distribution over what was observed (and everything likely)
    yield LabProgress("exact", "target", total, total)
    started = time.perf_counter()
    observed = set().union(*(s.counts for s in tallies))
    exact = exact_distribution(target, prompt_ids, sampling, length, observed,
                               min_prob=min(DISPLAY_FLOOR, MIN_EXPECTED / samples))
    exact_s = time.perf_counter() - started
    # 3. the fits and the table
    fits = tuple(fit_side(s, exact) for s in tallies)
    return LabResult(length, samples, exact, fits, table_rows(exact, tallies, target.tokenizer, prompt_ids), exact_s)


def _with_progress(draws: Generator[int, None, SideSamples], name: str, offset: int,
                   total: int) -> Generator[LabProgress, None, SideSamples]:
    """Pass a side's draws on as LabProgress over the whole run; return the side's tally."""
    try:
        while True:
            yield LabProgress("sampling", name, offset + next(draws), total)
    except StopIteration as finished:
        return finished.value


# --------------------------------------------------------------------------- what it means


def verdict(result: LabResult, alpha: float = ALPHA) -> str:
    """A few sentences for a learner: what the p-values and distances say about each sampler."""
    base, *others = result.fits
    lines = []
    for fit in result.fits:
        p = fit.test.p_value
        lines.append(f"{fit.side.name}: p = {format_p(p)} " + (
            f"(above {alpha:g}: no evidence it differs from the target)" if fit.passes
            else f"(below {alpha:g}: these samples are very unlikely under the target's distribution)"))
    names = ", ".join(f.side.name for f in others)
    if all(f.passes for f in result.fits):
        lines.append(f"p-value {'well ' if min(f.test.p_value for f in result.fits) >= 10 * alpha else ''}above "
                     f"{alpha:g} for both: no evidence the speculative sampler ({names}) differs from "
                     "the target. That is what lossless means: drafting changes how fast tokens come, not which "
                     "tokens come, or how often.")
    elif base.passes:
        lines.append(f"{names} fails where ar passes: evidence its samples do not follow the target's distribution "
                     f"(a lossy strategy or a bug). A correct sampler fails only once in {round(1 / alpha):,} runs.")
    else:
        lines.append(f"Even ar, the target sampling by itself, fails: with p < {alpha:g} that happens once in "
                     f"{round(1 / alpha):,} runs by chance, so suspect the setup; run again with more samples.")
    idle = [f.side.name for f in others if f.side.drafted == 0]
    if idle:
        lines.append(f"{', '.join(idle)} drafted nothing: "
                     + ("with L = 1 the target's own token completes every sample, so there is no room to draft and "
                        "the samples are ar's, seed for seed. Pick L = 2 or 3 to see drafting tested."
                        if result.tokens == 1 else "its samples came from the target alone, as ar's do."))
    lines.append(f"Total variation (half the summed gaps between bars and exact): ar {base.tv:.3f}"
                 + "".join(f", {f.side.name} {f.tv:.3f}" for f in others)
                 + f". Even a perfect sampler shows a gap with {result.samples} samples: ar's is the noise level to "
                   "compare with.")
    return "\n".join(lines)


def format_p(p: float) -> str:
    """A p-value for people: 3 significant digits, scientific notation when tiny."""
    if p == 0:
        return "< 1e-300"
    return f"{p:.3g}" if p >= 1e-3 else f"{p:.2e}"


def speed_note(result: LabResult) -> str:
    """The speedup proxy, honestly: target forward passes per sample (prompt prefill included) and per token."""
    base, *others = result.fits
    parts = [f"{f.side.name} {f.side.passes_per_sample:.2f} target passes per sample "
             f"({f.side.decode_passes_per_token:.2f} per token after the prompt; {f.side.ms_per_sample:.0f} ms)"
             for f in result.fits]
    ratio = ", ".join(f"{f.side.name} {base.side.passes_per_sample / max(1e-9, f.side.passes_per_sample):.2f}x"
                      for f in others)
    return (f"Cost: {'; '.join(parts)}. Fewer target passes per sample: {ratio} (a proxy for the speedup: it leaves "
            f"out the drafter's own work, and each sample's prompt prefill is one pass for everyone; with only "
            f"{result.tokens} token{'s' if result.tokens > 1 else ''} per sample there is little to gain).")
