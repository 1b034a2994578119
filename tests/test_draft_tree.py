"""Draft trees: one-pass tree attention, cache compaction, and exact losslessness of every node rule."""

from __future__ import annotations

import itertools

import pytest
import torch

from engine.loading.causal_lm import CachedCausalLM
from engine.decoding.draft_tree import (
    DraftTree,
    plan_chosen,
    plan_iid,
    plan_without_replacement,
    spectr_rho,
    verify_tree_greedy,
    verify_tree_sampling,
)

pytestmark = pytest.mark.usefixtures("single_thread")

CONTEXT = [1, 5, 3, 9, 2, 7]


def fresh_logits(model, token_ids: list[int]) -> torch.Tensor:
    """The logits after token_ids from a forward pass with no cache."""
    with torch.inference_mode():
        return model(input_ids=torch.tensor([token_ids])).logits[0, -1]


def sample_tree() -> DraftTree:
    """root 2 -> {4 -> {6, 8 -> {1}}, 11 -> {3}}"""
    tree = DraftTree.rooted_at(CONTEXT[-1])
    a = tree.add(0, 4, 0.5)
    b = tree.add(0, 11, 0.3)
    tree.add(a, 6, 0.4)
    c = tree.add(a, 8, 0.3)
    tree.add(c, 1, 0.9)
    tree.add(b, 3, 0.2)
    return tree


def test_tree_structure_helpers():
    tree = sample_tree()
    assert tree.depths() == [0, 1, 1, 2, 2, 3, 2]
    assert tree.children(1) == [3, 4] and tree.path(5) == [1, 4, 5]
    assert tree.add(1, 8, 0.1) == 4  # an existing child is reused, not duplicated
    assert tree.path_probs()[5] == pytest.approx(0.5 * 0.3 * 0.9)
    mask = tree.attention_mask()
    assert mask[5].tolist() == [True, True, False, False, True, True, False]


def test_one_tree_pass_gives_each_node_the_logits_of_its_own_path(tiny_target):
    model = tiny_target.model
    tree = sample_tree()
    lm = CachedCausalLM(model)
    lm.forward(CONTEXT[:-1])
    logits = lm.forward_tree(tree.tokens, tree.parents)  # [N, vocab]
    assert logits.shape[0] == len(tree) and lm.cached_length == len(CONTEXT) - 1 + len(tree)
    for node in range(len(tree)):
        path = CONTEXT + [tree.tokens[i] for i in tree.path(node)]
        torch.testing.assert_close(logits[node], fresh_logits(model, path), atol=1e-4, rtol=1e-4)


def test_compacting_to_the_accepted_path_leaves_the_cache_of_the_plain_text(tiny_target):
    model = tiny_target.model
    tree = sample_tree()
    lm = CachedCausalLM(model)
    lm.forward(CONTEXT[:-1])
    lm.forward_tree(tree.tokens, tree.parents)
    accepted = [1, 4]  # 4 then 8
    base = len(CONTEXT) - 1
    lm.keep_positions(list(range(base)) + [base] + [base + i for i in accepted])
    assert lm.cached_length == len(CONTEXT) + len(accepted)
    text = CONTEXT + [tree.tokens[i] for i in accepted]
    next_logits = lm.forward([13])[-1]  # the next step feeds a new token on the compacted cache
    torch.testing.assert_close(next_logits, fresh_logits(model, text + [13]), atol=1e-4, rtol=1e-4)


def test_a_chain_through_forward_tree_equals_the_causal_forward(tiny_target):
    lm_tree, lm_chain = CachedCausalLM(tiny_target.model), CachedCausalLM(tiny_target.model)
    for lm in (lm_tree, lm_chain):
        lm.forward(CONTEXT[:3])
    chain = CONTEXT[3:]
    tree_logits = lm_tree.forward_tree(chain, [-1] + list(range(len(chain) - 1)))
    torch.testing.assert_close(tree_logits, lm_chain.forward(chain, keep_logits=len(chain)), atol=1e-4, rtol=1e-4)


def test_greedy_tree_verification_follows_the_target_argmax():
    tree = sample_tree()
    logits = torch.full((len(tree), 16), -5.0)
    logits[0, 4] = 5  # root -> 4 (node 1)
    logits[1, 8] = 5  # 4 -> 8 (node 4)
    logits[4, 12] = 5  # 8 -> 12, not a child: recovered
    verdict = verify_tree_greedy(tree, logits)
    assert verdict.accepted == (1, 4) and (verdict.next_token, verdict.next_kind) == (12, "recovered")
    assert verdict.tried == {1: 1.0, 2: 0.0, 3: 0.0, 4: 1.0, 5: 0.0}
    logits[4, 1] = 9  # now 8 -> 1 (node 5, a leaf): bonus after it
    logits[5, 0] = 9
    verdict = verify_tree_greedy(tree, logits)
    assert verdict.accepted == (1, 4, 5) and (verdict.next_token, verdict.next_kind) == (0, "bonus")


# --------------------------------------------------------------------------- exact enumeration of each node rule

VOCAB = 5


def dists():
    generator = torch.Generator().manual_seed(3)
    out = []
    for _ in range(4):
        p = torch.rand(VOCAB, generator=generator, dtype=torch.float64) ** 3
        q = torch.rand(VOCAB, generator=generator, dtype=torch.float64) ** 3
        q[0] = 0.0  # a token the drafter never proposes
        out.append((p / p.sum(), q / q.sum()))
    p = torch.tensor([0.0, 0.0, 0.5, 0.5, 0.0], dtype=torch.float64)  # disjoint-ish supports
    q = torch.tensor([0.6, 0.4, 0.0, 0.0, 0.0], dtype=torch.float64)
    out.append((p, q))
    out.append((q.clone(), q.clone()))  # identical
    return out


@pytest.mark.parametrize("case", range(6))
@pytest.mark.parametrize("m", [1, 2, 3])
def test_chosen_children_are_lossless_for_any_choice(case, m):
    p, _ = dists()[case]
    for candidates in itertools.permutations(range(VOCAB), m):
        out = plan_chosen(p, list(candidates)).output_distribution(VOCAB)
        torch.testing.assert_close(out, p, atol=1e-9, rtol=0)


@pytest.mark.parametrize("case", range(6))
@pytest.mark.parametrize("m", [1, 2, 3])
def test_children_sampled_without_replacement_are_lossless(case, m):
    p, q = dists()[case]
    support = [t for t in range(VOCAB) if q[t] > 0]
    total = torch.zeros(VOCAB, dtype=torch.float64)
    mass = 0.0
    for draws in itertools.permutations(support, min(m, len(support))):
        prob, left = 1.0, q.clone()
        for t in draws:  # the probability of drawing this ordered sample without replacement
            prob *= float(left[t] / left.sum())
            left[t] = 0.0
        mass += prob
        total += prob * plan_without_replacement(p, q, list(draws)).output_distribution(VOCAB)
    assert mass == pytest.approx(1.0)
    torch.testing.assert_close(total, p, atol=1e-9, rtol=0)


@pytest.mark.parametrize("case", range(6))
@pytest.mark.parametrize("k", [1, 2, 3])
def test_spectr_k_sequential_selection_is_lossless(case, k):
    p, q = dists()[case]
    total = torch.zeros(VOCAB, dtype=torch.float64)
    for draws in itertools.product(range(VOCAB), repeat=k):
        prob = float(torch.prod(q[list(draws)]))
        if prob > 0:
            total += prob * plan_iid(p, q, list(draws)).output_distribution(VOCAB)
    torch.testing.assert_close(total, p, atol=1e-9, rtol=0)


def test_spectr_rho_keeps_the_residual_valid_and_more_drafts_accept_more():
    p, q = dists()[0]
    rates = []
    for k in (1, 2, 4):
        rho = spectr_rho(p, q, k)
        beta = float(torch.minimum(q, p / rho).sum())
        assert 1.0 <= rho <= k and (1 - (1 - beta) ** k) / beta <= rho + 1e-9
        rates.append(1 - (1 - beta) ** k)  # P(some draft accepted)
    assert rates[0] == pytest.approx(float(torch.minimum(p, q).sum()))  # k = 1: plain speculative sampling
    assert rates[0] < rates[1] < rates[2]


def test_sampling_walk_draws_against_the_plans():
    tree = sample_tree()
    probs = torch.softmax(torch.randn(len(tree), 16, generator=torch.Generator().manual_seed(0)), -1)
    seen = set()
    generator = torch.Generator().manual_seed(1)
    for _ in range(300):
        verdict = verify_tree_sampling(tree, probs, generator)
        path = list(verdict.accepted)
        assert all(tree.parents[b] == a for a, b in zip([0] + path, path))  # a root-to-node path
        last = path[-1] if path else 0
        assert verdict.next_kind == ("bonus" if not tree.children(last) else "recovered")
        seen.add(tuple(path))
    assert len(seen) >= 4  # several branches get accepted
