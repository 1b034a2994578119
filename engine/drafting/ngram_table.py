"""The online n-gram table ADED drafts from, and its PUCT scoring (pure data and functions, no proposer state).

The table maps each context n-gram to the tokens that followed it, with counts and verdicts;
`score_candidates` and `choose` apply the PUCT rule. The worked example and the method are in
engine.drafting.proposers.adaptive_ngram, which walks the table; engine.drafting.token_lattice's
n-gram causal scorer reads the same table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Continuation:
    """What the table knows about one (context n-gram -> next token) entry."""

    count: int = 0  # times the committed text continued the context with this token
    proposed: int = 0  # times it was drafted after this context and checked by the verifier
    accepted: int = 0  # times the verifier kept it
    last_seen: int = -1  # position of its latest occurrence in the text (tie-break: most recent)


@dataclass(frozen=True)
class Candidate:
    """One scored continuation of a context (see the module docstring for the formulas)."""

    token_id: int
    count: int
    proposed: int
    accepted: int
    prior: float  # P = count / times the context was seen
    value: float  # Q = (accepted + P * r_n) / (proposed + 1)
    score: float  # Q + c * P * sqrt(N) / (1 + proposed)
    last_seen: int


def score_candidates(continuations: dict[int, Continuation], reliability: float, exploration: float) -> list[Candidate]:
    """PUCT scores of a context's continuations, best first (ties: the most recently seen).

    reliability: r_n of the context's length n; exploration: c.

    >>> table = {7: Continuation(count=6, proposed=6, accepted=3, last_seen=40), 9: Continuation(count=3, last_seen=31)}
    >>> [(c.token_id, round(c.value, 3), round(c.score, 3)) for c in score_candidates(table, 0.8, exploration=1.0)]
    [(9, 0.267, 1.083), (7, 0.505, 0.738)]
    """
    seen = sum(entry.count for entry in continuations.values())
    visits = sum(entry.proposed for entry in continuations.values())
    out = []
    for token, entry in continuations.items():
        prior = entry.count / seen
        value = (entry.accepted + prior * reliability) / (entry.proposed + 1)
        bonus = exploration * prior * math.sqrt(visits) / (1 + entry.proposed)
        out.append(Candidate(token, entry.count, entry.proposed, entry.accepted, prior, value, value + bonus, entry.last_seen))
    out.sort(key=lambda c: (c.score, c.last_seen), reverse=True)
    return out


def choose(candidates: list[Candidate], chain: float, min_confidence: float) -> tuple[Candidate | None, str]:
    """The best-scored candidate with chain * Q >= min_confidence, and "exploit" or "explore".

    `candidates` are sorted best first (score_candidates); chain is the product of the Q of the
    tokens drafted before this position (1 at the first). Returns (None, "stop") when none qualifies.
    """
    eligible = [c for c in candidates if chain * c.value >= min_confidence]
    if not eligible:
        return None, "stop"
    chosen = eligible[0]
    best_value = max(c.value for c in eligible)
    return chosen, "exploit" if chosen.value >= best_value else "explore"


class NgramTable:
    """Context n-grams (min_ngram..max_ngram tokens) -> next token -> Continuation, fed online,
    plus the verdict counts per context length behind the reliability r_n."""

    def __init__(self, max_ngram: int, min_ngram: int):
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self.length = 0  # tokens of the text ingested so far
        self._next: dict[tuple[int, ...], dict[int, Continuation]] = {}
        self._verdicts = {n: [0, 0] for n in range(min_ngram, max_ngram + 1)}  # n -> [accepted, checked]

    def __len__(self) -> int:
        """Number of distinct context n-grams stored."""
        return len(self._next)

    def extend(self, tokens: list[int]) -> None:
        """Ingest tokens[self.length:], the text committed since the last call (tokens only grow)."""
        for position in range(self.length, len(tokens)):
            token = tokens[position]
            # every context length whose n-gram fits before this position
            for n in range(self.min_ngram, min(self.max_ngram, position) + 1):
                entry = self._next.setdefault(tuple(tokens[position - n : position]), {}).setdefault(token, Continuation())
                entry.count += 1
                entry.last_seen = position
        self.length = max(self.length, len(tokens))

    def lookup(self, text: list[int]) -> tuple[tuple[int, ...], dict[int, Continuation]] | None:
        """The longest suffix n-gram of `text` in the table (back-off max_ngram -> min_ngram), or None.

        >>> table = NgramTable(max_ngram=3, min_ngram=1)
        >>> table.extend([5, 6, 7, 5, 8])
        >>> table.lookup([1, 6])[0], table.lookup([9, 5])[0], table.lookup([4]) is None
        ((6,), (5,), True)
        """
        for n in range(min(self.max_ngram, len(text)), self.min_ngram - 1, -1):
            context = tuple(text[len(text) - n :])
            if context in self._next:
                return context, self._next[context]
        return None

    def reliability(self, n: int) -> float:
        """r_n: the share of drafts from n-token contexts the verifier kept, with one optimistic
        pseudo-acceptance (1 before any verdict, so that every context length gets tried)."""
        accepted, checked = self._verdicts[n]
        return (accepted + 1) / (checked + 1)

    def record(self, context: tuple[int, ...], token: int, accepted: bool) -> None:
        """The verifier's verdict on `token` drafted after `context`."""
        entry = self._next[context][token]
        entry.proposed += 1
        entry.accepted += accepted
        verdicts = self._verdicts[len(context)]
        verdicts[0] += accepted
        verdicts[1] += 1
