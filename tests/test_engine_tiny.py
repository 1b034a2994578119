"""The decoding loop end to end on tiny random Llama models (no downloads, seconds per test).

- greedy: every strategy's output equals the autoregressive baseline token by token;
- sampling: the distribution of the first two generated tokens equals the target's own
  (chi-square test against the exact joint computed from the target's logits);
- determinism, the context window, KV-cache rollback, metrics and step-event invariants.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from conftest import (
    TINY_VOCAB,
    TINY_WINDOW,
    FakeTokenizer,
    chi_square_critical,
    chi_square_statistic,
    make_tiny_loaded,
    sweep,
)
from engine import (
    EngineError,
    LoadedModel,
    ModelCache,
    ModelLoadError,
    PromptError,
    SamplingConfig,
    SpeculativeDecoder,
    build_decoder,
    early_exit_drafter,
    logits_to_probs,
    parse_strategy,
    run_to_completion,
)
from engine.loading.causal_lm import CachedCausalLM
from engine.events import OUTPUT_KINDS
from engine.drafting.policies import ConstantLength, HeuristicLength
from engine.drafting.proposers import DraftModelProposer, PromptLookupProposer
from engine.decoding.verification import acceptance_probability

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPTS = [
    [3, 5, 7, 11, 2, 9],
    [1, 2, 3, 4, 1, 2, 3, 4, 1, 2],  # repetitive: prompt lookup finds matches at once
    [8],  # one token: no prefill
]


@pytest.fixture(scope="module")
def drafters(tiny_target, tiny_drafter, tiny_noisy_drafter):
    return {
        "independent": tiny_drafter,
        "noisy": tiny_noisy_drafter,
        "early_exit_1": early_exit_drafter(tiny_target, 1),
        "early_exit_2": early_exit_drafter(tiny_target, 2),
    }


# name -> (drafter key or None for prompt lookup, policy factory)
STRATEGIES = {
    "draft_model_independent_k3": ("independent", lambda: ConstantLength(3)),
    "draft_model_noisy_k4": ("noisy", lambda: ConstantLength(4)),
    "draft_model_noisy_heuristic": ("noisy", lambda: HeuristicLength(2, 8)),
    "early_exit_1_k3": ("early_exit_1", lambda: ConstantLength(3)),
    "early_exit_2_heuristic": ("early_exit_2", lambda: HeuristicLength(4, 12)),
    "prompt_lookup_k4": (None, lambda: ConstantLength(4)),
    "prompt_lookup_heuristic": (None, lambda: HeuristicLength(2, 10)),
}


def make_decoder(target: LoadedModel, drafters: dict, strategy: str | None, sampling: SamplingConfig) -> SpeculativeDecoder:
    if strategy is None:
        return SpeculativeDecoder(target, None, None, sampling)
    drafter_key, policy = STRATEGIES[strategy]
    proposer = PromptLookupProposer(3, 1) if drafter_key is None else DraftModelProposer(drafters[drafter_key].model)
    return SpeculativeDecoder(target, proposer, policy(), sampling)


@pytest.fixture(scope="module")
def ar_greedy(tiny_target):
    cache = {}

    def get(prompt: list[int], max_new_tokens: int):
        key = (tuple(prompt), max_new_tokens)
        if key not in cache:
            cache[key] = run_to_completion(SpeculativeDecoder(tiny_target), prompt, max_new_tokens)
        return cache[key]

    return get


# --------------------------------------------------------------------------- greedy == baseline


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_greedy_output_equals_autoregressive(strategy, tiny_target, drafters, ar_greedy):
    drafted = accepted = 0
    for prompt in PROMPTS:
        baseline = ar_greedy(prompt, 40)
        assert len(baseline.token_ids) == 40 and baseline.stop_reason == "max_new_tokens"
        result = run_to_completion(make_decoder(tiny_target, drafters, strategy, SamplingConfig()), prompt, 40)
        assert result.token_ids == baseline.token_ids, f"{strategy} diverged from the baseline on prompt {prompt}"
        assert result.text == baseline.text
        assert result.stop_reason == "max_new_tokens"
        drafted += result.metrics.drafted
        accepted += result.metrics.accepted
    # the comparison is only meaningful if drafts were both accepted and rejected (an independent
    # random drafter never agrees with the target's argmax: it checks the all-rejected path)
    assert drafted > accepted, (drafted, accepted)
    if strategy != "draft_model_independent_k3":
        assert accepted > 0, (drafted, accepted)


def test_greedy_draft_model_with_independent_drafter_rejects_often(tiny_target, drafters):
    result = run_to_completion(make_decoder(tiny_target, drafters, "draft_model_independent_k3", SamplingConfig()), PROMPTS[0], 30)
    rejected = sum(1 for e in result.events for t in e.draft if t.verdict == "rejected")
    assert rejected >= 3


@pytest.mark.parametrize("length_policy", [lambda: ConstantLength(3), lambda: HeuristicLength(1, 7)])
def test_target_as_its_own_drafter_gets_every_draft_accepted(length_policy, tiny_target, ar_greedy):
    """Checks the drafter's KV-cache bookkeeping: a drafter that is the target itself (own cache)
    must propose exactly the target's greedy tokens, so every draft is accepted, after partial
    and full accepts alike. A stale or over-cropped drafter cache would propose other tokens."""
    decoder = SpeculativeDecoder(tiny_target, DraftModelProposer(tiny_target.model), length_policy(), SamplingConfig())
    for prompt in PROMPTS:
        result = run_to_completion(decoder, prompt, 30)
        assert result.token_ids == ar_greedy(prompt, 30).token_ids
        assert result.metrics.drafted > 0
        assert result.metrics.accepted == result.metrics.drafted
        assert all(e.output.kind == "bonus" for e in result.events if e.num_drafted)


class CheckedDraftProposer(DraftModelProposer):
    """Compares every proposal with the drafter's greedy chain computed from scratch (no cache)."""

    proposals = 0

    def propose(self, context, k, sampling, generator):
        proposal = super().propose(context, k, sampling, generator)
        chain = list(context)
        with torch.no_grad():
            for _ in range(k):
                chain.append(int(self.model(input_ids=torch.tensor([chain])).logits[0, -1].argmax()))
        assert proposal.token_ids == chain[len(context) :], "the drafter's KV cache is out of step with the context"
        assert self.lm.cached_length == len(context) + k - 1
        self.proposals += 1
        return proposal


@pytest.mark.parametrize("drafter_key", ["noisy", "early_exit_1", "independent"])
def test_drafter_cache_follows_the_context_through_rejections(drafter_key, tiny_target, drafters):
    proposer = CheckedDraftProposer(drafters[drafter_key].model)
    decoder = SpeculativeDecoder(tiny_target, proposer, HeuristicLength(2, 6), SamplingConfig())
    result = run_to_completion(decoder, PROMPTS[0], 30)
    assert proposer.proposals == result.metrics.steps - sum(1 for e in result.events if e.num_drafted == 0)
    kinds = {e.output.kind for e in result.events}
    assert "recovered" in kinds  # rejections happened, so the cache had to be cropped


def _fake_cache(loaded_by_spec: dict[str, LoadedModel]) -> ModelCache:
    return ModelCache(max_models=4, loader=lambda spec, progress=None: loaded_by_spec[spec])


@pytest.mark.parametrize(
    "name, params",
    [
        ("draft_model", {"drafter": "tiny-noisy", "k": "3"}),
        ("draft_model", {"drafter": "early-exit:1", "length_policy": "heuristic"}),
        ("early_exit", {"exit_layer": "2", "k": "2"}),
        ("prompt_lookup", {"k": "5", "max_ngram": "2"}),
        ("ar", {}),
    ],
)
def test_build_decoder_wires_strategies_losslessly(name, params, tiny_target, tiny_noisy_drafter, ar_greedy):
    """The public wiring (parse_strategy -> build_decoder with a ModelCache) gives the baseline's text."""
    models = _fake_cache({"tiny-noisy": tiny_noisy_drafter})
    decoder = build_decoder(parse_strategy(name, params), tiny_target, models, SamplingConfig())
    assert (decoder.proposer is None) == (name == "ar")
    for prompt in PROMPTS[:2]:
        result = run_to_completion(decoder, prompt, 25)
        assert result.token_ids == ar_greedy(prompt, 25).token_ids
        assert len(result.token_ids) == 25


def test_build_decoder_rejects_a_drafter_with_another_vocabulary(tiny_target):
    other = make_tiny_loaded(5, vocab_size=24)
    models = _fake_cache({"other": other})
    with pytest.raises(ModelLoadError, match="different tokenizer"):
        build_decoder(parse_strategy("draft_model", {"drafter": "other"}), tiny_target, models, SamplingConfig())


# --------------------------------------------------------------------------- sampling: statistical losslessness

N_RUNS = 1000
ALPHA = 1e-3  # a correct engine fails a given (fixed-seed) case with probability 1e-3
SAMPLINGS = {
    "t1": dict(temperature=1.0),
    "t0.7-k8-p0.9": dict(temperature=0.7, top_k=8, top_p=0.9),
}


@torch.no_grad()
def _next_probs(model: torch.nn.Module, context: list[int], sampling: SamplingConfig) -> torch.Tensor:
    """The target's transformed next-token distribution, from a plain (cache-free) forward pass."""
    logits = model(input_ids=torch.tensor([context])).logits[0, -1:]
    return logits_to_probs(logits, sampling)[0]


def exact_first_two(model: torch.nn.Module, prompt: list[int], sampling: SamplingConfig) -> dict[tuple[int, int], float]:
    p1 = _next_probs(model, prompt, sampling)
    joint = {}
    for x1 in range(TINY_VOCAB):
        if p1[x1] > 0:
            p2 = _next_probs(model, prompt + [x1], sampling)
            for x2 in range(TINY_VOCAB):
                if p2[x2] > 0:
                    joint[(x1, x2)] = float(p1[x1]) * float(p2[x2])
    return joint


def lookup_friendly_prompt(model: torch.nn.Module, sampling: SamplingConfig) -> list[int]:
    """[a, b, c, a, b]: prompt lookup drafts [c, a]. Pick the first (a, b, c) for which the target
    gives c a middling probability and then a a fair one, so that n-gram drafts are accepted AND
    rejected (a random model would otherwise almost always reject them)."""
    for a, b, c in itertools.permutations(range(TINY_VOCAB), 3):
        prompt = [a, b, c, a, b]
        if 0.3 < float(_next_probs(model, prompt, sampling)[c]) < 0.7 and float(_next_probs(model, prompt + [c], sampling)[a]) > 0.25:
            return prompt
    raise AssertionError("no suitable prompt")


def residual_bug_noncentrality(p: torch.Tensor, q: torch.Tensor | None, draft_token: int | None, n: int) -> float:
    """Power check: n * chi-square distance between p and the first-token distribution an engine
    with the classic bug (rejected positions resample from p instead of max(0, p - q)) produces."""
    p = p.double()
    drafts = [(draft_token, 1.0)] if q is None else [(d, float(q[d])) for d in range(len(p)) if q[d] > 0]
    buggy = torch.zeros_like(p)
    for d, weight in drafts:
        a = acceptance_probability(None if q is None else float(q[d]), float(p[d]))
        buggy[d] += weight * a
        buggy += weight * (1 - a) * p
    support = p > 0
    return n * float(((buggy[support] - p[support]) ** 2 / p[support]).sum())


@pytest.mark.parametrize("strategy, sampling_name", sweep(
    [(s, n) for s in ("draft_model_noisy", "early_exit_1", "prompt_lookup") for n in SAMPLINGS],
    default=[("draft_model_noisy", "t0.7-k8-p0.9"), ("early_exit_1", "t1"), ("prompt_lookup", "t0.7-k8-p0.9")]))
def test_sampling_first_two_tokens_follow_the_target(strategy, sampling_name, tiny_target, drafters):
    """N_RUNS seeded runs (seeds 0..N_RUNS-1), max_new_tokens 3, K = 2: the first step drafts 2
    tokens, so accepted/accepted, accepted/rejected and rejected-at-0 paths all feed the first two
    output tokens. Their empirical joint must pass a chi-square test (alpha = 1e-3, cells with an
    expected count under 5 pooled) against the exact joint p(x1) p(x2 | x1) of the target."""
    settings = SAMPLINGS[sampling_name]
    reference = SamplingConfig(**settings)
    prompt = lookup_friendly_prompt(tiny_target.model, reference)
    expected = exact_first_two(tiny_target.model, prompt, reference)

    drafter_key = {"draft_model_noisy": "noisy", "early_exit_1": "early_exit_1", "prompt_lookup": None}[strategy]
    counts: dict[tuple[int, int], int] = {}
    verdicts = {"accepted": 0, "rejected": 0}
    drafted_two = 0
    for seed in range(N_RUNS):
        proposer = PromptLookupProposer(3, 1) if drafter_key is None else DraftModelProposer(drafters[drafter_key].model)
        decoder = SpeculativeDecoder(tiny_target, proposer, ConstantLength(2), SamplingConfig(**settings, seed=seed))
        tokens: list[int] = []
        for event in decoder.generate(prompt, 3):
            if event.index == 0:
                drafted_two += event.num_drafted == 2
            for drafted in event.draft:
                if drafted.verdict in verdicts:
                    verdicts[drafted.verdict] += 1
            tokens.extend(t.token_id for t in event.new_tokens)
            if len(tokens) >= 2:
                break  # closes the generator: the run stops between steps
        key = (tokens[0], tokens[1])
        counts[key] = counts.get(key, 0) + 1

    assert drafted_two == N_RUNS, "the first step must draft a chain of 2"
    assert verdicts["accepted"] > 0.05 * N_RUNS and verdicts["rejected"] > 0.05 * N_RUNS, verdicts
    assert set(counts) <= set(expected), "a token pair the target cannot produce was generated"

    stat, df = chi_square_statistic(counts, expected, N_RUNS)
    critical = chi_square_critical(df, ALPHA)
    assert stat < critical, f"chi-square {stat:.1f} >= {critical:.1f} (df {df}): output distribution differs from the target's"

    # The test has power: the classic residual bug shifts the first token's distribution enough
    # that its expected chi-square (df + noncentrality) lies well above the critical value.
    p = _next_probs(tiny_target.model, prompt, reference)
    if drafter_key is None:
        noncentrality = residual_bug_noncentrality(p, None, prompt[2], N_RUNS)
    else:
        q = _next_probs(drafters[drafter_key].model, prompt, reference)
        noncentrality = residual_bug_noncentrality(p, q, None, N_RUNS)
    assert df + noncentrality > critical + 10, noncentrality


def test_same_seed_same_run(tiny_target, drafters):
    def run(seed: int, strategy: str):
        decoder = make_decoder(tiny_target, drafters, strategy, SamplingConfig(temperature=1.0, top_k=12, seed=seed))
        result = run_to_completion(decoder, PROMPTS[0], 30)
        trace = [
            (e.decision.allowed, [(t.token_id, t.verdict, t.uniform, t.accept_prob) for t in e.draft], e.output.token_id, e.output.kind)
            for e in result.events
        ]
        return result.token_ids, trace

    for strategy in ("draft_model_noisy_k4", "early_exit_2_heuristic", "prompt_lookup_k4"):
        first = run(11, strategy)
        assert first == run(11, strategy)
        assert any(run(seed, strategy)[0] != first[0] for seed in (12, 13, 14))


def test_ar_sampling_is_seeded(tiny_target):
    def ids(seed):
        return run_to_completion(SpeculativeDecoder(tiny_target, sampling=SamplingConfig(temperature=1.0, seed=seed)), PROMPTS[0], 20).token_ids

    assert ids(3) == ids(3)
    assert ids(3) != ids(4)


# --------------------------------------------------------------------------- context window and stops


def test_prompt_too_long_or_empty(tiny_target, drafters):
    for length in (TINY_WINDOW, TINY_WINDOW + 30):
        with pytest.raises(PromptError, match=str(TINY_WINDOW)):
            list(SpeculativeDecoder(tiny_target).generate([1] * length, 5))
    with pytest.raises(PromptError):
        list(SpeculativeDecoder(tiny_target).generate([], 5))
    with pytest.raises(PromptError, match="context window"):
        run_to_completion(make_decoder(tiny_target, drafters, "draft_model_noisy_k4", SamplingConfig()), [2] * TINY_WINDOW, 5)


@pytest.mark.parametrize("strategy", [None, "draft_model_noisy_k4", "early_exit_1_k3", "prompt_lookup_k4"])
@pytest.mark.parametrize("prompt_length", [TINY_WINDOW - 6, TINY_WINDOW - 1])
def test_run_near_the_window_stops_at_context_window(strategy, prompt_length, tiny_target, drafters):
    prompt = ([1, 2, 3, 4, 5, 6, 7] * 10)[:prompt_length]
    for sampling in (SamplingConfig(), SamplingConfig(temperature=1.0, seed=3)):
        result = run_to_completion(make_decoder(tiny_target, drafters, strategy, sampling), prompt, 20)
        assert result.stop_reason == "context_window"
        assert len(result.token_ids) == TINY_WINDOW - prompt_length
        for event in result.events:
            assert event.decision.allowed <= TINY_WINDOW - event.context_length - 1
            assert event.context_length + len(event.new_tokens) <= TINY_WINDOW
        if sampling.greedy:
            baseline = run_to_completion(SpeculativeDecoder(tiny_target), prompt, 20)
            assert result.token_ids == baseline.token_ids


@pytest.mark.parametrize("strategy", ["draft_model_noisy_k4", "prompt_lookup_k4"])
def test_budget_clamps_the_draft(strategy, tiny_target, drafters):
    result = run_to_completion(make_decoder(tiny_target, drafters, strategy, SamplingConfig()), PROMPTS[1], 6)
    assert len(result.token_ids) == 6 and result.stop_reason == "max_new_tokens"
    produced = 0
    for event in result.events:
        assert event.decision.allowed == min(event.decision.requested, 6 - produced - 1)
        if event.decision.allowed < event.decision.requested:
            assert "clamped" in event.decision.reason
        produced += len(event.new_tokens)


def test_eos_stops_the_run(tiny_target, drafters):
    baseline = run_to_completion(SpeculativeDecoder(tiny_target), PROMPTS[0], 30).token_ids
    # the first output position >= 3 whose token has not appeared before in the output
    stop_at = next(i for i in range(3, 30) if baseline[i] not in baseline[:i])
    eos = baseline[stop_at]
    with_eos = LoadedModel("tiny-eos", tiny_target.model, FakeTokenizer(TINY_VOCAB, eos_token_id=eos))
    assert with_eos.eos_token_ids == {eos}
    for strategy in (None, "draft_model_noisy_k4", "early_exit_1_k3", "prompt_lookup_k4"):
        result = run_to_completion(make_decoder(with_eos, drafters, strategy, SamplingConfig()), PROMPTS[0], 30)
        assert result.stop_reason == "eos"
        assert result.token_ids == baseline[: stop_at + 1]
        assert result.text == "".join(f"t{i} " for i in baseline[:stop_at])  # EOS skipped in the text


def test_nan_logits_stop_the_run(tiny_target):
    broken = copy.deepcopy(tiny_target.model)
    with torch.no_grad():
        broken.lm_head.weight[3, 0] = float("nan")
    target = LoadedModel("broken", broken, FakeTokenizer(TINY_VOCAB))
    with pytest.raises(EngineError, match="target"):
        run_to_completion(SpeculativeDecoder(target), PROMPTS[0], 5)
    with pytest.raises(EngineError, match="drafter"):
        run_to_completion(SpeculativeDecoder(tiny_target, DraftModelProposer(broken), ConstantLength(2)), PROMPTS[0], 5)


def test_closing_the_stream_stops_between_steps(tiny_target, drafters):
    decoder = make_decoder(tiny_target, drafters, "draft_model_noisy_k4", SamplingConfig())
    stream = decoder.generate(PROMPTS[0], 40)
    first = next(stream)
    stream.close()
    assert first.index == 0 and first.stop_reason is None
    with pytest.raises(StopIteration):
        next(stream)


# --------------------------------------------------------------------------- KV cache rollback


@pytest.mark.parametrize("keep", [1, 5, 7, 9])
def test_kv_rollback_matches_a_fresh_forward(tiny_target, keep):
    tokens = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    lm = CachedCausalLM(tiny_target.model)
    lm.forward(tokens[:6])
    lm.forward(tokens[6:])  # extra tokens, e.g. a draft
    assert lm.cached_length == 10
    lm.rollback(keep)
    assert lm.cached_length == keep
    follow = [7, 0, 2]
    after_rollback = lm.forward(follow, keep_logits=3)

    fresh = CachedCausalLM(tiny_target.model)
    reference = fresh.forward(tokens[:keep] + follow, keep_logits=3)
    torch.testing.assert_close(after_rollback, reference, atol=1e-4, rtol=0)
    # and against a plain forward pass without any cache
    with torch.no_grad():
        plain = tiny_target.model(input_ids=torch.tensor([tokens[:keep] + follow])).logits[0, -3:]
    torch.testing.assert_close(after_rollback, plain, atol=1e-4, rtol=0)


def test_kv_rollback_repeatedly_and_errors(tiny_target):
    lm = CachedCausalLM(tiny_target.model)
    context = [1, 2, 3]
    lm.forward(context)
    for draft in ([4, 5, 6], [7], [8, 9, 10, 11]):
        lm.forward(draft)
        lm.rollback(len(context) + 1)  # keep only the first drafted token
        context = context + draft[:1]
    assert lm.cached_length == len(context)
    got = lm.forward([12])
    with torch.no_grad():
        want = tiny_target.model(input_ids=torch.tensor([context + [12]])).logits[0, -1:]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    with pytest.raises(ValueError):
        lm.rollback(lm.cached_length + 1)
    lm.rollback(lm.cached_length)  # a no-op
    assert lm.forward_passes == 5


# --------------------------------------------------------------------------- metrics and events


def _count_forwards(model: torch.nn.Module):
    calls = []
    handle = model.register_forward_hook(lambda module, args, output: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("strategy", [None, "draft_model_noisy_k4", "early_exit_2_heuristic", "prompt_lookup_heuristic"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_metrics_definitions(strategy, temperature, tiny_target, drafters):
    calls, handle = _count_forwards(tiny_target.model)
    try:
        result = run_to_completion(make_decoder(tiny_target, drafters, strategy, SamplingConfig(temperature=temperature, seed=5)), PROMPTS[0], 30)
    finally:
        handle.remove()
    m = result.metrics
    events = result.events
    assert m.new_tokens == len(result.token_ids) == 30
    assert m.steps == len(events)
    assert m.target_forwards == m.steps + 1  # one target pass per step, plus the prompt prefill
    assert len(calls) == m.target_forwards  # counted on the model itself
    assert m.drafted == sum(len(e.draft) for e in events)
    assert m.accepted == sum(1 for e in events for t in e.draft if t.verdict == "accepted")
    assert m.mean_acceptance_length == pytest.approx(1 + m.accepted / m.steps)
    if strategy is None:
        assert m.drafted == 0 and m.acceptance_rate is None and m.steps == 30 and m.per_position_acceptance == []
    else:
        assert m.drafted > 0
        assert m.acceptance_rate == pytest.approx(m.accepted / m.drafted)
        drafting = [e for e in events if e.num_drafted]
        assert len(m.per_position_acceptance) == max(e.num_drafted for e in events)
        for i, share in enumerate(m.per_position_acceptance):
            assert share == pytest.approx(sum(1 for e in drafting if e.num_drafted > i and e.draft[i].verdict == "accepted") / len(drafting))
    assert m.wall_s > 0 and m.tokens_per_s is not None
    assert m.to_dict()["new_tokens"] == 30


def test_single_token_prompt_has_no_prefill(tiny_target, drafters):
    result = run_to_completion(make_decoder(tiny_target, drafters, "early_exit_1_k3", SamplingConfig()), PROMPTS[2], 12)
    assert result.metrics.target_forwards == result.metrics.steps


@pytest.mark.parametrize("strategy", [None, "draft_model_noisy_k4", "prompt_lookup_k4"])
def test_step_event_invariants(strategy, tiny_target, drafters):
    result = run_to_completion(make_decoder(tiny_target, drafters, strategy, SamplingConfig(temperature=1.0, seed=2)), PROMPTS[1], 30)
    context = len(PROMPTS[1])
    tokens = []
    for index, event in enumerate(result.events):
        assert event.index == index and event.context_length == context
        verdicts = [t.verdict for t in event.draft]
        n = event.num_accepted
        assert verdicts[:n] == ["accepted"] * n
        if n < len(verdicts):
            assert verdicts[n] == "rejected" and set(verdicts[n + 1 :]) <= {"unchecked"}
            assert event.output.kind == "recovered"
        else:
            assert event.output.kind == ("bonus" if verdicts else "baseline")
        for t in event.draft:
            checked = t.verdict != "unchecked"
            assert (t.target_prob is not None) == checked and (t.accept_prob is not None) == checked
            assert (t.uniform is not None) == checked
            if t.verdict == "accepted":
                assert t.uniform < t.accept_prob
            elif t.verdict == "rejected":
                assert t.uniform >= t.accept_prob
            assert (t.draft_prob is None) == (strategy == "prompt_lookup_k4")
        assert event.output.kind in OUTPUT_KINDS
        kinds = [t.kind for t in event.new_tokens]
        assert kinds == ["accepted"] * n + [event.output.kind]  # no EOS here, and drafts never overshoot the budget
        assert event.new_tokens[-1].token_id == event.output.token_id
        assert [t.token_id for t in event.new_tokens[:n]] == [t.token_id for t in event.draft[:n]]
        assert 0 < event.output.prob <= 1
        assert event.target_forwards == (2 if index == 0 else 1)
        assert (event.stop_reason is not None) == (index == len(result.events) - 1)
        tokens.extend(t.token_id for t in event.new_tokens)
        context += len(event.new_tokens)
    assert tokens == result.token_ids
    assert "".join(t.text for e in result.events for t in e.new_tokens) == "".join(f"t{i} " for i in tokens)
