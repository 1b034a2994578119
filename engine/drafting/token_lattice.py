"""The token lattice of a diffusion drafter, and causal-consistency path search (CPS) through it.

A masked-diffusion drafter fills a block of L positions in one pass: for each position it gives a
distribution over tokens, made without seeing its own guesses at the other positions. Keeping
each position's top m candidates gives a lattice of L x m tokens. Taking every position's top
candidate (the "top1" path) often yields incoherent text ("the the", a word split twice), because
the positions were guessed independently.

CPS (DiffuSpec) searches left-to-right paths through the lattice with a beam, scoring a path by

    score(x_1..x_n) = sum_i log q_i(x_i) + causal_weight * sum_i log c(x_i | context, x_<i)

where q_i is the drafter's distribution at position i and c a causal (left-to-right) model of
the text: an n-gram table of the context (`NgramCausalScorer`, nearly free) or the
autoregressive drafter (`DrafterCausalScorer`, one drafter pass per position over the beam).
With causal_weight 0 the best path is the top1 path.

Worked example (m = 2, causal_weight 1, beam 2): the lattice is
position 0: " the" 0.6, " a" 0.4; position 1: " the" 0.5, " cat" 0.4. The top1 path is
" the the" (log 0.6 + log 0.5). If the causal model gives c(" the" | " the") = 0.01 and
c(" cat" | " the") = 0.3 (and the same to both first tokens, so that term is left out), then
" the cat" scores log 0.6 + log 0.4 + log 0.3 = -2.64 against " the the" at
log 0.6 + log 0.5 + log 0.01 = -5.82: CPS proposes " the cat".

The chosen path is a deterministic function of the context, so under sampling it is verified as
a point-mass draft (q = one-hot): accepted with probability p(x), lossless like any draft.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch

from engine.decoding.draft_tree import DraftTree
from engine.drafting.ngram_table import NgramTable


@dataclass(frozen=True)
class TokenLattice:
    """Each position's top candidates: candidate_ids and candidate_probs [L, m], most likely first."""

    candidate_ids: torch.Tensor  # [L, m] int64
    candidate_probs: torch.Tensor  # [L, m] float32, the drafter's probabilities

    @classmethod
    def from_probs(cls, probs: torch.Tensor, candidates: int) -> TokenLattice:
        """probs: [L, vocab] the drafter's distribution per position; keeps the top `candidates` of each.

        Zero-probability tokens (VocabTrim, top-k / top-p) never become candidates, so a row may
        hold fewer real candidates than m; their probabilities are 0 and the search skips them.
        """
        values, ids = torch.topk(probs, min(candidates, probs.shape[-1]), dim=-1)  # [L, m]
        return cls(ids, values.float())

    @property
    def length(self) -> int:
        return int(self.candidate_ids.shape[0])

    def top1(self, length: int) -> list[int]:
        """The top candidate of each of the first `length` positions."""
        return self.candidate_ids[:length, 0].tolist()


@dataclass(frozen=True)
class LatticeDraft:
    """What a diffusion proposer drafted from: the lattice and, per path token, its scores."""

    lattice: TokenLattice
    path_probs: list[float]  # the drafter's probability of each path token at its position
    causal_logprobs: list[float]  # log c(token | context + path before it); empty when no causal score was used


class CausalScorer(Protocol):
    """A left-to-right model of the text that scores each extension of a path (CPS's causal score)."""

    name: str

    def start(self, prompt_ids: list[int]) -> None:
        """Reset per-run state."""

    def score(self, context: list[int], paths: list[list[int]], candidates: list[list[int]]) -> list[list[float]]:
        """log c(token | context + path) for each path and each of its candidate tokens.

        paths[b]: the b-th beam's tokens so far (after the context); candidates[b]: the tokens to
        score after it. All paths have the same length (one search position at a time).
        """


class NgramCausalScorer:
    """The context's own n-gram statistics (prompt + output so far), with add-one smoothing over the candidates.

    After the longest suffix n-gram of context + path that occurred before (max_ngram down to 1),
    a candidate seen c times out of N continuations scores log((c + 1) / (N + m)), m = number of
    candidates; when no suffix occurred, every candidate scores log(1 / m) (no evidence either way).

        >>> scorer = NgramCausalScorer(max_ngram=2)
        >>> [round(math.exp(s), 2) for s in scorer.score([5, 6, 7, 5, 6, 8, 5], [[]], [[6, 9]])[0]]
        [0.75, 0.25]
    """

    name = "ngram"

    def __init__(self, max_ngram: int = 3):
        self.max_ngram = max_ngram
        self.table = NgramTable(max_ngram, 1)

    def start(self, prompt_ids: list[int]) -> None:
        self.table = NgramTable(self.max_ngram, 1)

    def score(self, context: list[int], paths: list[list[int]], candidates: list[list[int]]) -> list[list[float]]:
        self.table.extend(context)  # ingests only what was committed since the last step
        out = []
        for path, tokens in zip(paths, candidates):
            found = self.table.lookup(context[-self.max_ngram:] + path)
            continuations = {} if found is None else found[1]
            total = sum(c.count for c in continuations.values())
            out.append([math.log((getattr(continuations.get(t), "count", 0) + 1) / (total + len(tokens))) for t in tokens])
        return out


class DrafterCausalScorer:
    """The autoregressive drafter's log-probabilities, one drafter pass per search position.

    The beam's paths form a tree rooted at the last context token; each position feeds the
    paths' newest tokens in ONE pass with tree attention (as the draft-tree proposers do), so
    shared prefixes are computed once. The drafter's cache keeps the context between steps.
    """

    name = "drafter"

    def __init__(self, model: torch.nn.Module):
        from engine.drafting.proposers.model_trees import TreeDrafter

        self.drafter = TreeDrafter(model)
        self.passes = 0  # drafter forward passes in the last search
        self._tree: DraftTree | None = None
        self._node: dict[tuple[int, ...], int] = {}  # path -> tree node
        self._logprobs: dict[int, torch.Tensor] = {}  # tree node -> log c(. | its path) [vocab]
        self._region: dict[int, int] = {}

    def start(self, prompt_ids: list[int]) -> None:
        self.drafter.start()

    def score(self, context: list[int], paths: list[list[int]], candidates: list[list[int]]) -> list[list[float]]:
        if not paths[0]:  # a new search: catch up on the context, start a new tree
            self._tree = DraftTree.rooted_at(context[-1])
            self._node, self._region = {(): 0}, {}
            self._logprobs = {0: torch.log_softmax(self.drafter.root(context).float(), -1)}
            self.passes = 1
        assert self._tree is not None
        # feed the paths' newest tokens (the nodes not yet scored) in one pass
        new = []
        for path in paths:
            key = tuple(path)
            if key not in self._node:
                self._node[key] = self._tree.add(self._node[key[:-1]], key[-1], None)
                new.append(self._node[key])
        if new:
            logits = self.drafter.expand(self._tree, new, self._region).float()  # [len(new), vocab]
            self.passes += 1
            for node, row in zip(new, torch.log_softmax(logits, -1)):
                self._logprobs[node] = row
        return [[float(self._logprobs[self._node[tuple(p)]][t]) for t in tokens] for p, tokens in zip(paths, candidates)]


@dataclass(frozen=True)
class LatticePath:
    """A path through the first len(tokens) positions of a lattice."""

    tokens: list[int]
    ranks: list[int]  # each token's rank among its position's candidates
    score: float  # sum of log q + causal_weight * sum of log c
    causal_logprobs: list[float]  # log c(token | context + path before it); empty without a causal score


def causal_path_search(lattice: TokenLattice, length: int, context: list[int], scorer: CausalScorer | None,
                       causal_weight: float, beam: int, eos_ids: set[int] = frozenset()) -> list[LatticePath]:
    """Beam search over the first `length` positions of `lattice`; returns the beam, best path first.

    scorer None (or causal_weight 0) scores by the drafter alone, and the best path is the top1 path.
    A path that takes an EOS token ends there (nothing after the end of the text can be accepted):
    it is carried along unchanged and competes with the longer paths by its score so far.

        >>> lattice = TokenLattice(torch.tensor([[1, 2], [1, 3]]), torch.tensor([[0.6, 0.4], [0.5, 0.4]]))
        >>> causal_path_search(lattice, 2, [0], None, 0.0, beam=2)[0].tokens
        [1, 1]
    """
    log_q = lattice.candidate_probs.clamp_min(1e-30).log()  # [L, m]
    beams = [LatticePath([], [], 0.0, [])]
    for i in range(min(length, lattice.length)):
        # 1. the candidates at position i that the drafter gives any probability
        ranks = [r for r in range(lattice.candidate_ids.shape[1]) if lattice.candidate_probs[i, r] > 0]
        tokens = [int(lattice.candidate_ids[i, r]) for r in ranks]
        # 2. the causal score of each candidate after each open path (ended paths are carried along, not extended)
        ended = [b for b in beams if b.tokens and b.tokens[-1] in eos_ids]
        open_beams = [b for b in beams if not (b.tokens and b.tokens[-1] in eos_ids)]
        use_causal = scorer is not None and causal_weight > 0 and open_beams
        causal = scorer.score(context, [b.tokens for b in open_beams], [tokens] * len(open_beams)) if use_causal else None
        # 3. every extension, then keep the best `beam`
        extended = ended
        for j, b in enumerate(open_beams):
            for k, (r, t) in enumerate(zip(ranks, tokens)):
                c = causal[j][k] if causal is not None else None
                extended.append(LatticePath(b.tokens + [t], b.ranks + [r],
                                            b.score + float(log_q[i, r]) + (causal_weight * c if c is not None else 0.0),
                                            b.causal_logprobs + ([c] if c is not None else [])))
        beams = sorted(extended, key=lambda p: -p.score)[:beam]
    return beams
