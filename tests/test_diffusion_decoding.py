"""Diffusion drafting through the engine: the lattice, causal path search, ADL, losslessness.

Tiny-model tests use a stand-in block drafter (a fixed random table indexed by the last context
token: a legitimate BlockDrafter, its output a function of the context alone); the real-model
tests use the shipped masked-diffusion drafter.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import TINY_VOCAB, chi_square_critical, chi_square_statistic, load_prompts, sweep
from engine.events import StepFeedback
from engine import SamplingConfig, SpeculativeDecoder, run_to_completion
from engine.api import build_decoder, encode_prompt
from engine.drafting.diffusion_drafter import load_diffusion_drafter
from engine.errors import ConfigError, ModelLoadError
from engine.loading.model_cache import ModelCache
from engine.drafting.policies import ConstantLength, DiffusionDraftLength
from engine.drafting.proposers.diffusion import DiffusionProposer
from engine.strategies import parse_strategy
from engine.drafting.token_lattice import (
    DrafterCausalScorer,
    LatticePath,
    NgramCausalScorer,
    TokenLattice,
    causal_path_search,
)
from test_engine_tiny import ALPHA, N_RUNS, PROMPTS, SAMPLINGS, exact_first_two, lookup_friendly_prompt
from test_self_speculation import first_two_counts_of

pytestmark = pytest.mark.usefixtures("single_thread")

BLOCK = 4


class TableBlockDrafter:
    """A stand-in masked-diffusion drafter: logits [L, V] = a fixed random table row picked by the last context token."""

    def __init__(self, seed: int = 3, scale: float = 2.0):
        generator = torch.Generator().manual_seed(seed)
        self.table = torch.randn(TINY_VOCAB, BLOCK, TINY_VOCAB, generator=generator) * scale  # [last token, L, V]
        self.calls = 0

    def block_logits(self, context: list[int], length: int) -> torch.Tensor:
        self.calls += 1
        return self.table[context[-1], :length].clone()


class FixedScorer:
    """A causal scorer from a dict: (previous path token, token) -> probability (default 0.5)."""

    name = "fixed"

    def __init__(self, probs: dict[tuple[int, int], float]):
        self.probs = probs

    def start(self, prompt_ids):
        pass

    def score(self, context, paths, candidates):
        return [[math.log(self.probs.get(((path or context)[-1], t), 0.5)) for t in tokens]
                for path, tokens in zip(paths, candidates)]


def diffusion(search="cps", scorer=None, drafter=None, **kwargs):
    return DiffusionProposer(drafter or TableBlockDrafter(), BLOCK, search, scorer or NgramCausalScorer(), 0.5, 3, 3,
                             **kwargs)


# --------------------------------------------------------------------------- lattice and path search


def test_lattice_keeps_each_positions_top_candidates_and_skips_impossible_tokens():
    probs = torch.tensor([[0.1, 0.6, 0.3, 0.0], [0.0, 0.0, 1.0, 0.0]])
    lattice = TokenLattice.from_probs(probs, 3)
    assert lattice.candidate_ids.tolist()[0] == [1, 2, 0] and lattice.top1(2) == [1, 2]
    assert lattice.candidate_probs[1].tolist() == [1.0, 0.0, 0.0]  # one real candidate: the rest has probability 0
    path = causal_path_search(lattice, 2, [0], FixedScorer({}), 1.0, beam=4)[0]
    assert path.tokens == [1, 2] and path.ranks == [0, 0]  # zero-probability candidates are never taken


def test_cps_follows_the_worked_example_and_top1_without_a_causal_score():
    the, a, cat = 1, 2, 3
    lattice = TokenLattice(torch.tensor([[the, a], [the, cat]]), torch.tensor([[0.6, 0.4], [0.5, 0.4]]))
    scorer = FixedScorer({(the, the): 0.01, (the, cat): 0.3, (a, the): 0.01, (a, cat): 0.01})
    assert causal_path_search(lattice, 2, [0], None, 0.0, beam=2)[0].tokens == [the, the]  # top1
    assert causal_path_search(lattice, 2, [0], scorer, 0.0, beam=2)[0].tokens == [the, the]  # weight 0: top1
    best = causal_path_search(lattice, 2, [0], scorer, 1.0, beam=2)[0]
    assert best.tokens == [the, cat] and best.ranks == [0, 1]
    assert best.score == pytest.approx(math.log(0.6) + math.log(0.5) + math.log(0.4) + math.log(0.3))
    assert [math.exp(c) for c in best.causal_logprobs] == pytest.approx([0.5, 0.3])


def test_a_wider_beam_finds_a_path_a_greedy_beam_misses():
    # Position 0: token 1 looks best alone, but every continuation after it is causally implausible.
    lattice = TokenLattice(torch.tensor([[1, 2], [3, 4]]), torch.tensor([[0.55, 0.45], [0.5, 0.5]]))
    scorer = FixedScorer({(1, 3): 0.01, (1, 4): 0.01, (2, 3): 0.9, (2, 4): 0.1})
    assert causal_path_search(lattice, 2, [0], scorer, 1.0, beam=1)[0].tokens[0] == 1
    assert causal_path_search(lattice, 2, [0], scorer, 1.0, beam=2)[0].tokens == [2, 3]


def test_a_path_ends_at_eos():
    lattice = TokenLattice(torch.tensor([[5, 1], [9, 1], [3, 1]]), torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1]]))
    beams = causal_path_search(lattice, 3, [0], None, 0.0, beam=3, eos_ids={9})
    assert beams[0].tokens == [5, 9]  # not extended after the EOS
    assert all(len(b.tokens) == 3 for b in beams[1:] if 9 not in b.tokens)


def test_ngram_scorer_counts_the_contexts_continuations_with_add_one_smoothing():
    scorer = NgramCausalScorer(max_ngram=2)
    scores = scorer.score([5, 6, 7, 5, 6, 8, 5], [[]], [[6, 9]])[0]
    assert [math.exp(s) for s in scores] == pytest.approx([0.75, 0.25])
    # after the path [6] the 2-gram (5, 6) was followed by 7 and 8 once each
    assert [math.exp(s) for s in scorer.score([5, 6, 7, 5, 6, 8, 5], [[6]], [[7, 8, 1]])[0]] == pytest.approx([0.4, 0.4, 0.2])
    assert [math.exp(s) for s in scorer.score([1, 2], [[3]], [[4, 5]])[0]] == pytest.approx([0.5, 0.5])  # unseen: uniform


def test_drafter_scorer_equals_a_fresh_forward_over_each_path(tiny_noisy_drafter):
    model = tiny_noisy_drafter.model
    scorer = DrafterCausalScorer(model)
    scorer.start([])
    context = [3, 1, 4, 1, 5]
    for round_ in range(2):  # a second search on a longer context reuses the cropped cache
        first = scorer.score(context, [[]], [[2, 7]])[0]
        second = scorer.score(context, [[2], [7]], [[0, 9], [6]])
        third = scorer.score(context, [[2, 0], [7, 6]], [[8], [8]])
        for path, tokens, got in [([], [2, 7], first), ([2], [0, 9], second[0]), ([7], [6], second[1]),
                                  ([2, 0], [8], third[0]), ([7, 6], [8], third[1])]:
            with torch.no_grad():
                fresh = torch.log_softmax(model(input_ids=torch.tensor([context + path])).logits[0, -1].float(), -1)
            assert got == pytest.approx([float(fresh[t]) for t in tokens], abs=1e-4)
        assert scorer.passes == 3  # one pass per search position, whatever the beam
        context = context + [2, 0, 8]


# --------------------------------------------------------------------------- ADL


def test_adl_follows_the_worked_example():
    policy = DiffusionDraftLength(4, 8)
    assert policy.decide()[0] == 4
    policy.update(StepFeedback(3, 3, generated=3))
    assert (policy.ema, policy.ema_generated, policy.decide()[0]) == (3.0, 5.5, 4)
    policy.update(StepFeedback(4, 0, generated=8))
    k, reason, inputs = policy.decide()
    assert (policy.ema, policy.ema_generated, k) == (1.5, 6.75, 3)
    assert "0 of 4 accepted" in reason and "set by the accepted length" in reason and inputs["signal"] == 1.5


def test_adl_caps_the_length_by_where_the_drafter_ends_its_text():
    """Accepting everything the drafter wrote up to its EOS: no "+1 beyond" past where its text ends."""
    policy = DiffusionDraftLength(4, 8)
    for generated in [3] * 12 + [2, 3]:
        policy.update(StepFeedback(generated, generated, generated=generated))
    k, reason, _ = policy.decide()
    assert round(policy.ema) + 1 == 4 and k == math.ceil(policy.ema_generated - 1e-9) == 3
    assert "set by the generated length" in reason


# --------------------------------------------------------------------------- through the engine (tiny models)


@pytest.mark.parametrize("search", ["cps", "cps-drafter", "top1"])
def test_greedy_diffusion_output_equals_the_baseline(search, tiny_target, tiny_noisy_drafter):
    drafted = accepted = 0
    for prompt in PROMPTS:
        baseline = run_to_completion(SpeculativeDecoder(tiny_target), prompt, 30).token_ids
        scorer = DrafterCausalScorer(tiny_noisy_drafter.model) if search == "cps-drafter" else None
        policy = DiffusionDraftLength(2, BLOCK)
        proposer = diffusion(search.split("-")[0], scorer=scorer)
        result = run_to_completion(SpeculativeDecoder(tiny_target, proposer, policy), prompt, 30)
        assert result.token_ids == baseline
        drafted += result.metrics.drafted
        accepted += result.metrics.accepted
        for event in result.events:
            if not event.draft:
                continue
            assert len(event.lattice) == BLOCK  # the whole block is shown, proposed or not
            path = [c.path_token_id for c in event.lattice if c.path_token_id is not None]
            assert path == [d.token_id for d in event.draft]
            assert all(c.path_token_id is None for c in event.lattice[len(event.draft):])
            for column in event.lattice[: len(event.draft)]:
                ranked = [c.token_id for c in column.candidates]
                assert column.path_rank is None or ranked[column.path_rank] == column.path_token_id
                assert (column.causal_prob is not None) == (search != "top1")
                assert [c.prob for c in column.candidates] == sorted((c.prob for c in column.candidates), reverse=True)
            if search == "top1":
                assert all(c.path_rank == 0 for c in event.lattice[: len(event.draft)])
    assert drafted > accepted > 0


def test_each_step_is_one_drafter_pass_and_one_target_pass(tiny_target):
    drafter = TableBlockDrafter()
    result = run_to_completion(SpeculativeDecoder(tiny_target, diffusion(drafter=drafter), ConstantLength(3)), PROMPTS[0], 20)
    drafting_steps = sum(1 for e in result.events if e.decision.allowed > 0)
    assert drafter.calls == drafting_steps
    assert result.metrics.target_forwards == result.metrics.steps + 1


def test_the_draft_ends_at_the_drafters_eos_and_adl_hears_of_it(tiny_target):
    class EosDrafter(TableBlockDrafter):
        def block_logits(self, context, length):
            logits = super().block_logits(context, length)
            logits[0, 7], logits[1, 7] = -100.0, 100.0  # the drafter's text ends at block position 1
            return logits

    policy = DiffusionDraftLength(4, BLOCK)
    proposer = diffusion("top1", drafter=EosDrafter(), eos_ids={7})
    proposal = proposer.propose(PROMPTS[0], 4, SamplingConfig(), torch.Generator())
    assert len(proposal.token_ids) == 2 and proposal.token_ids[-1] == 7
    assert "ends with EOS at position 2" in proposal.info["summary"]
    assert proposal.generated == 2  # the proposal says how far the drafter's text ran; the loop tells the policy
    policy.update(StepFeedback(2, 2, generated=proposal.generated))
    assert policy.decide()[2]["generated"] == 2


SAMPLING_CASES = sweep([("cps", "t1"), ("cps", "t0.7-k8-p0.9"), ("top1", "t1"), ("top1", "t0.7-k8-p0.9")],
                       default=[("cps", "t0.7-k8-p0.9"), ("top1", "t1")])


@pytest.mark.parametrize(("search", "sampling_name"), SAMPLING_CASES)
def test_sampling_first_two_tokens_follow_the_target(search, sampling_name, tiny_target):
    """N_RUNS seeded runs drafting 2 tokens: the joint of the first two output tokens must be the target's.
    cps verifies a point-mass draft; top1 under sampling draws each position from its own q."""
    settings = SAMPLINGS[sampling_name]
    reference = SamplingConfig(**settings)
    prompt = lookup_friendly_prompt(tiny_target.model, reference)
    expected = exact_first_two(tiny_target.model, prompt, reference)
    drafter = TableBlockDrafter(scale=1.0)
    make = lambda seed: SpeculativeDecoder(tiny_target, diffusion(search, drafter=drafter), ConstantLength(2),
                                           SamplingConfig(**settings, seed=seed))
    counts = first_two_counts_of(make, prompt)
    assert set(counts) <= set(expected), "a token pair the target cannot produce was generated"
    stat, df = chi_square_statistic(counts, expected, N_RUNS)
    critical = chi_square_critical(df, ALPHA)
    assert stat < critical, f"chi-square {stat:.1f} >= {critical:.1f} (df {df})"


def test_sampled_diffusion_drafts_reproduce_under_a_seed(tiny_target):
    runs = [run_to_completion(SpeculativeDecoder(tiny_target, diffusion("top1"), ConstantLength(3),
                                                 SamplingConfig(temperature=1.0, seed=5)), PROMPTS[1], 24).token_ids
            for _ in range(2)]
    assert runs[0] == runs[1]


# --------------------------------------------------------------------------- the strategy


def test_strategy_validation_is_clear():
    for params, field in [({"k": "9"}, "k"), ({"search": "beam"}, "search"), ({"causal": "oracle"}, "causal"),
                          ({"causal_weight": "-1"}, "causal_weight"), ({"length_policy": "specdec"}, "length_policy"),
                          ({"candidates": "0"}, "candidates")]:
        with pytest.raises(ConfigError) as error:
            parse_strategy("diffusion", params)
        assert error.value.field == field


def test_a_target_without_a_trained_diffusion_drafter_is_a_clear_error(tiny_target):
    with pytest.raises(ModelLoadError, match="train-diffusion"):
        build_decoder(parse_strategy("diffusion"), tiny_target, ModelCache(), SamplingConfig())


@pytest.mark.slow
def test_max_k_beyond_the_drafters_block_is_a_clear_error(real_model, model_cache):
    with pytest.raises(ConfigError, match="fills 8 positions"):
        build_decoder(parse_strategy("diffusion", {"max_k": "12"}), real_model, model_cache, SamplingConfig())


@pytest.mark.slow
def test_vocab_trim_keeps_the_drafters_logits_on_the_kept_tokens(real_model):
    full = load_diffusion_drafter(real_model)
    trimmed = load_diffusion_drafter(real_model, vocab_trim=8192)
    context = encode_prompt(real_model.tokenizer, "Name three colours.")
    a, b = full.block_logits(context, 8), trimmed.block_logits(context, 8)
    kept = torch.softmax(b, -1) > 0
    assert int(kept[0].sum()) == 8192
    torch.testing.assert_close(b[kept], a[kept], atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.exhaustive  # the default run: test_engine_real and the golden traces (three diffusion settings)
def test_greedy_diffusion_equals_the_baseline_on_every_category(real_model, model_cache):
    """The default (CPS, n-gram causal score, ADL): one prompt per category of the prompt suite, 24 new
    tokens (test_engine_real runs it at 40 on three; top1 and the drafter scorer are checked on tiny models)."""
    params = {}
    prompts = {}
    for p in load_prompts():
        prompts.setdefault(p["category"], p)
    drafted = accepted = 0
    for prompt in prompts.values():
        ids = encode_prompt(real_model.tokenizer, prompt["prompt"])
        baseline = run_to_completion(build_decoder(parse_strategy("ar"), real_model, model_cache, SamplingConfig()), ids, 24)
        result = run_to_completion(build_decoder(parse_strategy("diffusion", params), real_model, model_cache,
                                                 SamplingConfig()), ids, 24)
        assert result.token_ids == baseline.token_ids, prompt["id"]
        drafted += result.metrics.drafted
        accepted += result.metrics.accepted
        assert all(len(e.lattice) == 8 for e in result.events if e.draft)
    assert drafted > accepted > 0
