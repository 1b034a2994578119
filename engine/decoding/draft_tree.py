"""Draft trees: the structure, its attention mask, and lossless verification over it.

A tree hedges: instead of one guess per position it holds several, and the target checks every
node in ONE forward pass (each node attends to the context and to its own ancestors only). The
verifier then walks down from the root, at each node picking at most one child.

Node 0 is the root: the last committed token, which the target must feed anyway. Nodes are
stored parents-first, so a node's ancestors always have smaller indices.

How a node's children were drawn decides how they are verified under sampling (`ChildDraw`):

- "chosen": picked by a deterministic rule (top-k, EAGLE-2's reranking, retrieval). Each child is
  a point-mass proposal: accept child x with probability p(x); on rejection p <- normalise(p
  with x removed), and the next child is tried (SpecInfer's multi-round rejection with one-hot
  drafts).
- "without_replacement": sampled from the drafter's q without replacement, in that order
  (Gumbel-top-k, RSD). Accept x_i with min(1, p_i(x_i) / q_i(x_i)); on rejection
  p_{i+1} = normalise(max(p_i - q_i, 0)) and q_{i+1} = q_i with x_i removed, renormalised
  (RSD's recursive rejection sampling).
- "iid": k independent draws from q (SpecTr's k drafts, merged where they share a prefix), the
  multiset of draws that pass through the node. SpecTr's k-sequential selection: accept draw
  x_i with min(1, p(x_i) / (rho q(x_i))) for i = 1..k; if none is accepted, sample the residual
  normalise(p - min(q, p / rho) (1 - (1 - beta)^k) / beta), where beta = sum_x min(q(x), p(x) / rho)
  and rho in [1, k] makes (1 - (1 - beta)^k) / beta <= rho (so the residual is non-negative).

Each rule is written once as a `NodePlan`: the acceptance probability of each candidate in turn
and the distribution sampled when all are refused. The sampler only draws uniforms against the
plan, so the exact output distribution of a plan (`NodePlan.output_distribution`) is what the
tests enumerate.

Worked example ("chosen", greedy off): p = [0.5, 0.3, 0.2], children [1, 0]. Child 1 is accepted
with 0.3; if refused, p becomes [0.5, 0, 0.2] / 0.7 and child 0 is accepted with 0.5 / 0.7; if
refused too, the output is token 2. Total: P(1) = 0.3, P(0) = 0.7 * 5/7 = 0.5, P(2) = 0.2. = p.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

CHILD_DRAWS = ("chosen", "without_replacement", "iid")


@dataclass
class DraftTree:
    """A draft tree under construction. `root_token` is the last committed token."""

    tokens: list[int]  # [N] node 0 = root
    parents: list[int]  # [N] -1 for the root
    draft_probs: list[float | None]  # [N] q(token | parent's path); None for the root and retrieval nodes
    sources: list[str]  # [N] "root" | "model" | "retrieval" | "both"
    # How each inner node's children were drawn, and the drafter distribution they were drawn from
    child_draw: dict[int, str] = field(default_factory=dict)
    child_q: dict[int, torch.Tensor] = field(default_factory=dict)  # node -> q [vocab] ("without_replacement", "iid")
    # "iid" only: the draws at each node in draw order, as child node indices (repeats allowed)
    draws: dict[int, list[int]] = field(default_factory=dict)

    @classmethod
    def rooted_at(cls, root_token: int) -> DraftTree:
        return cls([root_token], [-1], [None], ["root"])

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, parent: int, token: int, draft_prob: float | None, source: str = "model") -> int:
        """Add a child of `parent` (or return the existing child with that token); returns its index."""
        for child in self.children(parent):
            if self.tokens[child] == token:
                if self.sources[child] != source:
                    self.sources[child] = "both"
                if self.draft_probs[child] is None:
                    self.draft_probs[child] = draft_prob
                return child
        self.tokens.append(token)
        self.parents.append(parent)
        self.draft_probs.append(draft_prob)
        self.sources.append(source)
        return len(self.tokens) - 1

    def children(self, node: int) -> list[int]:
        return [i for i, p in enumerate(self.parents) if p == node]

    def depth(self, node: int) -> int:
        d = 0
        while self.parents[node] >= 0:
            node, d = self.parents[node], d + 1
        return d

    def depths(self) -> list[int]:
        out: list[int] = []
        for p in self.parents:
            out.append(0 if p < 0 else out[p] + 1)
        return out

    def path(self, node: int) -> list[int]:
        """Node indices from the root's first child down to `node` (empty for the root)."""
        out = []
        while node > 0:
            out.append(node)
            node = self.parents[node]
        return out[::-1]

    def path_probs(self) -> list[float | None]:
        """Product of draft probabilities from the root to each node (None where one is missing)."""
        out: list[float | None] = []
        for p, q in zip(self.parents, self.draft_probs):
            if p < 0:
                out.append(1.0)
            else:
                out.append(None if q is None or out[p] is None else out[p] * q)
        return out

    def attention_mask(self) -> torch.Tensor:
        """[N, N] bool: node i may attend to node j iff j is i or one of its ancestors."""
        n = len(self)
        mask = torch.zeros(n, n, dtype=torch.bool)
        for i, p in enumerate(self.parents):
            mask[i, i] = True
            if p >= 0:
                mask[i] |= mask[p]
        return mask


# --------------------------------------------------------------------------- one node's verification rule


@dataclass(frozen=True)
class NodePlan:
    """The verification rule at one node, fixed before any uniform is drawn.

    Candidate i is reached only if 0..i-1 were refused; it is accepted with accept_probs[i].
    If all are refused the output token is drawn from `residual`.
    """

    candidates: tuple[int, ...]  # tokens in the order they are tried (may repeat under "iid")
    accept_probs: tuple[float, ...]
    residual: torch.Tensor  # [vocab]

    def output_distribution(self, vocab: int) -> torch.Tensor:
        """The exact distribution of the token this node outputs (accepted candidate or residual draw)."""
        out = torch.zeros(vocab, dtype=torch.float64)
        reach = 1.0
        for token, a in zip(self.candidates, self.accept_probs):
            out[token] += reach * a
            reach *= 1.0 - a
        return out + reach * self.residual.double()


def _normalise(x: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    total = x.sum()
    return x / total if total > 0 else fallback


def plan_chosen(p: torch.Tensor, candidates: list[int]) -> NodePlan:
    """Deterministically chosen children: point-mass proposals, tried in order. p: [vocab]."""
    p = p.double()
    accept = []
    for token in candidates:
        a = float(p[token])
        accept.append(min(1.0, max(0.0, a)))
        removed = p.clone()
        removed[token] = 0.0
        p = _normalise(removed, p)
    return NodePlan(tuple(candidates), tuple(accept), p)


def plan_without_replacement(p: torch.Tensor, q: torch.Tensor, candidates: list[int]) -> NodePlan:
    """Children sampled from q without replacement, in draw order (RSD). p, q: [vocab]."""
    p, q = p.double(), q.double()
    accept = []
    for token in candidates:
        qx, px = float(q[token]), float(p[token])
        accept.append(1.0 if qx <= 0 and px > 0 else 0.0 if qx <= 0 else min(1.0, px / qx))
        p = _normalise(torch.clamp(p - q, min=0.0), p)
        q_removed = q.clone()
        q_removed[token] = 0.0
        q = _normalise(q_removed, q_removed)
    return NodePlan(tuple(candidates), tuple(accept), p)


def spectr_rho(p: torch.Tensor, q: torch.Tensor, k: int, iterations: int = 60) -> float:
    """SpecTr's rho in [1, k]: the root of (1 - (1 - beta)^k) / beta = rho, beta = sum min(q, p / rho)."""
    p, q = p.double(), q.double()

    def gap(rho: float) -> float:
        beta = float(torch.minimum(q, p / rho).sum())
        return (1 - (1 - beta) ** k) / beta - rho if beta > 0 else -rho

    lo, hi = 1.0, float(k)
    if k == 1 or gap(lo) <= 0:
        return 1.0
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if gap(mid) > 0 else (lo, mid)
    return hi  # gap(hi) <= 0 keeps the residual non-negative


def plan_iid(p: torch.Tensor, q: torch.Tensor, draws: list[int]) -> NodePlan:
    """k i.i.d. draws from q (SpecTr's k-sequential selection). p, q: [vocab]; draws: k tokens in draw order."""
    p, q = p.double(), q.double()
    k = len(draws)
    rho = spectr_rho(p, q, k)
    capped = torch.minimum(q, p / rho)
    beta = float(capped.sum())
    accept = []
    for token in draws:
        qx = float(q[token])
        accept.append(min(1.0, float(p[token]) / (rho * qx)) if qx > 0 else 1.0)
    scale = (1 - (1 - beta) ** k) / beta if beta > 0 else 0.0
    residual = _normalise(torch.clamp(p - capped * scale, min=0.0), p)
    return NodePlan(tuple(draws), tuple(accept), residual)


# --------------------------------------------------------------------------- the walk down the tree


@dataclass(frozen=True)
class TreeVerdict:
    accepted: tuple[int, ...]  # accepted node indices, root's child first (the accepted path)
    next_token: int  # recovered (the walk stopped at a node with children) or bonus (at a leaf)
    next_kind: str  # "recovered" | "bonus" | "baseline" (the tree was the root alone)
    next_distribution: torch.Tensor  # [vocab] what next_token was drawn from
    tried: dict[int, float]  # node -> acceptance probability when it was tried
    uniforms: tuple[float, ...]  # every uniform drawn, in order (empty under greedy)

    @property
    def num_accepted(self) -> int:
        return len(self.accepted)


def node_plan(tree: DraftTree, node: int, p: torch.Tensor) -> tuple[NodePlan, list[int]]:
    """The plan at `node` given the target's p there, and the child node each candidate stands for."""
    children = tree.children(node)
    draw = tree.child_draw.get(node, "chosen")
    if draw == "iid":
        draws = tree.draws[node]
        return plan_iid(p, tree.child_q[node], [tree.tokens[c] for c in draws]), draws
    if draw == "without_replacement":
        return plan_without_replacement(p, tree.child_q[node], [tree.tokens[c] for c in children]), children
    return plan_chosen(p, [tree.tokens[c] for c in children]), children


def verify_tree_greedy(tree: DraftTree, target_logits: torch.Tensor) -> TreeVerdict:
    """The longest root-to-node path matching the target's argmax, plus the target's token after it.

    target_logits: [N, vocab]; row i scores the token after node i's path.
    """
    argmax = target_logits.argmax(-1).tolist()  # [N]
    node, accepted, tried = 0, [], {}
    while True:
        children = tree.children(node)
        match = next((c for c in children if tree.tokens[c] == argmax[node]), None)
        for c in children:
            tried[c] = 1.0 if c == match else 0.0
        if match is None:
            one_hot = torch.zeros(target_logits.shape[-1])
            one_hot[argmax[node]] = 1.0
            return TreeVerdict(tuple(accepted), argmax[node], "recovered" if children else "bonus" if accepted else "baseline",
                               one_hot, tried, ())
        accepted.append(match)
        node = match


def verify_tree_sampling(tree: DraftTree, target_probs: torch.Tensor, generator: torch.Generator) -> TreeVerdict:
    """Lossless multi-draft rejection sampling down the tree. target_probs: [N, vocab]."""
    node, accepted, tried, uniforms = 0, [], {}, []
    while True:
        plan, stands_for = node_plan(tree, node, target_probs[node])
        chosen = None
        for child, a in zip(stands_for, plan.accept_probs):
            u = float(torch.rand((), generator=generator))
            uniforms.append(u)
            tried[child] = max(tried.get(child, 0.0), a)
            if u < a:
                chosen = child
                break
        if chosen is None:
            residual = plan.residual.float()
            token = int(torch.multinomial(residual, 1, generator=generator))
            return TreeVerdict(tuple(accepted), token, "recovered" if stands_for else "bonus" if accepted else "baseline", residual,
                               tried, tuple(uniforms))
        accepted.append(chosen)
        node = chosen
