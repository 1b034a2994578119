"""Optimal multi-draft acceptance: the LP bound, its closed form, and what our verifiers achieve, exactly."""

from __future__ import annotations

import doctest
import itertools
import math

import pytest
import torch
from scipy.optimize import linprog

import engine.analysis.optimal_acceptance as oa
from engine.decoding.draft_tree import plan_iid, plan_without_replacement
from engine.errors import ConfigError
from engine.analysis.optimal_acceptance import (
    SCHEMES,
    accept_some,
    achieved_acceptance,
    bottleneck,
    draft_joint_chosen_topk,
    draft_joint_iid,
    draft_joint_without_replacement,
    draft_sets,
    optimal_acceptance,
    parse_distribution,
    report,
)

pytestmark = pytest.mark.usefixtures("single_thread")

TOL = 1e-9


def random_pair(seed: int, vocab: int, zeros: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Peaked random p, q [vocab]; with zeros, q never proposes token 0 and p never wants the last token."""
    generator = torch.Generator().manual_seed(seed)
    p = torch.rand(vocab, generator=generator, dtype=torch.float64) ** 3
    q = torch.rand(vocab, generator=generator, dtype=torch.float64) ** 3
    if zeros:
        q[0], p[-1] = 0.0, 0.0
    return p / p.sum(), q / q.sum()


CASES = [(0, 3, 2), (1, 4, 2), (2, 4, 3), (3, 5, 2), (4, 5, 3), (5, 6, 2), (6, 3, 4), (7, 4, 1)]  # (seed, vocab, k)


def test_doc_examples():
    assert doctest.testmod(oa).failed == 0


def test_worked_example():
    r = report([0.5, 0.5], [0.9, 0.1], 2)
    assert r.single_draft == pytest.approx(0.6, abs=TOL)
    iid, without, topk = r.schemes
    assert (iid.optimum, without.optimum, topk.optimum) == pytest.approx((0.69, 1.0, 1.0), abs=1e-9)
    assert iid.achieved == pytest.approx(1 - (0.9 * (1 - 0.5 / (1.5844288770 * 0.9))) ** 2, abs=1e-8)
    assert iid.achieved == pytest.approx(0.6584428877, abs=1e-9)
    assert (without.achieved, topk.achieved) == pytest.approx((1.0, 1.0), abs=TOL)
    assert iid.bottleneck.tokens == (0,) and iid.bottleneck.all_drafts_in == pytest.approx(0.81)


def test_draft_joints_are_distributions_of_the_right_shape():
    q = torch.tensor([0.0, 0.5, 0.3, 0.2], dtype=torch.float64)
    iid = draft_joint_iid(q, 3)
    assert len(iid) == 3 ** 3 and sum(iid.values()) == pytest.approx(1.0, abs=TOL)
    assert iid[(1, 2, 1)] == pytest.approx(0.5 * 0.3 * 0.5)
    without = draft_joint_without_replacement(q, 2)
    assert len(without) == 3 * 2 and sum(without.values()) == pytest.approx(1.0, abs=TOL)
    assert without[(2, 3)] == pytest.approx(0.3 * 0.2 / 0.7)
    # more drafts than tokens the drafter can propose: every draw is a full ordering of the support
    assert {len(d) for d in draft_joint_without_replacement(q, 4)} == {3}
    assert draft_joint_chosen_topk(q, 2) == {(1, 2): 1.0}
    assert draft_joint_chosen_topk([0.25, 0.25, 0.5], 2) == {(2, 0): 1.0}  # ties: lower token id first


def test_draft_sets_merge_orders_and_repeats():
    sets = draft_sets(draft_joint_iid([0.9, 0.1], 2), vocab=2)
    assert sets == pytest.approx({(0,): 0.81, (0, 1): 0.18, (1,): 0.01})


@pytest.mark.parametrize("seed, vocab, k", CASES)
def test_no_verifier_beats_the_optimum_and_the_closed_form_agrees(seed, vocab, k):
    p, q = random_pair(seed, vocab)
    r = report(p, q, k)
    for result in r.schemes:
        assert 0.0 <= result.achieved <= result.optimum + TOL <= 1.0 + 2 * TOL, result
        assert result.bottleneck.bound == pytest.approx(result.optimum, abs=1e-8), result
    for result in r.schemes[:2]:  # sampled drafts contain the first draw: never worse than one draft
        assert result.optimum >= r.single_draft - TOL


@pytest.mark.parametrize("seed, vocab, k", CASES[:6])
def test_iid_closed_form_over_token_sets(seed, vocab, k):
    """alpha* = 1 - max over token sets H of [q(H)^k - p(H)] for k i.i.d. drafts (min cut)."""
    p, q = random_pair(seed, vocab)
    worst = max(float(q[list(h)].sum()) ** k - float(p[list(h)].sum())
                for size in range(vocab + 1) for h in itertools.combinations(range(vocab), size))
    assert optimal_acceptance(p, draft_joint_iid(q, k)).value == pytest.approx(1 - worst, abs=1e-8)


@pytest.mark.parametrize("scheme", ["iid", "without_replacement"])
def test_solving_over_draft_sets_equals_the_full_coupling_lp_over_tuples(scheme):
    """The set reduction is exact: the LP over pi(x_vec, y) for every ordered draft tuple gives the same alpha*."""
    p, q = random_pair(11, 4)
    joint = oa.DRAFT_JOINTS[scheme](q, 2)
    tuples, vocab = list(joint), len(p)
    n = len(tuples)
    a_eq = torch.zeros(n + vocab, n * vocab, dtype=torch.float64)
    for i in range(n):
        for y in range(vocab):
            a_eq[i, i * vocab + y] = a_eq[n + y, i * vocab + y] = 1.0
    gain = [-1.0 if y in tuples[i] else 0.0 for i in range(n) for y in range(vocab)]
    full = linprog(gain, A_eq=a_eq.numpy(), b_eq=list(joint.values()) + p.tolist(), bounds=(0, None), method="highs")
    assert full.success
    assert optimal_acceptance(p, joint).value == pytest.approx(-full.fun, abs=1e-8)


@pytest.mark.parametrize("seed, vocab, k", CASES[:5])
def test_the_lp_plan_is_a_coupling_with_the_reported_value(seed, vocab, k):
    p, q = random_pair(seed, vocab)
    joint = draft_joint_without_replacement(q, k)
    coupling = optimal_acceptance(p, joint)
    sets = draft_sets(joint, vocab)
    assert coupling.sets == tuple(sets)
    torch.testing.assert_close(coupling.set_probs, torch.tensor(list(sets.values()), dtype=torch.float64))
    torch.testing.assert_close(coupling.plan.sum(1), coupling.set_probs, atol=1e-9, rtol=0)
    torch.testing.assert_close(coupling.plan.sum(0), p, atol=1e-9, rtol=0)
    matched = sum(float(coupling.plan[s, y]) for s, members in enumerate(coupling.sets) for y in members)
    assert matched == pytest.approx(coupling.value, abs=1e-9)


def test_iid_achieved_equals_enumerating_every_ordered_draw():
    """The factorised k-SEQ acceptance equals the sum over all vocab^k draws of plan_iid's P(accept some)."""
    for seed, vocab, k in [(0, 4, 3), (5, 3, 2), (6, 5, 2)]:
        p, q = random_pair(seed, vocab)
        brute = 0.0
        for draws, prob in draft_joint_iid(q, k).items():
            refused = math.prod(1 - a for a in plan_iid(p, q, list(draws)).accept_probs)
            brute += prob * (1 - refused)
        assert achieved_acceptance(p, q, k, "iid") == pytest.approx(brute, abs=1e-12)


@pytest.mark.parametrize("seed, vocab, k", [(0, 4, 3), (2, 5, 2), (6, 3, 4), (8, 5, 4), (None, 5, 3)])
def test_rsd_achieved_equals_the_plan_of_every_complete_ordered_draw(seed, vocab, k):
    """The prefix-tree walk equals the sum over every ordered draw of plan_without_replacement's P(accept some)."""
    if seed is None:  # the target wants token 0, the drafter spreads out: few sure acceptances to skip
        p = torch.tensor([1.0] + [1e-3] * (vocab - 1), dtype=torch.float64)
        p, q = p / p.sum(), torch.full((vocab,), 1.0 / vocab, dtype=torch.float64)
    else:
        p, q = random_pair(seed, vocab)
    brute = sum(prob * accept_some(plan_without_replacement(p, q, list(draws)))
                for draws, prob in draft_joint_without_replacement(q, k).items())
    assert achieved_acceptance(p, q, k, "without_replacement") == pytest.approx(brute, abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_one_draft_every_scheme_reaches_the_classic_optimum(seed):
    p, q = random_pair(seed, 5)
    single = float(torch.minimum(p, q).sum())
    for scheme in ("iid", "without_replacement"):
        assert optimal_acceptance(p, oa.DRAFT_JOINTS[scheme](q, 1)).value == pytest.approx(single, abs=TOL)
        assert achieved_acceptance(p, q, 1, scheme) == pytest.approx(single, abs=TOL)


@pytest.mark.parametrize("seed, vocab, k", CASES[:4])
def test_chosen_topk_is_optimal_for_its_drafts(seed, vocab, k):
    p, q = random_pair(seed, vocab)
    top = next(iter(draft_joint_chosen_topk(q, k)))
    mass = float(p[list(top)].sum())
    assert optimal_acceptance(p, {top: 1.0}).value == pytest.approx(mass, abs=TOL)
    assert achieved_acceptance(p, q, k, "chosen_topk") == pytest.approx(mass, abs=TOL)


@pytest.mark.parametrize("k", [2, 3])
def test_drafting_from_the_target_itself_is_always_accepted(k):
    p, _ = random_pair(9, 5, zeros=False)
    for scheme in ("iid", "without_replacement"):
        assert optimal_acceptance(p, oa.DRAFT_JOINTS[scheme](p, k)).value == pytest.approx(1.0, abs=TOL)
        assert achieved_acceptance(p, p, k, scheme) == pytest.approx(1.0, abs=TOL)


def test_more_drafts_never_lower_the_optimum():
    p, q = random_pair(3, 6)
    for scheme in SCHEMES:
        values = [optimal_acceptance(p, oa.DRAFT_JOINTS[scheme](q, k)).value for k in range(1, 5)]
        assert all(b >= a - TOL for a, b in zip(values, values[1:])), (scheme, values)
        assert values[-1] > values[0] + 0.05, (scheme, values)


def test_disjoint_supports_cannot_be_accepted():
    p, q = [0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.7, 0.3]
    for result in report(p, q, 3).schemes[:2]:
        assert result.optimum == pytest.approx(0.0, abs=TOL) and result.achieved == pytest.approx(0.0, abs=TOL)


@pytest.mark.parametrize(
    "p, q, k, field, message",
    [
        ([0.5, -0.1, 0.6], [0.3, 0.3, 0.4], 2, "p", "negative"),
        ([0.5, 0.5], [0.3, 0.3, 0.4], 2, "q", "has 3 entries but p has 2"),
        ([1.0], [1.0], 1, "p", "has 1 entries"),
        ([1.0] * 13, [1.0] * 13, 1, "p", "has 13 entries"),
        ([0.5, float("nan")], [0.5, 0.5], 1, "p", "not a finite number"),
        ([0.5, 0.5], [0.0, 0.0], 1, "q", "all zero"),
        ([0.5, 0.5], [0.5, 0.5], 0, "k", "between 1 and 4"),
        ([0.5, 0.5], [0.5, 0.5], 5, "k", "between 1 and 4"),
        ([0.5, 0.5], [0.5, 0.5], 2.5, "k", "whole number"),
        ([0.5, 0.5], [0.5, 0.5], True, "k", "whole number"),
        ([0.5, 0.5], [0.5, 0.5], "2", "k", "whole number"),
        (["a", 0.5], [0.5, 0.5], 1, "p", "list of numbers"),
    ],
)
def test_bad_input_raises_config_error(p, q, k, field, message):
    with pytest.raises(ConfigError, match=message) as info:
        report(p, q, k)
    assert info.value.field == field


def test_bad_rule_and_bad_joint_raise_config_error():
    with pytest.raises(ConfigError, match="unknown draft scheme 'greedy'"):
        achieved_acceptance([0.5, 0.5], [0.5, 0.5], 1, "greedy")
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        optimal_acceptance([0.5, 0.5], {(0, 2): 1.0})
    with pytest.raises(ConfigError, match="sum to 0.5"):
        optimal_acceptance([0.5, 0.5], {(0, 1): 0.5})
    with pytest.raises(ConfigError, match="is empty"):
        bottleneck([0.5, 0.5], {})


def test_parse_distribution():
    assert parse_distribution("p", " 5, 3;2 ").tolist() == pytest.approx([0.5, 0.3, 0.2])
    assert parse_distribution("q", "1 1 2").tolist() == pytest.approx([0.25, 0.25, 0.5])
    for text, message in [("", "is empty"), ("  , ", "is empty"), (None, "is empty"),
                          ("0.5, abc", "'abc' is not a number"), ("-1, 2", "negative"), ("0, 0, 0", "all zero"),
                          ("1", "has 1 entries"), ("1, inf", "not a finite number")]:
        with pytest.raises(ConfigError, match=message) as info:
            parse_distribution("q", text)
        assert info.value.field == "q" and str(info.value).startswith("q: ")
