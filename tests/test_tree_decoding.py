"""Tree strategies through the engine on tiny models: greedy identity, lossless sampling, one target pass per step."""

from __future__ import annotations

import pytest
import torch

from conftest import chi_square_critical, chi_square_statistic, sweep
from engine import SamplingConfig, SpeculativeDecoder, run_to_completion
from engine.api import build_decoder
from engine.errors import ConfigError
from engine.loading.model_cache import ModelCache
from engine.analysis.oracle import oracle_report
from engine.drafting.proposers.lookup_trees import FusedRetrievalTreeProposer, LookupTreeProposer, ngram_continuations
from engine.drafting.proposers.model_trees import DynamicShape, ModelTreeProposer, TreeDrafter, RsdShape, SpecTrShape, StaticShape
from engine.strategies import TREE_STRATEGIES, parse_strategy
from engine.decoding.tree import TreeDecoder
from test_engine_tiny import ALPHA, N_RUNS, PROMPTS, SAMPLINGS, exact_first_two, lookup_friendly_prompt
from test_self_speculation import first_two_counts_of

pytestmark = pytest.mark.usefixtures("single_thread")


def proposers(drafter):
    """One of each tree shape, small enough for fast tests."""
    return {
        "static": lambda: ModelTreeProposer(TreeDrafter(drafter), StaticShape((3, 2))),
        "dynamic": lambda: ModelTreeProposer(TreeDrafter(drafter), DynamicShape(width=2, nodes=5, depth=3)),
        "rsd": lambda: ModelTreeProposer(TreeDrafter(drafter), RsdShape((3, 2))),
        "spectr": lambda: ModelTreeProposer(TreeDrafter(drafter), SpecTrShape(drafts=3, depth=2)),
        "lookup": lambda: LookupTreeProposer(3, 1, 4, 3),
        "fused": lambda: FusedRetrievalTreeProposer(ModelTreeProposer(TreeDrafter(drafter), DynamicShape(width=2, nodes=3, depth=2)),
                                                    [3, 5, 7, 1, 2, 3, 5, 8, 8, 1], 3, 3, 1, 8),
    }


SHAPES = ["static", "dynamic", "rsd", "spectr", "lookup", "fused"]


@pytest.mark.parametrize("shape", SHAPES)
def test_greedy_tree_output_equals_the_baseline(shape, tiny_target, tiny_noisy_drafter):
    drafted = accepted = 0
    for prompt in PROMPTS:
        baseline = run_to_completion(SpeculativeDecoder(tiny_target), prompt, 30).token_ids
        result = run_to_completion(TreeDecoder(tiny_target, proposers(tiny_noisy_drafter.model)[shape]()), prompt, 30)
        assert result.token_ids == baseline
        drafted += result.metrics.drafted
        accepted += result.metrics.accepted
        for event in result.events:
            assert event.target_forwards == (1 if event.index else event.target_forwards)  # one verification pass
            assert [n.verdict for n in event.tree].count("root") == 1
            assert event.num_accepted == sum(n.verdict == "accepted" for n in event.tree)
            assert event.num_accepted + 1 >= len(event.new_tokens) or event.stop_reason
            if len(event.new_tokens) == event.num_accepted + 1:  # not cut by EOS: the last token is the target's own
                assert event.new_tokens[-1].kind == event.output.kind
                assert (event.output.kind == "baseline") == (len(event.tree) == 1)  # a drafted tree: recovered / bonus
        depth = max(max(n.depth for n in e.tree) for e in result.events)
        assert len(result.metrics.per_position_acceptance) == depth  # by depth, not one entry per node
    assert drafted > 0 and accepted > 0


def test_every_step_is_one_target_forward_pass(tiny_target, tiny_noisy_drafter):
    decoder = TreeDecoder(tiny_target, proposers(tiny_noisy_drafter.model)["static"]())
    result = run_to_completion(decoder, PROMPTS[0], 20)
    assert [e.target_forwards for e in result.events] == [2] + [1] * (len(result.events) - 1)  # step 0: + prefill
    assert result.metrics.target_forwards == len(result.events) + 1
    assert max(len(e.tree) for e in result.events) == 1 + 3 + 6
    assert oracle_report(result.events) is None  # the chain oracle does not price trees


def test_a_tree_hedges_where_a_chain_guesses(tiny_target, tiny_noisy_drafter):
    """With the same drafter, the static tree's accepted depth per step is at least the chain's top-1 path."""
    chain = run_to_completion(TreeDecoder(tiny_target, ModelTreeProposer(TreeDrafter(tiny_noisy_drafter.model), StaticShape((1, 1)))),
                              PROMPTS[0], 40)
    tree = run_to_completion(TreeDecoder(tiny_target, ModelTreeProposer(TreeDrafter(tiny_noisy_drafter.model), StaticShape((4, 2)))),
                             PROMPTS[0], 40)
    assert tree.metrics.mean_acceptance_length > chain.metrics.mean_acceptance_length


@pytest.mark.parametrize("shape", ["static", "dynamic"])
def test_the_target_as_its_own_tree_drafter_gets_every_level_accepted(shape, tiny_target):
    """Checks the drafter's cache bookkeeping across steps: the target drafting for itself puts its own
    argmax path in the tree, so every step accepts the full depth. A drafter cache that kept tree
    nodes instead of the accepted path would draft from a wrong context and fall short."""
    make = {"static": lambda: ModelTreeProposer(TreeDrafter(tiny_target.model), StaticShape((2, 2, 1))),
            "dynamic": lambda: ModelTreeProposer(TreeDrafter(tiny_target.model), DynamicShape(width=2, nodes=10, depth=3))}[shape]  # keeps all
    result = run_to_completion(TreeDecoder(tiny_target, make()), PROMPTS[0], 40)
    full = [e for e in result.events if e.stop_reason is None]
    assert len(full) >= 5
    assert all(e.num_accepted == max(n.depth for n in e.tree) == 3 for e in full)


def test_dynamic_tree_keeps_the_likeliest_nodes_and_stays_a_tree(tiny_target, tiny_noisy_drafter):
    proposer = ModelTreeProposer(TreeDrafter(tiny_noisy_drafter.model), DynamicShape(width=3, nodes=6, depth=4))
    proposer.start(PROMPTS[0])
    tree = proposer.propose_tree(PROMPTS[0], 10, SamplingConfig(), torch.Generator()).tree
    assert len(tree) - 1 == 6
    probs = tree.path_probs()
    assert all(probs[c] <= probs[p] + 1e-12 for c, p in enumerate(tree.parents) if p >= 0)
    assert all(p < c for c, p in enumerate(tree.parents))


def test_ngram_continuations_merge_into_a_tree():
    found = ngram_continuations([1, 2, 3, 9, 1, 2, 4, 1, 2, 3, 7, 1, 2], k=2, max_ngram=2, min_ngram=1, max_candidates=4)
    assert found == [(3, 7), (4, 1), (3, 9)]
    proposer = LookupTreeProposer(2, 1, 4, 2)
    tree = proposer.propose_tree([1, 2, 3, 9, 1, 2, 4, 1, 2, 3, 7, 1, 2], 5, SamplingConfig(), torch.Generator()).tree
    assert tree.children(0) == [1, 3] and [tree.tokens[c] for c in tree.children(1)] == [7, 9]  # 3 is shared


# Every verification rule under both samplings; the other shapes under one each (the rules are also
# checked exactly, by enumeration, in test_draft_tree.py).
SAMPLING_CASES = sweep(
    [("rsd", "t1"), ("rsd", "t0.7-k8-p0.9"), ("spectr", "t1"), ("spectr", "t0.7-k8-p0.9"),
     ("static", "t1"), ("dynamic", "t0.7-k8-p0.9"), ("lookup", "t1"), ("fused", "t0.7-k8-p0.9")],
    default=[("rsd", "t1"), ("spectr", "t0.7-k8-p0.9"), ("static", "t1"), ("dynamic", "t0.7-k8-p0.9"), ("lookup", "t1"),
             ("fused", "t0.7-k8-p0.9")])


@pytest.mark.parametrize(("shape", "sampling_name"), SAMPLING_CASES)
def test_sampling_first_two_tokens_follow_the_target(shape, sampling_name, tiny_target, tiny_noisy_drafter):
    """N_RUNS seeded runs: the first step's tree covers both positions (accepted, rejected among
    siblings, recovered and bonus paths); the joint of the first two tokens must match the target's."""
    settings = SAMPLINGS[sampling_name]
    reference = SamplingConfig(**settings)
    prompt = lookup_friendly_prompt(tiny_target.model, reference)
    expected = exact_first_two(tiny_target.model, prompt, reference)
    make = proposers(tiny_noisy_drafter.model)[shape]
    counts = first_two_counts_of(lambda seed: TreeDecoder(tiny_target, make(), SamplingConfig(**settings, seed=seed)), prompt)
    assert set(counts) <= set(expected), "a token pair the target cannot produce was generated"
    stat, df = chi_square_statistic(counts, expected, N_RUNS)
    critical = chi_square_critical(df, ALPHA)
    assert stat < critical, f"chi-square {stat:.1f} >= {critical:.1f} (df {df})"


def test_sampled_trees_reproduce_under_a_seed(tiny_target, tiny_noisy_drafter):
    for shape in ("rsd", "spectr"):
        runs = [run_to_completion(TreeDecoder(tiny_target, proposers(tiny_noisy_drafter.model)[shape](),
                                              SamplingConfig(temperature=1.0, seed=5)), PROMPTS[0], 20).token_ids
                for _ in range(2)]
        assert runs[0] == runs[1]


@pytest.mark.parametrize("name", TREE_STRATEGIES)
def test_every_tree_strategy_builds_and_is_greedy_identical(name, tiny_target, tiny_noisy_drafter):
    models = ModelCache(max_models=4, loader=lambda spec, progress=None: tiny_noisy_drafter)
    params = {} if name == "lookup_tree" else {"drafter": "tiny-noisy", "vocab_trim": 0}
    document = "unused" if name != "rasd_tree" else None
    if name == "rasd_tree":
        with pytest.raises(ConfigError, match="document"):
            build_decoder(parse_strategy(name, params), tiny_target, models, SamplingConfig())
        document = "t1 t2 t3 t4 t1 t2 t3 t4 t1 t2 t3"
    decoder = build_decoder(parse_strategy(name, params), tiny_target, models, SamplingConfig(), document=document)
    baseline = run_to_completion(SpeculativeDecoder(tiny_target), PROMPTS[1], 24).token_ids
    assert run_to_completion(decoder, PROMPTS[1], 24).token_ids == baseline


def test_bad_tree_shapes_are_clear_errors():
    for value, message in [("0,2", "children per depth"), ("9", "children per depth"), ("8,8,8", "at most 128")]:
        with pytest.raises(ConfigError, match=message):
            parse_strategy("static_tree", {"branching": value})
