"""Retrieval-augmented drafting (RASD, Quan et al. 2025), chain version.

The person attaches a document to the run; it is tokenised once with the target's tokenizer.
Each step:

1. **Retrieve.** The context's last `min_match` tokens are looked up in an n-gram position index
   of the document (built once); every occurrence is ranked by how far the match extends
   backwards (up to `max_match` tokens: the longest suffix match first, then the earliest in the
   document). The up to k document tokens that follow an occurrence form a *candidate*;
   identical continuations count once, and the best `max_candidates` are kept.
2. **Prune and fuse.** The drafter model (any same-tokenizer model, or the target's early-exit
   layers) walks the draft position by position. At position j, the candidates whose first j
   tokens equal the draft so far offer their j-th token; a candidate survives when the drafter
   gives its token at least `tau` under its (sampling-transformed) distribution at j, and is
   pruned otherwise. The surviving token with the highest drafter probability (ties: the better
   ranked candidate) is proposed. Once no candidate agrees with the draft and survives, the
   drafter continues the chain with up to `drafter_tokens` tokens of its own (argmax under
   greedy, sampled otherwise): the chain-shaped version of RASD's longest-prefix fusion of the
   retrieval tree with the drafter's tree, the retrieved prefix first, then the drafter's
   continuation. Until draft trees exist, this single chain is the proposal. With
   drafter_tokens = 0 the drafter only prunes, and it is not run at all in steps where nothing
   is retrieved (its cache catches up in one pass later).

The drafter's probabilities come from drafting itself: the best-ranked candidate is fed to the
drafter together with the context tokens it has not seen yet, in one forward pass that yields
the drafter's distribution at every position along it, for about the price of a single-token
pass. When the draft leaves that path (another candidate wins, or the drafter takes over), the
drafter's cache is cropped back to the draft and the new path is fed the same way.

**Why this is lossless.** Rejection sampling (engine.decoding.verification) returns exactly the
target's distribution whenever each drafted token x_j was drawn from the row draft_probs[j]
that the verifier is given, and that row depends only on the context and the drafted prefix
x_<j (never on the target, nor on later draws). Here the row at position j is:
- one-hot at the chosen token when retrieval supplied it: the candidates are a function of the
  context (and the fixed document), and the choice at j uses only the drafter's distribution
  given (context, x_<j), so x_j is a deterministic function of (context, x_<j), i.e. a draw
  from the one-hot row. It is accepted with probability p(x_j); a rejection resamples from
  max(0, p - one-hot), which is p without x_j, renormalised, so each y is output with
  probability p(y);
- the drafter's distribution q_j when the drafter supplied it, exactly as in draft-model
  speculation.
Tokens the drafter scored ahead along a candidate do not influence choices at earlier positions.
Under greedy decoding the verifier keeps the prefix that matches the target's argmax, so the
text equals the autoregressive baseline whatever is drafted.

Worked example (k = 3, tau = 0.1, min_match = 1, drafter_tokens = 1). The document reads "... members pay 25
euros, students pay 10 euros." and the context ends with "students pay".
- Retrieve: " pay" occurs twice. Occurrence B ("students pay") matches 2 tokens, A ("members
  pay") 1 token, so candidate #1 = [" 10", " euros", "."] and #2 = [" 25", " euros", ","].
- Step 1 of the proposer fed the unseen context tokens plus #1's [" 10", " euros", "."] to the
  drafter in one pass: it now knows its distribution at positions 0, 1 and 2 along #1.
- Position 0: the drafter gives q(" 10") = 0.55 and q(" 25") = 0.30. Both survive tau; " 10"
  has the higher drafter probability and is proposed with a one-hot row; #2 is dropped.
- Position 1: q(" euros") = 0.90 >= 0.1: proposed, one-hot row.
- Position 2: q(".") = 0.04 < 0.1: #1 is pruned; the drafter supplies its own token from q_2
  (say " and"), and the row is q_2.
Proposal: [" 10", " euros", " and"], draft_probs = [one-hot(" 10"), one-hot(" euros"), q_2].
Under sampling, " 10" is accepted with probability p(" 10"), and so on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from engine.loading.causal_lm import CachedCausalLM
from engine.events import StepFeedback
from engine.sampling import SamplingConfig, check_finite, logits_to_probs, sample
from engine.drafting.proposers.base import Proposal

PAD = -1  # fills continuation rows past the end of the document


@dataclass(frozen=True)
class Candidate:
    tokens: tuple[int, ...]  # the continuation: up to k document tokens after the match
    match_length: int  # context-suffix tokens that equal the document tokens just before it
    position: int  # document token index of the continuation's first token


class DocumentIndex:
    """Where every n-gram (n = min_match) of the tokenised document starts; built once per run.

    >>> index = DocumentIndex([7, 1, 2, 3, 9, 1, 2, 4, 5], min_match=2)
    >>> [(c.tokens, c.match_length, c.position) for c in index.retrieve([9, 1, 2], k=2, max_match=4, max_candidates=4)]
    [((4, 5), 3, 7), ((3, 9), 2, 3)]
    """

    def __init__(self, token_ids: list[int], min_match: int):
        self.token_ids = list(token_ids)
        self.min_match = min_match
        self._doc = torch.tensor(self.token_ids, dtype=torch.long)
        self._starts: dict[tuple[int, ...], list[int]] = {}
        for start in range(len(self.token_ids) - min_match + 1):
            self._starts.setdefault(tuple(self.token_ids[start : start + min_match]), []).append(start)

    def retrieve(self, context: list[int], k: int, max_match: int, max_candidates: int) -> list[Candidate]:
        """The best continuations of the context's suffix, longest match first."""
        n, size = self.min_match, len(self.token_ids)
        starts = self._starts.get(tuple(context[-n:])) if len(context) >= n else None
        if not starts:
            return []
        match_starts = torch.tensor(starts, dtype=torch.long)  # [m] where the last n context tokens occur
        match_starts = match_starts[match_starts + n < size]  # a candidate needs at least one token after the match
        if not len(match_starts):
            return []
        # 1. match length: extend each match backwards while the document and the context agree
        length = torch.full_like(match_starts, n)  # [m]
        extending = torch.ones_like(match_starts, dtype=torch.bool)
        for back in range(1, min(max_match, len(context)) - n + 1):
            before = match_starts - back
            extending &= (before >= 0) & (self._doc[before.clamp(min=0)] == context[-n - back])
            if not extending.any():
                break
            length += extending
        # 2. the k tokens after each match, PAD past the end of the document
        index = (match_starts + n)[:, None] + torch.arange(k)  # [m, k]
        rows = torch.where(index < size, self._doc[index.clamp(max=size - 1)], PAD)  # [m, k]
        # 3. rank by match length, then by earliest position; identical continuations count once
        score = length * (size + 1) + (size - match_starts)  # [m] unique per occurrence
        unique, inverse = torch.unique(rows, dim=0, return_inverse=True)
        best = torch.full((len(unique),), -1, dtype=torch.long).scatter_reduce(0, inverse, score, "amax")
        candidates = []
        for u in torch.argsort(best, descending=True)[:max_candidates].tolist():
            match_length, offset = divmod(int(best[u]), size + 1)
            tokens = [t for t in unique[u].tolist() if t != PAD]
            candidates.append(Candidate(tuple(tokens), match_length, size - offset + n))
        return candidates


@dataclass(frozen=True)
class RetrievalChoice:
    """What the walk does at one draft position."""

    token: int | None  # the retrieved token proposed here; None: no candidate survives (the drafter takes over)
    candidate: int | None  # the best-ranked candidate offering it (its remaining tokens are scored ahead)
    alive: list[int]  # the candidates offering it: they stay in the walk
    fates: dict[int, str]  # candidates that leave the walk here, and why


def choose_retrieved(
    candidates: list[Candidate],
    alive: list[int],
    position: int,
    draft_dist: torch.Tensor,  # [vocab] the drafter's distribution at this position, given the draft so far
    tau: float,
    text: Callable[[int], str],  # token id -> text, for the reasons
) -> RetrievalChoice:
    """Prune the alive candidates' tokens at `position` (drafter probability < tau) and pick one.

    The surviving token with the highest drafter probability wins (ties: the better-ranked
    candidate). The decision uses only `draft_dist`, i.e. the context and the draft so far.

    >>> cands = [Candidate((5, 6), 3, 10), Candidate((7,), 2, 20), Candidate((8, 9), 2, 30)]
    >>> choice = choose_retrieved(cands, [0, 1, 2], 0, torch.tensor([0, 0, 0, 0, 0, .3, 0, .6, .02, 0]), 0.1, str)
    >>> choice.token, choice.candidate, choice.alive
    (7, 1, [1])
    >>> choice.fates[2]
    "pruned at position 0: drafter p('8') = 0.020 < tau 0.1"
    """
    offers = []  # (drafter probability, candidate, token) of the candidates that survive here
    fates = {}
    for c in alive:
        if len(candidates[c].tokens) == position:
            fates[c] = f"used up after {position} tokens"
            continue
        token = candidates[c].tokens[position]
        prob = float(draft_dist[token])
        if prob < tau:
            fates[c] = f"pruned at position {position}: drafter p({text(token)!r}) = {prob:.3f} < tau {tau}"
        else:
            offers.append((prob, c, token))
    if not offers:
        return RetrievalChoice(None, None, [], fates)
    best_prob, best, token = max(offers, key=lambda offer: (offer[0], -offer[1]))
    for prob, c, other in offers:
        if other != token:
            fates[c] = (f"dropped at position {position}: {text(other)!r} (p {prob:.3f}) lost to "
                        f"#{best + 1}'s {text(token)!r} (p {best_prob:.3f})")
    return RetrievalChoice(token, best, [c for _, c, other in offers if other == token], fates)


class RetrievalProposer:
    """RASD chain drafting: retrieved continuations, pruned and continued by a drafter model.

    Drafter cache bookkeeping (as in DraftModelProposer): the cache always holds a prefix of the
    context followed by tokens fed for this proposal, `fed`, which may run ahead of the draft
    along a candidate. `dists[j]` is the drafter's distribution at draft position j, so
    len(dists) == len(fed) + 1. After the verdict the cache is cropped to the accepted prefix.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        document_ids: list[int],
        decode: Callable[[list[int]], str],  # token ids -> text, for the step inspector
        tau: float,
        max_candidates: int,
        min_match: int,
        max_match: int,
        drafter_tokens: int,
        drafter_name: str,
        stop_below: float = 0.0,
    ):
        self.model = model
        self.index = DocumentIndex(document_ids, min_match)
        self.decode = decode
        self.tau = tau
        self.max_candidates = max_candidates
        self.max_match = max_match
        self.drafter_tokens = drafter_tokens
        self.drafter_name = drafter_name
        self.stop_below = stop_below
        self.lm: CachedCausalLM | None = None
        self._context_length = 0

    def start(self, prompt_ids: list[int]) -> None:
        self.lm = CachedCausalLM(self.model)

    def _probs(self, logits: torch.Tensor, sampling: SamplingConfig) -> list[torch.Tensor]:
        check_finite(logits, "drafter")
        return list(logits_to_probs(logits, sampling))  # [n] rows of [vocab]

    def propose(self, context: list[int], k: int, sampling: SamplingConfig, generator: torch.Generator) -> Proposal:
        lm = self.lm
        assert lm is not None, "start() first"
        base = self._context_length = len(context)
        candidates = self.index.retrieve(context, k, self.max_match, self.max_candidates)
        if not candidates and self.drafter_tokens == 0:  # nothing to prune or continue: leave the drafter idle
            return Proposal([], None, self._info([], [], {}, [], [], []))
        # 1. catch up on the context tokens the cache has not seen, and score the best-ranked candidate in the
        #    same pass: dists[0] is the distribution at draft position 0, dists[1:] those along that candidate
        fed = list(candidates[0].tokens) if candidates else []
        dists = self._probs(lm.forward(context[lm.cached_length :] + fed, keep_logits=len(fed) + 1), sampling)
        draft: list[int] = []
        sources: list[int | None] = []  # per position: the candidate it came from, or None (the drafter)
        followed = [0] * len(candidates)  # positions each candidate agreed with the draft
        fates: dict[int, str] = {}
        alive = list(range(len(candidates)))  # candidates whose tokens equal the draft so far

        def crop(j: int) -> None:
            """Forget what was fed beyond draft position j."""
            if len(fed) > j:
                lm.rollback(base + j)
                del fed[j:], dists[j + 1 :]

        # 2. retrieval: follow the surviving candidate the drafter likes best, while one agrees with the draft
        while len(draft) < k and alive:
            j = len(draft)
            choice = choose_retrieved(candidates, alive, j, dists[j], self.tau, self._text)
            fates.update(choice.fates)
            if choice.token is None:
                break
            alive = choice.alive
            for c in alive:
                followed[c] += 1
            draft.append(choice.token)
            sources.append(choice.candidate)
            # the drafter's distribution after this token: already scored, or score the rest of the candidate in one pass
            if not (len(fed) > j and fed[j] == choice.token):
                crop(j)
                ahead = list(candidates[choice.candidate].tokens[j:])
                dists.extend(self._probs(lm.forward(ahead, keep_logits=len(ahead)), sampling))
                fed.extend(ahead)
        for c in alive:
            fates.setdefault(c, "followed to the end of the draft")

        # 3. the drafter continues the chain from where retrieval stopped, for up to drafter_tokens tokens
        retrieved = len(draft)
        length = min(k, retrieved + self.drafter_tokens)
        if retrieved < length:
            crop(retrieved)
        unsure = None  # the drafter's top probability where it stopped short of `length`, if it did
        while len(draft) < length:
            dist = dists[len(draft)]
            if float(dist.max()) < self.stop_below:  # double early exit: depends only on the prefix, so lossless
                unsure = float(dist.max())
                break
            token = int(dist.argmax()) if sampling.greedy else sample(dist, generator)
            draft.append(token)
            sources.append(None)
            if len(draft) < length:  # the last token's distribution would be wasted
                dists.extend(self._probs(lm.forward([token]), sampling))
                fed.append(token)
        info = self._info(candidates, followed, fates, draft, sources, [float(dists[j][t]) for j, t in enumerate(draft)], unsure)
        if not draft:
            return Proposal([], None, info)

        # retrieved tokens were chosen deterministically: one-hot rows; the drafter's tokens: its distribution
        rows = torch.stack(dists[: len(draft)])  # [len(draft), vocab]
        rows[:retrieved] = 0.0
        rows[torch.arange(retrieved), torch.tensor(draft[:retrieved], dtype=torch.long)] = 1.0
        return Proposal(draft, rows, info)

    def observe(self, feedback: StepFeedback) -> None:
        assert self.lm is not None
        self.lm.rollback(min(self.lm.cached_length, self._context_length + feedback.num_accepted))

    # -- the step inspector's account ---------------------------------------------------------------
    def _text(self, token_id: int) -> str:
        return self.decode([token_id])

    def _info(
        self,
        candidates: list[Candidate],
        followed: list[int],
        fates: dict[int, str],
        draft: list[int],
        sources: list[int | None],
        drafter_probs: list[float],
        unsure: float | None = None,
    ) -> dict[str, Any]:
        from_document = sum(1 for s in sources if s is not None)
        from_drafter = len(draft) - from_document
        if candidates:
            top = candidates[0]
            found = (f"{len(candidates)} candidate{'s' if len(candidates) != 1 else ''} retrieved "
                     f"(longest match {top.match_length} tokens, at document token {top.position})")
        else:
            found = f"no match in the document for the context's last {self.index.min_match} tokens"
        doc = self.index.token_ids
        stopped = (f"; the drafter stopped: top probability {unsure:.2f} < {self.stop_below:.2f}"
                   if unsure is not None else "")
        return {
            "summary": f"{found}; {from_document} drafted from the document, {from_drafter} by {self.drafter_name}{stopped}",
            "retrieved": len(candidates),
            "from_document": from_document,
            "from_drafter": from_drafter,
            "tau": self.tau,
            "tables": [
                {
                    "title": "Retrieved candidates (pruned where the drafter's probability is below tau)",
                    "columns": ["#", "match length", "document token", "matched text", "continuation", "in the draft",
                                "outcome"],
                    "rows": [
                        [i + 1, c.match_length, c.position,
                         self.decode(doc[c.position - c.match_length : c.position]),
                         self.decode(list(c.tokens)), followed[i], fates[i]]
                        for i, c in enumerate(candidates)
                    ],
                },
                {
                    "title": "Draft positions",
                    "columns": ["position", "token", "from", "drafter p"],
                    "rows": [
                        [j, self._text(t), f"document (candidate #{s + 1})" if s is not None else self.drafter_name, p]
                        for j, (t, s, p) in enumerate(zip(draft, sources, drafter_probs))
                    ],
                },
            ],
        }
