"""Drafting with a masked-diffusion drafter: one pass fills the block, a path through its lattice is the draft.

Each step: (1) the drafter fills all L positions of its block in one forward pass; (2) the top m
candidates per position form the token lattice; (3) the draft is a left-to-right path through
the first K positions: CPS's best path (a causal score keeps it coherent) or each position's own
top candidate ("top1"); (4) the path ends at its first EOS, and that generated length goes to
the ADL policy. The target verifies the path as an ordinary chain.

What the verifier gets as the drafter's distribution q (lossless either way):
- cps: the path is a deterministic function of the context, so q is one-hot at each path token
  (accepted with probability p(x); on rejection the target's residual is p without x);
- top1 under sampling: each position's token is drawn from that position's distribution q_i,
  which is q for the verifier; under greedy it is the argmax.
"""

from __future__ import annotations

from typing import Any

import torch

from engine.drafting.diffusion_drafter import BlockDrafter
from engine.events import StepFeedback
from engine.sampling import SamplingConfig, check_finite, logits_to_probs
from engine.drafting.token_lattice import CausalScorer, LatticeDraft, TokenLattice, causal_path_search
from engine.drafting.proposers.base import Proposal

SEARCHES = ("cps", "top1")


class DiffusionProposer:
    """A `BlockDrafter` + a lattice path search. `block`: positions the drafter fills per pass (L)."""

    def __init__(self, drafter: BlockDrafter, block: int, search: str = "cps", scorer: CausalScorer | None = None,
                 causal_weight: float = 2.0, beam: int = 4, candidates: int = 4, eos_ids: set[int] = frozenset()):
        if search not in SEARCHES:
            raise ValueError(f"search must be one of {SEARCHES}, got {search!r}")
        self.drafter, self.block, self.search = drafter, block, search
        self.scorer, self.causal_weight, self.beam, self.candidates = scorer, causal_weight, beam, candidates
        self.eos_ids = set(eos_ids)

    def start(self, prompt_ids: list[int]) -> None:
        if self.scorer is not None:
            self.scorer.start(list(prompt_ids))

    def propose(self, context: list[int], k: int, sampling: SamplingConfig, generator: torch.Generator) -> Proposal:
        # 1. one drafter pass over the whole block: the distribution at every position
        logits = self.drafter.block_logits(context, self.block)  # [L, vocab]
        check_finite(logits, "diffusion drafter")
        q = logits_to_probs(logits, sampling)  # [L, vocab]
        # 2. the lattice: each position's top candidates
        lattice = TokenLattice.from_probs(q, self.candidates)
        k = min(k, self.block)
        # 3. the path through the first k positions, and the q the verifier checks it against
        if self.search == "cps":
            best = causal_path_search(lattice, k, context, self.scorer, self.causal_weight, self.beam, self.eos_ids)[0]
            tokens, causal = best.tokens, best.causal_logprobs
            draft_probs = _one_hot(tokens, q.shape[-1]) if not sampling.greedy else None
        else:
            rows = q[:k]
            tokens = rows.argmax(-1).tolist() if sampling.greedy else torch.multinomial(rows, 1, generator=generator)[:, 0].tolist()
            causal = []
            draft_probs = rows if not sampling.greedy else None
        # 4. the text ends at the first EOS: nothing after it can be accepted (ADL's generated length)
        end = next((i + 1 for i, t in enumerate(tokens) if t in self.eos_ids), None)
        tokens = tokens[:end] if end else tokens
        generated = end if end else self.block
        if draft_probs is None:  # greedy: the verifier ignores q; keep the drafter's own for the inspector
            draft_probs = q[: len(tokens)]
        path_probs = [float(q[i, t]) for i, t in enumerate(tokens)]
        return Proposal(tokens, draft_probs[: len(tokens)], self._info(lattice, tokens, k, end, sampling),
                        lattice=LatticeDraft(lattice, path_probs, list(causal[: len(tokens)])), generated=generated)

    def observe(self, feedback: StepFeedback) -> None:
        pass  # the drafter is stateless across steps; the n-gram scorer reads the committed context itself

    def _info(self, lattice: TokenLattice, tokens: list[int], k: int, end: int | None,
              sampling: SamplingConfig) -> dict[str, Any]:
        top1 = lattice.top1(len(tokens))
        differs = sum(a != b for a, b in zip(tokens, top1))
        scorer = f"{self.scorer.name} causal score x {self.causal_weight:g}" if self.scorer is not None else "no causal score"
        how = (f"causal path search (beam {self.beam}, {scorer})" if self.search == "cps"
               else "each position's top candidate (top1)" if sampling.greedy
               else "a draw from each position's own distribution")
        summary = f"one drafter pass filled {lattice.length} positions; path through the first {k} by {how}"
        if self.search == "cps":
            summary += f": differs from the top1 path at {differs} of {len(tokens)} positions"
            if not sampling.greedy:
                summary += "; the path is verified as a point-mass draft (q = 1 for each path token)"
        if end is not None:
            summary += f"; the drafter's text ends with EOS at position {end}"
        return {"summary": summary, "block": lattice.length, "path_differs_from_top1": differs}


def _one_hot(tokens: list[int], vocab: int) -> torch.Tensor:
    """Point-mass draft distributions [len(tokens), vocab] for a deterministically chosen path."""
    out = torch.zeros(len(tokens), vocab)
    out[torch.arange(len(tokens)), torch.tensor(tokens, dtype=torch.long)] = 1.0
    return out
