"""Optimal multi-draft acceptance (analysis only): how often ANY verifier could accept a draft.

One step of multi-draft speculation: the drafter proposes k tokens x = (x_1..x_k) from a draft
joint distribution, the target wants its next token y ~ p. A lossless verifier outputs y with
exactly the distribution p, so (x, y) is a coupling of the draft joint and p. "Some draft is
accepted" can only happen when y is one of the drafts, hence for every lossless verifier

    P(some draft accepted) <= alpha* = max over couplings pi of P_pi(y in x),

and alpha* is reached by the best coupling (an optimal-transport problem, solved here as a linear
programme for vocabularies of 2..12 tokens, k of 1..4 drafts). With one draft it is the familiar
sum_x min(p(x), q(x)); with several it is what the verification rule of SpecTr, RSD or SpecInfer
(engine.decoding.draft_tree) could at best achieve for that way of drafting.

Draft schemes (how the k drafts are drawn from the drafter's q):

- "iid": k independent draws from q; verified by SpecTr's k-sequential selection (`plan_iid`).
- "without_replacement": k draws from q without replacement (Gumbel-top-k order); verified by RSD's
  recursive rejection sampling (`plan_without_replacement`).
- "chosen_topk": the k most probable tokens of q, deterministically; verified by SpecInfer's
  multi-round rejection with point-mass drafts (`plan_chosen`).

Worked example: p = [0.5, 0.5], q = [0.9, 0.1], k = 2 i.i.d. drafts. One draft accepts at most
min(.5, .9) + min(.5, .1) = 0.6. With two, the draft set is {0} w.p. 0.81, {1} w.p. 0.01 and
{0, 1} w.p. 0.18: token 1 can be matched only from {1} or {0, 1} (0.19 in all) and token 0 at
most p(0) = 0.5, so alpha* = 0.69. SpecTr's k-SEQ achieves 0.6584 there (`report`).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from scipy.optimize import linprog
from scipy.sparse import coo_array

from engine.decoding.draft_tree import NodePlan, plan_chosen, plan_iid, plan_without_replacement
from engine.errors import ConfigError

MIN_VOCAB, MAX_VOCAB = 2, 12
MIN_K, MAX_K = 1, 4
SCHEMES = ("iid", "without_replacement", "chosen_topk")

DraftJoint = dict[tuple[int, ...], float]  # ordered draft tokens -> probability


# --------------------------------------------------------------------------- input checks


def check_distribution(name: str, values: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """A validated, normalised float64 distribution [vocab] of MIN_VOCAB..MAX_VOCAB entries.

    >>> check_distribution("p", [2, 1, 1]).tolist()
    [0.5, 0.25, 0.25]
    """
    try:
        x = torch.as_tensor(values, dtype=torch.float64).flatten()
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(name, "must be a list of numbers") from None
    if not MIN_VOCAB <= len(x) <= MAX_VOCAB:
        raise ConfigError(name, f"has {len(x)} entries; give {MIN_VOCAB} to {MAX_VOCAB} (one per token)")
    if not bool(torch.isfinite(x).all()):
        raise ConfigError(name, "contains a value that is not a finite number")
    if bool((x < 0).any()):
        raise ConfigError(name, f"contains a negative value ({float(x.min()):g}); probabilities are >= 0")
    if float(x.sum()) <= 0:
        raise ConfigError(name, "is all zero; give at least one token a positive weight")
    return x / x.sum()


def check_pair(p: Sequence[float] | torch.Tensor,
               q: Sequence[float] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated target p [vocab] and drafter q [vocab] over the same vocabulary."""
    p, q = check_distribution("p", p), check_distribution("q", q)
    if len(p) != len(q):
        raise ConfigError("q", f"has {len(q)} entries but p has {len(p)}; both need one per token")
    return p, q


def check_k(k: int | float) -> int:
    """The number of drafts, an integer in MIN_K..MAX_K (an integral float is accepted)."""
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not float(k).is_integer():
        raise ConfigError("k", f"must be a whole number of drafts, got {k!r}")
    if not MIN_K <= int(k) <= MAX_K:
        raise ConfigError("k", f"must be between {MIN_K} and {MAX_K}, got {int(k)}")
    return int(k)


def check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise ConfigError("rule", f"unknown draft scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    return scheme


def parse_distribution(name: str, text: str | None) -> torch.Tensor:
    """Parse "0.5, 0.3, 0.2" (commas, semicolons or spaces) into a normalised distribution [vocab].

    >>> parse_distribution("q", "3 1").tolist()
    [0.75, 0.25]
    """
    parts = [part for part in re.split(r"[,;\s]+", (text or "").strip()) if part]
    if not parts:
        raise ConfigError(name, f"is empty; type {MIN_VOCAB} to {MAX_VOCAB} numbers separated by commas, "
                                "e.g. 0.5, 0.3, 0.2")
    values = []
    for part in parts:
        try:
            values.append(float(part))
        except ValueError:
            raise ConfigError(name, f"{part!r} is not a number") from None
    return check_distribution(name, values)


# --------------------------------------------------------------------------- draft joints


def draft_joint_iid(q: Sequence[float] | torch.Tensor, k: int) -> DraftJoint:
    """k independent draws from q [vocab]: every ordered k-tuple of tokens with q > 0.

    >>> draft_joint_iid([0.75, 0.25], 2)
    {(0, 0): 0.5625, (0, 1): 0.1875, (1, 0): 0.1875, (1, 1): 0.0625}
    """
    q, k = check_distribution("q", q).tolist(), check_k(k)
    support = [t for t, qt in enumerate(q) if qt > 0]
    return {draws: math.prod(q[t] for t in draws) for draws in itertools.product(support, repeat=k)}


def draft_joint_without_replacement(q: Sequence[float] | torch.Tensor, k: int) -> DraftJoint:
    """k draws from q [vocab] without replacement, in draw order (Gumbel-top-k): each draw is taken
    from q renormalised over the tokens not drawn yet. Fewer than k draws when q has fewer than k
    tokens with q > 0.

    >>> draft_joint_without_replacement([0.75, 0.25], 2)
    {(0, 1): 0.75, (1, 0): 0.25}
    """
    q, k = check_distribution("q", q).tolist(), check_k(k)
    support = [t for t, qt in enumerate(q) if qt > 0]
    joint = {}
    for draws in itertools.permutations(support, min(k, len(support))):
        prob, left = 1.0, 1.0
        for t in draws:
            prob *= q[t] / left
            left -= q[t]
        joint[draws] = prob
    return joint


def top_k_tokens(q: Sequence[float] | torch.Tensor, k: int) -> tuple[int, ...]:
    """The k most probable tokens of q [vocab], most probable first (ties: lower token id first)."""
    q, k = check_distribution("q", q).tolist(), check_k(k)
    return tuple(sorted(range(len(q)), key=lambda t: (-q[t], t))[:k])


def draft_joint_chosen_topk(q: Sequence[float] | torch.Tensor, k: int) -> DraftJoint:
    """The deterministic top-k drafts of q [vocab]: a point mass on one k-tuple.

    >>> draft_joint_chosen_topk([0.2, 0.5, 0.3], 2)
    {(1, 2): 1.0}
    """
    return {top_k_tokens(q, k): 1.0}


DRAFT_JOINTS = {
    "iid": draft_joint_iid,
    "without_replacement": draft_joint_without_replacement,
    "chosen_topk": draft_joint_chosen_topk,
}


def draft_sets(draft_joint: DraftJoint, vocab: int) -> DraftJoint:
    """The distribution of the SET of drafted tokens (sorted tuples): all that P(y in x) depends on.
    A set distribution is its own set distribution, so it can stand in for the joint below.

    >>> draft_sets({(0, 1): 0.25, (1, 0): 0.25, (1, 1): 0.5}, vocab=2)
    {(0, 1): 0.5, (1,): 0.5}
    """
    if not draft_joint:
        raise ConfigError("draft_joint", "is empty")
    sets: DraftJoint = {}
    for draws, prob in draft_joint.items():
        if prob < 0 or not math.isfinite(prob):
            raise ConfigError("draft_joint", f"probability of {draws} is {prob}; must be finite and >= 0")
        if any(not 0 <= t < vocab for t in draws):
            raise ConfigError("draft_joint", f"draft {draws} has a token outside the vocabulary 0..{vocab - 1}")
        key = tuple(sorted(set(draws)))
        sets[key] = sets.get(key, 0.0) + prob
    total = sum(sets.values())
    if abs(total - 1.0) > 1e-6:
        raise ConfigError("draft_joint", f"probabilities sum to {total:.6g}, not 1")
    return {s: prob / total for s, prob in sets.items()}


# --------------------------------------------------------------------------- the optimum


@dataclass(frozen=True)
class OptimalCoupling:
    """The LP's answer: alpha* and an optimal coupling of the draft SET and the target token."""

    value: float  # alpha* = max P(y in x)
    sets: tuple[tuple[int, ...], ...]  # [S] the possible sets of drafted tokens
    set_probs: torch.Tensor  # [S] their probabilities under the draft joint
    plan: torch.Tensor  # [S, vocab] pi(set, y): rows sum to set_probs, columns to p


def optimal_acceptance(p: Sequence[float] | torch.Tensor, draft_joint: DraftJoint) -> OptimalCoupling:
    """The highest P(some draft accepted) any lossless verifier can reach for this draft joint and p.

    Formulation. Over couplings pi(x, y) >= 0 of the draft tuple x (marginal: draft_joint) and
    the target token y (marginal: p [vocab]), maximise sum_{x, y in x} pi(x, y). The objective
    only sees the set of drafted tokens, so the LP is solved over pi(S, y), S = set(x): a coupling
    of tuples gives one of sets with the same objective, and a coupling of sets lifts back by
    splitting pi(S, y) over the tuples of S in proportion to their probabilities. With S sets:

        maximise   sum_{S, y in S} pi(S, y)
        subject to sum_y pi(S, y) = P(S)   for every S
                   sum_S pi(S, y) = p(y)   for every y (one row dropped: implied by the others)
                   pi >= 0

    It is a max-flow, so alpha* also equals the min cut (`bottleneck`).

    Worked example: p = [0.5, 0.5], drafts {(0, 0): .81, (0, 1): .09, (1, 0): .09, (1, 1): .01}
    (two i.i.d. draws from q = [0.9, 0.1]). Sets {0}: .81, {0, 1}: .18, {1}: .01; the best plan
    sends {1} -> 1 (.01), {0, 1} -> 1 (.18), {0} -> 0 (.5) and the remaining .31 of {0} to token 1,
    so alpha* = 0.69.
    """
    p = check_distribution("p", p)
    vocab = len(p)
    set_dist = draft_sets(draft_joint, vocab)
    sets, set_probs = tuple(set_dist), torch.tensor(list(set_dist.values()), dtype=torch.float64)  # [S]
    n = len(sets)
    var = torch.arange(n * vocab)  # [S * vocab]: variable s * vocab + y is pi(S_s, y)
    rows = torch.cat([var // vocab, n + var % vocab])  # row s: the set S_s; row n + y: the token y
    cols = torch.cat([var, var])
    keep = rows < n + vocab - 1  # the last token's row is implied by the others
    a_eq = coo_array((torch.ones(int(keep.sum())).numpy(), (rows[keep].numpy(), cols[keep].numpy())),
                     shape=(n + vocab - 1, n * vocab))
    b_eq = torch.cat([set_probs, p[:-1]]).numpy()
    gain = [-1.0 if y in sets[s] else 0.0 for s in range(n) for y in range(vocab)]  # linprog minimises
    result = linprog(gain, A_eq=a_eq.tocsr(), b_eq=b_eq, bounds=(0, None), method="highs")
    if not result.success:
        raise RuntimeError(f"the acceptance LP failed: {result.message}")
    plan = torch.tensor(result.x, dtype=torch.float64).clamp(min=0.0).reshape(n, vocab)
    return OptimalCoupling(min(1.0, max(0.0, -result.fun)), sets, set_probs, plan)


@dataclass(frozen=True)
class Bottleneck:
    """The min cut: with probability `all_drafts_in` every draft lies in `tokens`, where the target
    puts only `target_mass`; so y is none of the drafts at least `all_drafts_in - target_mass` of the time."""

    tokens: tuple[int, ...]
    all_drafts_in: float
    target_mass: float

    @property
    def bound(self) -> float:
        """alpha* = 1 - (all_drafts_in - target_mass) for the worst set of tokens."""
        return 1.0 - (self.all_drafts_in - self.target_mass)


def bottleneck(p: Sequence[float] | torch.Tensor, draft_joint: DraftJoint) -> Bottleneck:
    """alpha* in closed form: 1 - max over token sets H of [P(every draft in H) - p(H)] (min cut = max flow).

    For k i.i.d. drafts P(every draft in H) = q(H)^k, so alpha* = 1 - max_H [q(H)^k - p(H)]; for one
    draft that is 1 - TV(p, q) = sum min(p, q). Enumerates all 2^vocab sets H.

    Worked example: p = [0.5, 0.5], two i.i.d. drafts from q = [0.9, 0.1]: H = {0} gives
    0.81 - 0.5 = 0.31, the largest, so alpha* = 0.69.
    """
    p = check_distribution("p", p)
    vocab = len(p)
    set_dist = draft_sets(draft_joint, vocab)
    subsets = torch.arange(2 ** vocab)  # [2^vocab] H as a bit mask
    members = (subsets[:, None] >> torch.arange(vocab)) & 1  # [2^vocab, vocab]
    masks = torch.tensor([sum(1 << t for t in s) for s in set_dist])  # [S]
    inside = (subsets[:, None] & masks[None, :]) == masks[None, :]  # [2^vocab, S]: S within H
    all_in = inside.double() @ torch.tensor(list(set_dist.values()), dtype=torch.float64)  # [2^vocab]
    target = members.double() @ p  # [2^vocab]
    h = int((all_in - target).argmax())
    return Bottleneck(tuple(t for t in range(vocab) if h >> t & 1), float(all_in[h]), float(target[h]))


# --------------------------------------------------------------------------- what our verifiers achieve


def accept_some(plan: NodePlan) -> float:
    """P(some candidate of this plan is accepted) = 1 - P(every candidate is refused)."""
    refused = 1.0
    for a in plan.accept_probs:
        refused *= 1.0 - a
    return 1.0 - refused


def _rsd_refused(p: torch.Tensor, q: torch.Tensor, draws_left: int) -> float:
    """P(RSD refuses every remaining draft) from the state (p, q) [vocab], over every ordered draw without
    replacement, depth first: the draft tree of all draws with each node's plan computed once."""
    if draws_left == 0 or not bool((q > 0).any()):
        return 1.0
    refused = 0.0
    for x in torch.nonzero(q > 0).flatten().tolist():
        plan = plan_without_replacement(p, q, [x])  # its residual is the state after refusing x
        refuse_x = 1.0 - plan.accept_probs[0]
        if refuse_x > 0 and draws_left > 1:
            left = q.clone()
            left[x] = 0.0
            refuse_x *= _rsd_refused(plan.residual, left / left.sum() if left.sum() > 0 else left, draws_left - 1)
        refused += float(q[x]) * refuse_x
    return refused


def achieved_acceptance(p: Sequence[float] | torch.Tensor, q: Sequence[float] | torch.Tensor, k: int,
                        rule: str) -> float:
    """The exact P(some draft accepted) of engine.decoding.draft_tree's verifier for this scheme (p, q [vocab]).

    - "chosen_topk": one plan, `plan_chosen` on the top-k tokens of q.
    - "without_replacement": the sum over every ordered draw of P(draw) * P(RSD refuses all its drafts),
      walked as a tree of draw prefixes: RSD tests the i-th draft against the target's residual after
      i - 1 refusals and the drafter's q without the tokens drawn so far, so each prefix's state comes
      from `plan_without_replacement` on one draft; branches after a sure acceptance are skipped.
    - "iid": the sum over all vocab^k ordered draws factorises. `plan_iid` accepts draw x with a
      probability a(x) fixed by p, q and k alone (SpecTr's rho), so E[prod_i (1 - a(x_i))] over i.i.d.
      x_i is (sum_x q(x) (1 - a(x)))^k; a(x) is read from `plan_iid` with k copies of x.

    The tests check both shortcuts against the plan of every complete ordered draw.

    Worked example: p = [0.5, 0.5], q = [0.9, 0.1], k = 2, "iid": rho = 1.5844, a(0) = 0.5 / (rho 0.9)
    = 0.3506 and a(1) = 1, so P = 1 - (0.9 (1 - 0.3506) + 0.1 (1 - 1))^2 = 1 - 0.5844^2 = 0.6584.
    """
    p, q = check_pair(p, q)
    k, rule = check_k(k), check_scheme(rule)
    if rule == "chosen_topk":
        return accept_some(plan_chosen(p, list(top_k_tokens(q, k))))
    if rule == "without_replacement":
        return min(1.0, 1.0 - _rsd_refused(p, q, k))
    refused_one = sum(float(q[x]) * (1.0 - plan_iid(p, q, [x] * k).accept_probs[0])
                      for x in range(len(q)) if q[x] > 0)
    return min(1.0, 1.0 - refused_one ** k)


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class SchemeResult:
    scheme: str  # one of SCHEMES
    optimum: float  # alpha*: the best any lossless verifier could do with these drafts
    achieved: float  # what engine.decoding.draft_tree's verifier achieves, exactly
    bottleneck: Bottleneck  # why the optimum is not higher

    @property
    def gap(self) -> float:
        return self.optimum - self.achieved


@dataclass(frozen=True)
class AcceptanceReport:
    p: torch.Tensor  # [vocab] normalised
    q: torch.Tensor  # [vocab] normalised
    k: int
    single_draft: float  # sum min(p, q): the optimum (and what rejection sampling achieves) with one draft
    schemes: tuple[SchemeResult, ...]  # in SCHEMES order


def report(p: Sequence[float] | torch.Tensor, q: Sequence[float] | torch.Tensor, k: int) -> AcceptanceReport:
    """Per draft scheme: the LP optimum beside what our verifier achieves, and the single-draft baseline.

    Worked example: report([0.5, 0.5], [0.9, 0.1], 2) -> single draft 0.6; iid: optimum 0.69,
    k-SEQ 0.6584; without replacement: optimum 1.0 (the two drafts are always {0, 1}), RSD 1.0;
    top-2 chosen: optimum 1.0, achieved 1.0.
    """
    p, q = check_pair(p, q)
    k = check_k(k)
    results = []
    for scheme in SCHEMES:
        sets = draft_sets(DRAFT_JOINTS[scheme](q, k), len(p))  # the LP and the min cut only need the sets
        results.append(SchemeResult(scheme, optimal_acceptance(p, sets).value, achieved_acceptance(p, q, k, scheme),
                                    bottleneck(p, sets)))
    return AcceptanceReport(p, q, k, float(torch.minimum(p, q).sum()), tuple(results))
