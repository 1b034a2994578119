"""The verifiers: exact output distributions by enumeration, a Monte-Carlo check, greedy cases.

For one position, rejection sampling outputs x with probability
    P(out = x) = sum_d q(d) [ a(d) 1{x = d} + (1 - a(d)) r_d(x) ]
where a = acceptance_probability and r_d = residual_distribution. Losslessness means this equals
the target distribution p for every q (including a one-hot q, i.e. a drafter without probabilities).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from engine.sampling import SamplingConfig, logits_to_probs
from engine.decoding.verification import (
    acceptance_probability,
    residual_distribution,
    verify_greedy,
    verify_rejection_sampling,
)

pytestmark = pytest.mark.usefixtures("single_thread")

ATOL = 1e-6


def exact_single_position(p: torch.Tensor, q: torch.Tensor | None, draft_token: int | None = None) -> torch.Tensor:
    """Exact output distribution of one verified position (float64), from the module's own pieces.

    q given: the drafter samples d ~ q. q None: the drafter deterministically proposes draft_token
    (one-hot drafter, e.g. n-gram lookup).
    """
    p64 = p.double()
    out = torch.zeros_like(p64)
    drafts = [(d, float(q[d])) for d in range(len(p)) if float(q[d]) > 0] if q is not None else [(draft_token, 1.0)]
    for d, q_d in drafts:
        a = acceptance_probability(None if q is None else float(q[d]), float(p[d]))
        residual = residual_distribution(p, q, d).double()
        out[d] += q_d * a
        out += q_d * (1.0 - a) * residual
    return out


def normalised(values) -> torch.Tensor:
    t = torch.tensor(values, dtype=torch.float32)
    return t / t.sum()


HAND_MADE = [
    # (target p, draft q)
    ([0.5, 0.3, 0.2], [0.8, 0.1, 0.1]),  # the module docstring's worked example
    ([0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]),  # reversed
    ([0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1]),  # uniform target
    ([0.6, 0.0, 0.4, 0.0, 0.0], [0.1, 0.5, 0.1, 0.2, 0.1]),  # drafter proposes tokens the target never emits
    ([0.05, 0.05, 0.9], [0.05, 0.05, 0.9]),  # identical: never rejected
    ([0.0, 1.0, 0.0], [0.5, 0.0, 0.5]),  # disjoint supports: always rejected
    ([0.3, 0.3, 0.2, 0.1, 0.1], [0.0, 0.0, 0.0, 0.0, 1.0]),  # one-hot q given explicitly
]


@pytest.mark.parametrize("p, q", HAND_MADE)
def test_single_position_output_equals_target_with_draft_probs(p, q):
    p, q = normalised(p), normalised(q)
    out = exact_single_position(p, q)
    torch.testing.assert_close(out, p.double(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("p", [row for row, _ in HAND_MADE])
def test_single_position_output_equals_target_for_one_hot_drafter(p):
    """draft_probs None (n-gram): whatever fixed token is proposed, the output is still p."""
    p = normalised(p)
    for draft_token in range(len(p)):
        out = exact_single_position(p, None, draft_token)
        torch.testing.assert_close(out, p.double(), atol=ATOL, rtol=0)


def test_enumeration_detects_a_wrong_residual():
    """Sanity check of the method: resampling from p itself (a classic bug) is not lossless."""
    p, q = normalised([0.5, 0.3, 0.2]), normalised([0.8, 0.1, 0.1])
    out = torch.zeros(3, dtype=torch.float64)
    for d in range(3):
        a = acceptance_probability(float(q[d]), float(p[d]))
        out[d] += q[d] * a
        out += q[d] * (1 - a) * p.double()  # wrong: should be the residual max(0, p - q)
    assert (out - p.double()).abs().max() > 0.05


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingConfig(temperature=1.0),
        SamplingConfig(temperature=0.6),
        SamplingConfig(temperature=1.7, top_k=3),
        SamplingConfig(temperature=1.0, top_p=0.7),
        SamplingConfig(temperature=0.8, top_k=4, top_p=0.9),
    ],
    ids=["t1", "t0.6", "t1.7-k3", "t1-p0.7", "t0.8-k4-p0.9"],
)
def test_single_position_lossless_after_sampling_transforms(sampling):
    target_logits = torch.tensor([[2.0, 1.2, 0.3, -0.4, -1.5], [0.1, 0.2, 3.0, -2.0, 0.5]])
    draft_logits = torch.tensor([[0.5, 2.2, 0.1, 1.0, -0.5], [1.5, -0.3, 0.4, 0.9, 0.0]])
    p_rows = logits_to_probs(target_logits, sampling)
    q_rows = logits_to_probs(draft_logits, sampling)
    for p, q in zip(p_rows, q_rows):
        torch.testing.assert_close(exact_single_position(p, q), p.double(), atol=ATOL, rtol=0)
        for draft_token in range(len(p)):  # one-hot drafter, same transformed target
            torch.testing.assert_close(exact_single_position(p, None, draft_token), p.double(), atol=ATOL, rtol=0)


# --------------------------------------------------------------------------- two-token chains

VOCAB = 3


def _conditional(table: dict, prefix: tuple[int, ...]) -> torch.Tensor:
    return normalised(table[prefix])


# Prefix-dependent hand-made conditionals: p(x1), p(x2 | x1), p(x3 | x1, x2) (the bonus row).
TARGET = {
    (): [0.5, 0.3, 0.2],
    (0,): [0.1, 0.6, 0.3], (1,): [0.7, 0.2, 0.1], (2,): [0.2, 0.2, 0.6],
    **{(a, b): [0.2 + 0.1 * a, 0.5 - 0.1 * b, 0.3 + 0.05 * (a + b)] for a in range(3) for b in range(3)},
}
DRAFT = {
    (): [0.2, 0.2, 0.6],
    (0,): [0.3, 0.3, 0.4], (1,): [0.1, 0.8, 0.1], (2,): [0.5, 0.25, 0.25],
}


def exact_chain_joint(target: dict, draft: dict | None, fixed_draft: tuple[int, int] | None = None) -> torch.Tensor:
    """Exact joint distribution of the first two output tokens of one draft-verify step with k = 2.

    Enumerates every draft chain (d1, d2), every verifier branch, and, when the step stops after
    one token (rejection at position 0), the next token from the target's conditional (the next
    step's first token is distributed as the target by the single-position result above, but here
    we use p itself to isolate the chain logic). Accept probabilities and residuals come from the
    module under test.
    """
    joint = torch.zeros(VOCAB, VOCAB, dtype=torch.float64)
    if fixed_draft is not None:
        chains = [(fixed_draft, 1.0, None, None)]
    else:
        chains = []
        for d1, d2 in itertools.product(range(VOCAB), repeat=2):
            q1, q2 = _conditional(draft, ()), _conditional(draft, (d1,))
            weight = float(q1[d1]) * float(q2[d2])
            if weight > 0:
                chains.append(((d1, d2), weight, q1, q2))
    for (d1, d2), weight, q1, q2 in chains:
        p1, p2 = _conditional(target, ()), _conditional(target, (d1,))
        a1 = acceptance_probability(None if q1 is None else float(q1[d1]), float(p1[d1]))
        # position 0 rejected: recovered x1 from the residual, then x2 from the target's p(. | x1)
        residual1 = residual_distribution(p1, q1, d1).double()
        for x1 in range(VOCAB):
            joint[x1] += weight * (1 - a1) * residual1[x1] * _conditional(target, (x1,)).double()
        # position 0 accepted: x1 = d1, position 1 decides x2
        a2 = acceptance_probability(None if q2 is None else float(q2[d2]), float(p2[d2]))
        joint[d1, d2] += weight * a1 * a2  # accepted (the bonus token is the third output)
        joint[d1] += weight * a1 * (1 - a2) * residual_distribution(p2, q2, d2).double()
    return joint


def target_joint(target: dict) -> torch.Tensor:
    p1 = _conditional(target, ()).double()
    return torch.stack([p1[x1] * _conditional(target, (x1,)).double() for x1 in range(VOCAB)])


def test_two_token_chain_joint_equals_target_joint():
    torch.testing.assert_close(exact_chain_joint(TARGET, DRAFT), target_joint(TARGET), atol=ATOL, rtol=0)


@pytest.mark.parametrize("fixed_draft", list(itertools.product(range(VOCAB), repeat=2)))
def test_two_token_chain_joint_equals_target_joint_one_hot(fixed_draft):
    joint = exact_chain_joint(TARGET, None, fixed_draft=fixed_draft)
    torch.testing.assert_close(joint, target_joint(TARGET), atol=ATOL, rtol=0)


def test_two_token_chain_uses_verify_rejection_sampling_branches():
    """The enumeration above mirrors verify_rejection_sampling: check its branch structure directly.

    With p = q the chain is always fully accepted; with disjoint supports it is always rejected
    at position 0 and the recovered token comes from p.
    """
    p = torch.stack([_conditional(TARGET, ()), _conditional(TARGET, (0,)), _conditional(TARGET, (0, 1))])
    gen = torch.Generator().manual_seed(0)
    verdict = verify_rejection_sampling([0, 1], p[:2].clone(), p, gen)
    assert verdict.num_accepted == 2 and verdict.next_kind == "bonus"
    assert verdict.accept_probs == (1.0, 1.0) and len(verdict.uniforms) == 2
    torch.testing.assert_close(verdict.next_distribution, p[2])

    disjoint_p = torch.tensor([[0.0, 0.5, 0.5], [0.3, 0.3, 0.4], [0.3, 0.3, 0.4]])
    q = torch.tensor([[1.0, 0.0, 0.0], [0.3, 0.3, 0.4]])
    for seed in range(20):
        verdict = verify_rejection_sampling([0, 2], q, disjoint_p, torch.Generator().manual_seed(seed))
        assert verdict.num_accepted == 0 and verdict.next_kind == "recovered"
        assert verdict.next_token in (1, 2)
        assert verdict.accept_probs == (0.0,) and len(verdict.uniforms) == 1
        torch.testing.assert_close(verdict.next_distribution, torch.tensor([0.0, 0.5, 0.5]))


# --------------------------------------------------------------------------- Monte Carlo


def _tv(a: torch.Tensor, b: torch.Tensor) -> float:
    return 0.5 * float((a.double() - b.double()).abs().sum())


MC_DRAWS = 20_000
# With 20k draws over <= 9 outcomes the TV distance of the empirical distribution has a standard
# deviation of about 0.003 and a mean under 0.01; 0.02 leaves a wide margin while still catching
# the "resample from p" bug (TV >= 0.12 on each of the inputs below).
MC_TV_TOLERANCE = 0.02


def test_monte_carlo_single_position_matches_target():
    p, q = normalised([0.5, 0.3, 0.2]), normalised([0.8, 0.1, 0.1])
    gen = torch.Generator().manual_seed(1234)
    counts = torch.zeros(3)
    accepted = 0
    for _ in range(MC_DRAWS):
        d = int(torch.multinomial(q, 1, generator=gen))
        verdict = verify_rejection_sampling([d], q[None], torch.stack([p, p]), gen)
        out = d if verdict.num_accepted == 1 else verdict.next_token
        accepted += verdict.num_accepted
        counts[out] += 1
    assert 0 < accepted < MC_DRAWS
    assert _tv(counts / MC_DRAWS, p) < MC_TV_TOLERANCE


def test_monte_carlo_two_token_chain_matches_target_joint():
    """Calls verify_rejection_sampling with k = 2 drafted from the hand-made drafter."""
    gen = torch.Generator().manual_seed(99)
    counts = torch.zeros(VOCAB, VOCAB)
    outcomes = {"bonus": 0, "recovered@0": 0, "recovered@1": 0}
    q_first = _conditional(DRAFT, ())
    for _ in range(MC_DRAWS):
        d1 = int(torch.multinomial(q_first, 1, generator=gen))
        q_second = _conditional(DRAFT, (d1,))
        d2 = int(torch.multinomial(q_second, 1, generator=gen))
        target_rows = torch.stack([_conditional(TARGET, ()), _conditional(TARGET, (d1,)), _conditional(TARGET, (d1, d2))])
        verdict = verify_rejection_sampling([d1, d2], torch.stack([q_first, q_second]), target_rows, gen)
        committed = [d1, d2][: verdict.num_accepted] + [verdict.next_token]
        if verdict.next_kind == "bonus":
            outcomes["bonus"] += 1
        else:
            outcomes[f"recovered@{verdict.num_accepted}"] += 1
        if len(committed) < 2:  # the next step's first token, sampled from the target
            committed.append(int(torch.multinomial(_conditional(TARGET, (committed[0],)), 1, generator=gen)))
        counts[committed[0], committed[1]] += 1
    assert all(n > 0 for n in outcomes.values()), outcomes
    assert _tv(counts / MC_DRAWS, target_joint(TARGET)) < MC_TV_TOLERANCE


def test_monte_carlo_one_hot_drafter_matches_target():
    p = normalised([0.1, 0.6, 0.3])
    gen = torch.Generator().manual_seed(7)
    counts = torch.zeros(3)
    for _ in range(MC_DRAWS):
        verdict = verify_rejection_sampling([1], None, torch.stack([p, p]), gen)
        counts[1 if verdict.num_accepted == 1 else verdict.next_token] += 1
    assert _tv(counts / MC_DRAWS, p) < MC_TV_TOLERANCE


def test_same_seed_same_verdicts():
    p = torch.stack([normalised([0.4, 0.4, 0.2])] * 4)
    q = torch.stack([normalised([0.2, 0.2, 0.6])] * 3)

    def verdicts(seed: int) -> list:
        gen = torch.Generator().manual_seed(seed)
        out = []
        for _ in range(200):
            v = verify_rejection_sampling([2, 0, 1], q, p, gen)
            out.append((v.num_accepted, v.next_token, v.next_kind, v.uniforms))
        return out

    first = verdicts(5)
    assert first == verdicts(5)
    assert first != verdicts(6)
    assert len({v[0] for v in first}) > 1  # both rejections and acceptances happened


# --------------------------------------------------------------------------- greedy


def _logits_with_argmax(argmaxes: list[int], vocab: int = 5) -> torch.Tensor:
    logits = torch.zeros(len(argmaxes), vocab)
    for row, token in enumerate(argmaxes):
        logits[row, token] = 3.0
        logits[row, (token + 1) % vocab] = 1.0
    return logits


def test_greedy_perfect_match_gets_bonus():
    logits = _logits_with_argmax([1, 2, 3, 4])
    verdict = verify_greedy([1, 2, 3], logits)
    assert verdict.num_accepted == 3
    assert verdict.next_kind == "bonus" and verdict.next_token == 4
    assert verdict.accept_probs == (1.0, 1.0, 1.0) and verdict.uniforms == ()
    assert int(verdict.next_distribution.argmax()) == 4 and float(verdict.next_distribution.sum()) == 1.0


def test_greedy_early_mismatch_recovers_the_argmax():
    logits = _logits_with_argmax([1, 2, 3, 4])
    verdict = verify_greedy([1, 0, 3], logits)
    assert verdict.num_accepted == 1
    assert verdict.next_kind == "recovered" and verdict.next_token == 2
    assert verdict.accept_probs == (1.0, 0.0)  # position 2 is unchecked


def test_greedy_mismatch_at_position_zero():
    logits = _logits_with_argmax([1, 2, 3])
    verdict = verify_greedy([4, 2], logits)
    assert verdict.num_accepted == 0
    assert verdict.next_kind == "recovered" and verdict.next_token == 1
    assert verdict.accept_probs == (0.0,)


def test_greedy_empty_draft_is_plain_argmax():
    logits = _logits_with_argmax([3])
    verdict = verify_greedy([], logits)
    assert verdict.num_accepted == 0
    assert verdict.next_kind == "baseline" and verdict.next_token == 3  # nothing drafted: a baseline token
    assert verdict.accept_probs == ()


def test_acceptance_probability_edge_cases():
    assert acceptance_probability(0.8, 0.5) == pytest.approx(0.625)
    assert acceptance_probability(0.1, 0.5) == 1.0
    assert acceptance_probability(None, 0.3) == pytest.approx(0.3)
    assert acceptance_probability(0.0, 0.2) == 1.0
    assert acceptance_probability(0.0, 0.0) == 0.0


def test_residual_distribution_worked_example():
    p, q = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.8, 0.1, 0.1])
    torch.testing.assert_close(residual_distribution(p, q, 0), torch.tensor([0.0, 2 / 3, 1 / 3]))
    torch.testing.assert_close(residual_distribution(p, None, 1), torch.tensor([0.5 / 0.7, 0.0, 0.2 / 0.7]))
    torch.testing.assert_close(residual_distribution(p, p.clone(), 0), p)  # p == q: falls back to p
