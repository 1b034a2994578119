"""Draft heads on the target's own features (EAGLE, Medusa) and the hybrid copy + model tree.

Tiny models: the target's feature tap equals a fresh pass; chains and trees from the heads are greedy-identical
to the baseline and follow the target's distribution under sampling (chi-square on the first two tokens).
Real model: the shipped heads are greedy-identical to `ar` on every category of the prompt suite, and the
training command runs end to end on a tiny budget.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import chi_square_critical, chi_square_statistic, load_prompts, sweep
from engine import SamplingConfig, SpeculativeDecoder, build_decoder, encode_prompt, parse_strategy, run_to_completion
from engine.decoding.tree import TreeDecoder
from engine.drafting.policies import ConstantLength
from engine.drafting.proposers.feature_heads import EagleProposer, EagleTreeDrafter, MedusaHeadsDrafter
from engine.drafting.proposers.lookup_trees import FusedLookupTreeProposer
from engine.drafting.proposers.model_trees import DynamicShape, ModelTreeProposer, RsdShape, StaticShape
from engine.errors import ConfigError
from engine.loading.causal_lm import FeatureTap
from engine.loading.feature_drafters import EagleHead, MedusaHeads
from test_engine_tiny import ALPHA, N_RUNS, PROMPTS, SAMPLINGS, exact_first_two, lookup_friendly_prompt
from test_self_speculation import first_two_counts_of

pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.xdist_group("feature_heads")]  # one worker: later tests read what earlier ones totalled


@pytest.fixture(scope="module")
def heads(tiny_target):
    """Untrained but seeded heads for the tiny target: losslessness must not depend on their quality."""
    torch.manual_seed(0)
    eagle = EagleHead(tiny_target)
    eagle.init_from_target(tiny_target)
    medusa = MedusaHeads(tiny_target, 3)
    with torch.no_grad():
        for block in medusa.blocks:
            block.weight.normal_(0, 0.2)
    return eagle.eval().requires_grad_(False), medusa.eval().requires_grad_(False)


def decoders(target, eagle, medusa, sampling=SamplingConfig()):
    """One decoder of each kind, each with its own feature tap."""
    def chain(make, k):
        tap = FeatureTap()
        return SpeculativeDecoder(target, make(tap), ConstantLength(k), sampling, tap)

    def tree(make):
        tap = FeatureTap()
        return TreeDecoder(target, make(tap), sampling, tap)

    return {
        "eagle_chain": lambda: chain(lambda tap: EagleProposer(eagle, tap), 3),
        "medusa_chain": lambda: chain(lambda tap: MedusaHeadsDrafter(medusa, tap), 3),
        "eagle_dynamic": lambda: tree(lambda tap: ModelTreeProposer(EagleTreeDrafter(eagle, tap), DynamicShape(2, 5, 3))),
        "eagle_rsd": lambda: tree(lambda tap: ModelTreeProposer(EagleTreeDrafter(eagle, tap), RsdShape((3, 2)))),
        "medusa_tree": lambda: tree(lambda tap: ModelTreeProposer(MedusaHeadsDrafter(medusa, tap), StaticShape((3, 2)))),
        "hybrid": lambda: tree(lambda tap: FusedLookupTreeProposer(
            ModelTreeProposer(EagleTreeDrafter(eagle, tap), DynamicShape(2, 4, 2)), 3, 2, 3, 1)),
    }


@pytest.mark.parametrize("kind", ["eagle_chain", "eagle_dynamic"])
def test_the_feature_tap_equals_a_fresh_pass_over_the_committed_text(kind, tiny_target, heads):
    """After every step the tap holds one feature per committed token but the last, equal to a fresh pass's."""
    decoder = decoders(tiny_target, *heads)[kind]()
    tokens = list(PROMPTS[1])
    events = list(decoder.generate(PROMPTS[1], 20))
    checked = 0
    for event in decoder.generate(PROMPTS[1], 20):
        tokens += [t.token_id for t in event.new_tokens]
        if event.stop_reason:
            break
        rows = decoder.features.rows
        assert rows.shape[0] == len(tokens) - 1
        with torch.no_grad():
            fresh = tiny_target.model(input_ids=torch.tensor([tokens]), output_hidden_states=True).hidden_states[-1][0]
        torch.testing.assert_close(rows, fresh[:-1], atol=1e-4, rtol=1e-4)
        checked += 1
    assert checked >= 3 and len(events) == checked + 1


@pytest.mark.parametrize("kind", ["eagle_chain", "medusa_chain", "eagle_dynamic", "eagle_rsd", "medusa_tree", "hybrid"])
def test_greedy_output_equals_the_baseline(kind, tiny_target, heads):
    drafted = 0
    for prompt in PROMPTS:
        baseline = run_to_completion(SpeculativeDecoder(tiny_target), prompt, 24).token_ids
        result = run_to_completion(decoders(tiny_target, *heads)[kind](), prompt, 24)
        assert result.token_ids == baseline
        assert result.metrics.target_forwards == result.metrics.steps + (len(prompt) > 1)
        drafted += result.metrics.drafted
    assert drafted > 0


SAMPLING_CASES = sweep(
    [("eagle_chain", "t1"), ("eagle_chain", "t0.7-k8-p0.9"), ("medusa_chain", "t1"), ("eagle_dynamic", "t1"),
     ("eagle_rsd", "t0.7-k8-p0.9"), ("medusa_tree", "t1"), ("hybrid", "t1")],
    default=[("eagle_chain", "t0.7-k8-p0.9"), ("medusa_chain", "t1"), ("eagle_dynamic", "t1"), ("eagle_rsd", "t0.7-k8-p0.9"),
             ("medusa_tree", "t1"), ("hybrid", "t1")])


@pytest.mark.parametrize(("kind", "sampling_name"), SAMPLING_CASES)
def test_sampling_first_two_tokens_follow_the_target(kind, sampling_name, tiny_target, heads):
    settings = SAMPLINGS[sampling_name]
    reference = SamplingConfig(**settings)
    prompt = lookup_friendly_prompt(tiny_target.model, reference)
    expected = exact_first_two(tiny_target.model, prompt, reference)
    eagle, medusa = heads
    counts = first_two_counts_of(
        lambda seed: decoders(tiny_target, eagle, medusa, SamplingConfig(**settings, seed=seed))[kind](), prompt)
    assert set(counts) <= set(expected), "a token pair the target cannot produce was generated"
    stat, df = chi_square_statistic(counts, expected, N_RUNS)
    critical = chi_square_critical(df, ALPHA)
    assert stat < critical, f"chi-square {stat:.1f} >= {critical:.1f} (df {df})"


def test_heads_are_refused_where_they_cannot_work(real_model, model_cache):
    for name, params, message in [
        ("pearl", {"drafter": "eagle"}, "reads the target's features"),
        ("rasd", {"drafter": "medusa"}, "reads the target's features"),
        ("draft_model", {"drafter": "medusa", "length_policy": "confidence"}, "cannot stop inside the draft"),
        ("static_tree", {"drafter": "medusa", "branching": "2,1,1,1,1"}, "at most 4 deep"),
    ]:
        with pytest.raises(ConfigError, match=message):
            build_decoder(parse_strategy(name, params), real_model, model_cache, SamplingConfig(),
                          document="a document")


# --------------------------------------------------------------------------- the real model

CATEGORY_PROMPTS = {p["category"]: p for p in reversed(load_prompts())}  # the first prompt of each category
HEAD_STRATEGIES = [
    ("draft_model", {"drafter": "eagle", "k": 5, "vocab_trim": 8192}),
    ("draft_model", {"drafter": "medusa", "k": 4, "vocab_trim": 8192}),
    ("dynamic_tree", {"drafter": "eagle", "depth": 5, "width": 3, "nodes": 12}),
    ("static_tree", {"drafter": "medusa", "branching": "3,2,1"}),
    ("hybrid_tree", {}),
]


@pytest.fixture(scope="module")
def head_acceptance():
    return {}


@pytest.mark.slow
@pytest.mark.parametrize("category", sweep(sorted(CATEGORY_PROMPTS), default=["chat", "code_edit", "rag"]))
def test_every_head_strategy_is_greedy_identical_on_every_category(category, real_model, model_cache, head_acceptance):
    ids = encode_prompt(real_model.tokenizer, CATEGORY_PROMPTS[category]["prompt"])
    baseline = run_to_completion(build_decoder(parse_strategy("ar"), real_model, model_cache, SamplingConfig()), ids, 32)
    for name, params in HEAD_STRATEGIES:
        decoder = build_decoder(parse_strategy(name, params), real_model, model_cache, SamplingConfig())
        result = run_to_completion(decoder, ids, 32)
        assert result.token_ids == baseline.token_ids, f"{name} {params} diverged on {category}"
        key = f"{name} {params}"
        head_acceptance[key] = head_acceptance.get(key, 0) + result.metrics.accepted


@pytest.mark.slow
def test_every_head_strategy_had_drafts_accepted(head_acceptance):
    """Runs after the comparisons above: each head strategy's accept path was exercised on the real model."""
    if len(head_acceptance) < len(HEAD_STRATEGIES):
        pytest.skip("run together with test_every_head_strategy_is_greedy_identical_on_every_category")
    assert all(accepted > 0 for accepted in head_acceptance.values()), head_acceptance


@pytest.mark.slow
def test_train_heads_runs_end_to_end_on_a_tiny_budget(tmp_path, real_model):
    from engine.loading.trained_drafters import drafters_dir
    from specviz.cli import main

    (tmp_path / "token_frequency.safetensors").write_bytes(
        (drafters_dir(real_model.name) / "token_frequency.safetensors").read_bytes())
    argv = ["train-heads", "--out", str(tmp_path), "--data", str(tmp_path / "data.pt"), "--prompts", "7",
            "--max-new-tokens", "12", "--text-tokens", "300", "--eagle-steps", "2", "--medusa-steps", "2",
            "--batch", "2", "--window", "32", "--depth", "2"]
    assert main(argv) == 0
    for kind in ("eagle", "medusa"):
        config = json.loads((tmp_path / f"{kind}.json").read_text())
        assert config["training"]["steps"] == 2 and config["data"]["tokens"] > 0
        assert config["heldout"]["all"]["positions"] > 0
        assert (tmp_path / f"{kind}.safetensors").stat().st_size > 0
    card = (tmp_path / "HEADS.md").read_text()
    assert "| all |" in card and "eagle" in card and "medusa" in card
    assert "--eagle-steps 2" in (tmp_path / "heads.log").read_text()
