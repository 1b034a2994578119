"""Draft trees from a drafter model: static top-k (SpecInfer / Medusa), EAGLE-2's dynamic tree,
RSD's trees sampled without replacement, and SpecTr's k independent drafts.

All four grow the tree one depth at a time: each level's nodes are fed to the drafter in ONE
forward pass with tree attention (`CachedCausalLM.forward_tree` on the context prefix), which
gives every node's next-token distribution. They differ only in which children a node gets:

- static: the top b_d tokens of each node at depth d ("chosen");
- dynamic (EAGLE-2): only the `width` nodes of a level with the highest path probability
  (product of drafter probabilities from the root) are expanded, each into its top `width` children;
  at the end the `nodes` best nodes by path probability are kept (a child never scores above
  its parent, so the kept set is a tree) ("chosen");
- rsd: b_d children drawn from q without replacement (Gumbel-top-k), in draw order
  ("without_replacement"); greedy runs take the top b_d instead;
- spectr: k drafts drawn independently; the draws that pass through a node go on from it, so
  the tree is the k sequences merged on shared prefixes, with every draw kept ("iid").

After the verdict the drafter's cache is cropped back to the committed context; the next step
catches up on the accepted tokens and the target's token in one pass.

Worked example (static, branching "2,1", greedy): context "The cat"; the drafter's top two after
it are " sat" (0.6), " is" (0.2); after " sat" its top token is " on", after " is" it is " a":
tree = root -> {" sat" -> " on", " is" -> " a"}, 4 drafted nodes, 2 drafter passes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from engine.loading.causal_lm import CachedCausalLM
from engine.decoding.draft_tree import DraftTree
from engine.events import StepFeedback
from engine.sampling import SamplingConfig, check_finite, logits_to_probs


@dataclass
class TreeProposal:
    tree: DraftTree
    info: dict[str, Any] = field(default_factory=dict)  # as Proposal.info


class TreeProposer(Protocol):
    def start(self, prompt_ids: list[int]) -> None:
        """Reset per-run state before the first step."""

    def propose_tree(self, context: list[int], max_depth: int, sampling: SamplingConfig,
                     generator: torch.Generator) -> TreeProposal:
        """A tree rooted at context[-1], at most max_depth drafted levels deep."""

    def observe(self, feedback: StepFeedback) -> None:
        """What the verifier did with the last tree (feedback.accepted: the accepted path's tokens)."""


def parse_branching(text: str) -> tuple[int, ...]:
    """ "3,2,1" (or "3-2-1") -> (3, 2, 1): children per node at depths 1, 2, 3."""
    return tuple(int(x) for x in str(text).replace(" ", "").replace("-", ",").split(","))


class TreeDrafter:
    """The drafter's cache: the committed context, then this step's tree region."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.lm: CachedCausalLM | None = None
        self.prefix = 0

    def start(self) -> None:
        self.lm = CachedCausalLM(self.model)
        self.prefix = 0

    def root(self, context: list[int]) -> torch.Tensor:
        """Catch up on the context; the drafter's logits after it [vocab]."""
        assert self.lm is not None, "start() first"
        # drop the last step's tree region (slots after its prefix hold tree nodes in feed order, not the
        # accepted path), then catch up on the accepted tokens and the target's token
        self.lm.rollback(min(self.lm.cached_length, self.prefix, len(context) - 1))
        logits = self.lm.forward(context[self.lm.cached_length :])[-1]
        self.prefix = len(context)
        return logits

    def expand(self, tree: DraftTree, nodes: list[int], region: dict[int, int]) -> torch.Tensor:
        """Feed tree nodes (their ancestors already fed) in one pass; logits after each [len(nodes), vocab].

        `region` maps tree node -> region index and is extended with the new nodes.
        """
        assert self.lm is not None
        parents = [region.get(tree.parents[n], -1) for n in nodes]  # the root is the prefix's last token
        logits = self.lm.forward_tree([tree.tokens[n] for n in nodes], parents, self.prefix)
        for n in nodes:
            region[n] = len(region)
        return logits


def _gumbel_top_k(q: torch.Tensor, k: int, generator: torch.Generator) -> list[int]:
    """k tokens sampled from q without replacement, in draw order (Gumbel-top-k). q: [vocab]."""
    support = int((q > 0).sum())
    u = torch.rand(q.shape, generator=generator, dtype=torch.float64).clamp_min(1e-300)
    keys = q.double().log() - (-u.log()).log()  # log q + Gumbel noise; -inf where q = 0
    return torch.topk(keys, min(k, support)).indices.tolist()


class TreeShape(Protocol):
    """Which children each node gets, which nodes grow, and what is kept: one rule object per tree shape."""

    depth: int  # drafted levels (drafter passes)

    def children(self, node: int, q: torch.Tensor, d: int, sampling: SamplingConfig, generator: torch.Generator,
                 tree: DraftTree, draws: dict[int, int]) -> list[int]:
        """The child tokens of `node` at depth d + 1, given the drafter's q there [vocab]; records on the tree
        how they were drawn. `draws`: node -> how many of the drafts pass through it (SpecTr)."""

    def grows(self, level: list[int], path: dict[int, float]) -> list[int]:
        """The nodes of a new level that get children of their own."""

    def finish(self, tree: DraftTree, path: dict[int, float]) -> DraftTree:
        """The tree to verify."""

    def describe(self) -> str: ...


def _top(q: torch.Tensor, width: int) -> list[int]:
    return torch.topk(q, min(width, int((q > 0).sum()))).indices.tolist()


class _EveryNodeGrows:
    """Shapes that grow every node of a level and verify the whole tree."""

    def grows(self, level: list[int], path: dict[int, float]) -> list[int]:
        return level

    def finish(self, tree: DraftTree, path: dict[int, float]) -> DraftTree:
        return tree


@dataclass(frozen=True)
class StaticShape(_EveryNodeGrows):
    """SpecInfer / Medusa: the top b_d tokens of each node at depth d ("chosen")."""

    branching: tuple[int, ...]

    @property
    def depth(self) -> int:
        return len(self.branching)

    def children(self, node, q, d, sampling, generator, tree, draws) -> list[int]:
        return _top(q, self.branching[d])

    def describe(self) -> str:
        return f"static top-k tree, branching {','.join(map(str, self.branching))}"


@dataclass(frozen=True)
class DynamicShape:
    """EAGLE-2: the `width` likeliest nodes of a level grow `width` children each; the best `nodes` are kept.

    `floor` > 0: nodes whose path probability is below it neither grow nor are kept, so where the drafter is
    unsure the tree shrinks (fewer drafter passes, a cheaper verification) instead of filling up with guesses.
    """

    width: int
    nodes: int
    depth: int
    floor: float = 0.0

    def children(self, node, q, d, sampling, generator, tree, draws) -> list[int]:
        return _top(q, self.width)

    def grows(self, level: list[int], path: dict[int, float]) -> list[int]:
        return [n for n in sorted(level, key=lambda n: -path[n])[: self.width] if path[n] >= self.floor]

    def finish(self, tree: DraftTree, path: dict[int, float]) -> DraftTree:
        return _keep_best(tree, path, self.nodes, self.floor)

    def describe(self) -> str:
        kept = f"keep {self.nodes}" + (f" with path probability >= {self.floor:g}" if self.floor else "")
        return f"EAGLE-2 dynamic tree: expand the top {self.width} by path probability, {kept}"


@dataclass(frozen=True)
class RsdShape(StaticShape):
    """RSD: b_d children drawn from q without replacement (Gumbel-top-k); greedy runs take the top b_d."""

    def children(self, node, q, d, sampling, generator, tree, draws) -> list[int]:
        if sampling.greedy:
            return _top(q, self.branching[d])
        tree.child_draw[node], tree.child_q[node] = "without_replacement", q
        return _gumbel_top_k(q, self.branching[d], generator)

    def describe(self) -> str:
        return f"RSD tree sampled without replacement, branching {','.join(map(str, self.branching))}"


@dataclass(frozen=True)
class SpecTrShape(_EveryNodeGrows):
    """SpecTr: k drafts drawn independently, merged on shared prefixes, every draw kept ("iid")."""

    drafts: int
    depth: int

    def children(self, node, q, d, sampling, generator, tree, draws) -> list[int]:
        if sampling.greedy:
            draws[len(tree)] = draws.get(node, self.drafts)  # every draft is the same chain
            return _top(q, 1)
        sampled = torch.multinomial(q, draws.get(node, self.drafts), replacement=True, generator=generator).tolist()
        tree.child_draw[node], tree.child_q[node] = "iid", q
        counts = Counter(sampled)
        children = list(dict.fromkeys(sampled))  # first-draw order
        tree.draws[node] = [len(tree) + children.index(t) for t in sampled]  # child indices once added
        for token in children:
            draws[len(tree) + children.index(token)] = counts[token]
        return children

    def describe(self) -> str:
        return f"SpecTr: {self.drafts} independent drafts merged on shared prefixes"


class LevelDrafter(Protocol):
    """What grows a tree one level per pass: a drafter model (`TreeDrafter`) or a feature head
    (engine.drafting.proposers.feature_heads)."""

    def start(self) -> None: ...

    def root(self, context: list[int]) -> torch.Tensor:
        """The drafter's logits after the context [vocab]."""

    def expand(self, tree: DraftTree, nodes: list[int], region: dict[int, int]) -> torch.Tensor:
        """The logits after each of `nodes` [len(nodes), vocab], fed in one pass."""


class ModelTreeProposer:
    """A drafter grown into a tree, one level per drafter pass, by a `TreeShape`'s rules."""

    def __init__(self, drafter: LevelDrafter, shape: TreeShape):
        self.drafter = drafter
        self.shape = shape

    def start(self, prompt_ids: list[int]) -> None:
        self.drafter.start()

    def observe(self, feedback: StepFeedback) -> None:
        pass  # the next root() crops the tree away and catches up on what was accepted

    def propose_tree(self, context: list[int], max_depth: int, sampling: SamplingConfig,
                     generator: torch.Generator) -> TreeProposal:
        tree = DraftTree.rooted_at(context[-1])
        depth = min(self.shape.depth, max_depth)
        if depth <= 0:
            return TreeProposal(tree, {"summary": "the token budget leaves nothing to draft"})
        region: dict[int, int] = {}
        logits = self.drafter.root(context)[None]  # [1, vocab]
        frontier, draws = [0], {}
        path = {0: 1.0}
        passes = 1
        for d in range(depth):
            # 1. the drafter's distribution at every frontier node (fed in one pass, except the root)
            check_finite(logits, "drafter")
            q = logits_to_probs(logits, sampling)  # [len(frontier), vocab]
            # 2. each frontier node's children, by the shape's rule
            level = []
            for row, node in enumerate(frontier):
                for token in self.shape.children(node, q[row], d, sampling, generator, tree, draws):
                    child = tree.add(node, token, float(q[row, token]))
                    path[child] = path[node] * float(q[row, token])
                    level.append(child)
            # 3. which of them grow next (EAGLE-2: only the likeliest paths); feed those, unless this is the last level
            frontier = self.shape.grows(level, path)
            if not frontier:
                break
            if d + 1 < depth:
                logits = self.drafter.expand(tree, frontier, region)
                passes += 1
        tree = self.shape.finish(tree, path)
        return TreeProposal(tree, self._info(tree, passes))

    def _info(self, tree: DraftTree, passes: int) -> dict[str, Any]:
        depths = tree.depths()
        return {"summary": f"{self.shape.describe()}: {len(tree) - 1} nodes, depth {max(depths)}, {passes} drafter passes",
                "nodes": len(tree) - 1, "depth": max(depths), "drafter_passes": passes}


def _keep_best(tree: DraftTree, path: dict[int, float], budget: int, floor: float = 0.0) -> DraftTree:
    """The `budget` drafted nodes with the highest path probability (at least `floor`), re-indexed parents first."""
    ranked = sorted((n for n in range(1, len(tree)) if path[n] >= floor), key=lambda n: (-path[n], n))[:budget]
    keep = sorted(ranked)  # parents have smaller indices and at least their children's path probability
    pruned = DraftTree.rooted_at(tree.tokens[0])
    new_index = {0: 0}
    for n in keep:
        if tree.parents[n] in new_index:  # ties could drop a parent: then the child goes too
            new_index[n] = pruned.add(new_index[tree.parents[n]], tree.tokens[n], tree.draft_probs[n], tree.sources[n])
    return pruned
