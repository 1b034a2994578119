"""Draft trees without a drafter model: every earlier continuation of the context's suffix, merged.

Prompt lookup drafts the continuation of ONE earlier occurrence of the suffix n-gram; a tree
keeps several (the most recent `max_candidates` distinct ones), merged where they share a
prefix, so the target can accept whichever the text follows. RASD's fused tree inserts the
continuations retrieved from a document into the drafter model's tree the same way: a retrieved
path that starts like a model path shares its nodes (longest-prefix match) and branches off
where they differ.

Every child is chosen deterministically from the context, so sampling verification treats each
as a point-mass proposal ("chosen" in engine.decoding.draft_tree).

>>> ngram_continuations([5, 6, 7, 5, 6, 8, 1, 5, 6], k=2, max_ngram=2, min_ngram=1, max_candidates=4)
[(8, 1), (7, 5)]
"""

from __future__ import annotations

from typing import Any

import torch

from engine.decoding.draft_tree import DraftTree
from engine.events import StepFeedback
from engine.sampling import SamplingConfig
from engine.drafting.proposers.model_trees import ModelTreeProposer, TreeProposal
from engine.drafting.proposers.retrieval import DocumentIndex


def ngram_continuations(tokens: list[int], k: int, max_ngram: int, min_ngram: int,
                        max_candidates: int) -> list[tuple[int, ...]]:
    """Distinct continuations (up to k tokens) of the earlier occurrences of the longest matching suffix n-gram, most recent first."""
    length = len(tokens)
    for n in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        suffix = tokens[length - n :]
        found: list[tuple[int, ...]] = []
        for start in range(length - n - 1, -1, -1):
            if tokens[start : start + n] == suffix:
                continuation = tuple(tokens[start + n : start + n + k])
                if continuation and continuation not in found:
                    found.append(continuation)
                    if len(found) == max_candidates:
                        break
        if found:
            return found
    return []


def insert_paths(tree: DraftTree, paths: list[tuple[int, ...]], source: str) -> None:
    """Insert each path under the root, sharing nodes with existing paths that start the same way."""
    for path in paths:
        node = 0
        for token in path:
            node = tree.add(node, token, None, source)


class LookupTreeProposer:
    """A tree of the context's earlier continuations (multi-candidate prompt lookup)."""

    def __init__(self, max_ngram: int, min_ngram: int, max_candidates: int, k: int):
        self.max_ngram, self.min_ngram, self.max_candidates, self.k = max_ngram, min_ngram, max_candidates, k

    def start(self, prompt_ids: list[int]) -> None:
        pass

    def observe(self, feedback: StepFeedback) -> None:
        pass

    def propose_tree(self, context: list[int], max_depth: int, sampling: SamplingConfig,
                     generator: torch.Generator) -> TreeProposal:
        tree = DraftTree.rooted_at(context[-1])
        found = ngram_continuations(context, min(self.k, max_depth), self.max_ngram, self.min_ngram,
                                    self.max_candidates) if max_depth > 0 else []
        insert_paths(tree, found, "retrieval")
        summary = (f"{len(found)} earlier continuation{'s' if len(found) != 1 else ''} of the context's suffix, "
                   f"merged into {len(tree) - 1} nodes") if found else "no earlier occurrence of the suffix: no draft"
        return TreeProposal(tree, {"summary": summary, "candidates": len(found)})


class _FusedTree:
    """A drafter's tree with copied continuations merged in; subclasses say where the copies come from."""

    model_tree: ModelTreeProposer
    k: int
    copied = "retrieved"  # how the summary names the copies

    def continuations(self, context: list[int], depth: int) -> list[tuple[int, ...]]:
        raise NotImplementedError

    def start(self, prompt_ids: list[int]) -> None:
        self.model_tree.start(prompt_ids)

    def observe(self, feedback: StepFeedback) -> None:
        self.model_tree.observe(feedback)

    def propose_tree(self, context: list[int], max_depth: int, sampling: SamplingConfig,
                     generator: torch.Generator) -> TreeProposal:
        proposal = self.model_tree.propose_tree(context, max_depth, sampling, generator)
        model_nodes = len(proposal.tree) - 1
        found = self.continuations(context, min(self.k, max_depth)) if max_depth > 0 else []
        insert_paths(proposal.tree, found, "retrieval")
        shared = sum(1 for s in proposal.tree.sources if s == "both")
        info: dict[str, Any] = dict(proposal.info)
        info["summary"] = (f"{info.get('summary', '')}; {len(found)} {self.copied} continuation"
                           f"{'s' if len(found) != 1 else ''} merged in ({shared} nodes shared with the model's tree, "
                           f"{len(proposal.tree) - 1 - model_nodes} added)")
        info["retrieved"] = len(found)
        return TreeProposal(proposal.tree, info)


class FusedRetrievalTreeProposer(_FusedTree):
    """RASD: the drafter model's tree with the document's retrieved continuations merged into it."""

    def __init__(self, model_tree: ModelTreeProposer, document_ids: list[int], k: int, max_candidates: int,
                 min_match: int, max_match: int):
        self.model_tree = model_tree
        self.index = DocumentIndex(document_ids, min_match)
        self.k, self.max_candidates, self.max_match = k, max_candidates, max_match

    def continuations(self, context: list[int], depth: int) -> list[tuple[int, ...]]:
        return [c.tokens for c in self.index.retrieve(context, depth, self.max_match, self.max_candidates)]


class FusedLookupTreeProposer(_FusedTree):
    """Copy + model drafting in one tree: the drafter's tree with the context's own earlier continuations of its
    suffix (prompt lookup's candidates) merged in; nodes both sources proposed are shared ("both")."""

    copied = "looked-up"

    def __init__(self, model_tree: ModelTreeProposer, k: int, max_candidates: int, max_ngram: int, min_ngram: int):
        self.model_tree = model_tree
        self.k, self.max_candidates, self.max_ngram, self.min_ngram = k, max_candidates, max_ngram, min_ngram

    def continuations(self, context: list[int], depth: int) -> list[tuple[int, ...]]:
        return ngram_continuations(context, depth, self.max_ngram, self.min_ngram, self.max_candidates)
