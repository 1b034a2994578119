"""ADED-style adaptive n-gram drafting: an n-gram table built online, walked with a PUCT rule.

ADED (Liu et al., 2024, "Adaptive Draft-Verification for Efficient LLM Decoding") approximates
the target with a tri-gram matrix that is updated from the target's own output, and builds drafts
with a Monte-Carlo-tree-search rule (PUCT) that balances exploiting the most likely continuation
against exploring others. OmniDraft likewise keeps an online n-gram cache fed by what the target
actually produced. Here:

- **The table** maps each context n-gram (the n tokens before a position, n = min_ngram ..
  max_ngram; n = 2 is ADED's tri-gram) to the tokens that followed it, each with a `count`
  (how often the committed text continued the context with it), `proposed` / `accepted` (how
  often it was drafted after this context and checked by the verifier, and kept) and the
  position it was last seen at. It also keeps, per context length n, how often drafts made from
  n-token contexts were accepted: the reliability r_n = (accepted_n + 1) / (checked_n + 1), which
  starts optimistic at 1 (a context length is trusted until the verifier refuses its drafts).
  The table is fed online: the prompt at `start`, then every committed token (accepted drafts
  and the target's own recovered / bonus tokens) at the next `propose`; `observe` records the
  verdicts. Drafted tokens that were never checked ("unchecked") teach nothing. The table lives
  for one run, so one seed always reproduces one run.
- **The walk** drafts token by token. At each position it backs off from the longest context
  n-gram the table has seen (n = max_ngram, then max_ngram - 1, ... down to min_ngram), scores
  that context's candidates and appends the winner; the next position looks up the text
  extended by the drafted token. The chain stops at K, when no context n-gram is in the table,
  or when no candidate keeps the chain's estimated acceptance (the product of the drafted
  tokens' Q, EAGLE-2's cumulative confidence) at or above min_confidence.
- **The PUCT rule** (AlphaZero's, as ADED uses it), with the verifier's verdicts as the reward
  where ADED scores tri-gram rollouts. For each candidate a of an n-token context seen N_ctx times:

      P(a) = count(a) / N_ctx                                   prior: the table's probability
      Q(a) = (accepted(a) + P(a) * r_n) / (proposed(a) + 1)     value: acceptance, P * r_n as one pseudo-trial
      score(a) = Q(a) + c * P(a) * sqrt(N) / (1 + proposed(a)), N = sum of proposed over the candidates

  The winner is the highest score among the eligible candidates (chain * Q >= min_confidence;
  ties: the most recently seen, as prompt lookup copies the latest match). It is an **exploit**
  if it also has the highest Q, an **explore** if only the bonus c * P * sqrt(N) / (1 + proposed)
  put it first. Before any verdict on a context (N = 0) there is no bonus, and the walk follows
  the most frequent continuation.

Worked example (c = 1, min_confidence = 0.15, first drafted position, so chain = 1). Drafts from
2-token contexts were accepted 23 times out of 29 so far: r_2 = 24 / 30 = 0.8. The context " of the"
was seen 9 times: " cat" 6 times, " dog" 3 times, so P = 0.667 and 0.333. " cat" was drafted here
6 times and accepted 3 times (the target wrote " dog" each time it refused); " dog" was never
drafted. N = 6:

    " cat": Q = (3 + 0.667 * 0.8) / 7 = 0.505, score = 0.505 + 0.667 * sqrt(6) / 7 = 0.738
    " dog": Q = (0 + 0.333 * 0.8) / 1 = 0.267, score = 0.267 + 0.333 * sqrt(6) / 1 = 1.083

" dog" is drafted although " cat" has the higher Q: an explore. If the target refuses it and
writes " cat", then " cat" has count 7 (P = 0.7), r_2 = 24 / 31 = 0.774 and " dog" has
Q = 0.3 * 0.774 / 2 = 0.116 < 0.15: only " cat" stays eligible, and it is drafted (exploit).

Verification stays lossless: the draft is a deterministic function of the text so far and of
past verdicts, never of randomness still to come, so the proposer declares it one-hot
(`draft_probs=None`, like prompt lookup) and rejection sampling keeps the target's distribution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from engine.events import StepFeedback
from engine.sampling import SamplingConfig
from engine.drafting.ngram_table import Candidate, NgramTable, choose, score_candidates
from engine.drafting.proposers.base import Proposal

INFO_CANDIDATES = 3  # candidates per drafted position shown in Proposal.info


@dataclass(frozen=True)
class DraftedPosition:
    """One step of the walk: the context it looked up and its scored candidates."""

    context: tuple[int, ...]
    chain: float  # product of the Q of the tokens drafted before this position
    candidates: list[Candidate]
    chosen: Candidate | None  # None: the walk stopped here (no candidate kept chain * Q >= min_confidence)
    mode: str  # "exploit" | "explore" | "stop"


class AdaptiveNgramProposer:
    """ADED-style drafter: walk an online n-gram table with the PUCT rule (module docstring).

    decode: optional ids -> text (e.g. the target tokenizer's decode) so that Proposal.info
    shows token texts next to the ids.
    """

    def __init__(
        self,
        max_ngram: int,
        min_ngram: int,
        exploration: float,
        min_confidence: float,
        decode: Callable[[list[int]], str] | None = None,
    ):
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self.exploration = exploration
        self.min_confidence = min_confidence
        self.decode = decode
        self.table = NgramTable(max_ngram, min_ngram)
        self._drafted: list[DraftedPosition] = []

    def start(self, prompt_ids: list[int]) -> None:
        self.table = NgramTable(self.max_ngram, self.min_ngram)
        self.table.extend(prompt_ids)
        self._drafted = []

    def propose(self, context: list[int], k: int, sampling: SamplingConfig, generator: torch.Generator) -> Proposal:
        # the tokens committed since the last proposal join the table before it is walked
        self.table.extend(context)
        text = context[-self.max_ngram :]
        walk: list[DraftedPosition] = []
        chain = 1.0
        stop = f"reached K = {k}"
        while len(walk) < k:
            # 1. the longest context n-gram the table has seen (back-off)
            found = self.table.lookup(text)
            if found is None:
                stop = f"no context of {self.min_ngram}..{self.max_ngram} tokens is in the table"
                break
            # 2. PUCT scores, then the best candidate that keeps the chain confident enough
            key, continuations = found
            candidates = score_candidates(continuations, self.table.reliability(len(key)), self.exploration)
            chosen, mode = choose(candidates, chain, self.min_confidence)
            walk.append(DraftedPosition(key, chain, candidates, chosen, mode))
            if chosen is None:
                best = chain * max(c.value for c in candidates)
                stop = f"best chain Q {best:.2f} < min_confidence {self.min_confidence:.2f}"
                break
            # 3. extend the text and the chain by the drafted token
            text = (text + [chosen.token_id])[-self.max_ngram :]
            chain *= chosen.value
        self._drafted = [p for p in walk if p.chosen is not None]
        draft = [p.chosen.token_id for p in self._drafted]
        return Proposal(draft, None, self._info(walk, stop))

    def observe(self, feedback: StepFeedback) -> None:
        # positions up to the first rejection were checked; later ones ("unchecked") teach nothing
        for drafted, accepted in feedback.checked(self._drafted):
            self.table.record(drafted.context, drafted.chosen.token_id, accepted=accepted)

    def _text(self, ids: list[int] | tuple[int, ...]) -> str:
        return self.decode(list(ids)) if self.decode is not None else " ".join(map(str, ids))

    def _info(self, walk: list[DraftedPosition], stop: str) -> dict[str, Any]:
        """Proposal.info: a summary line, the table rows behind each drafted position, and r_n."""
        columns = ["pos", "n", "context ids", "token id", "count", "accepted/proposed", "P", "Q", "chain Q", "score", "choice"]
        if self.decode is not None:
            columns[2:2] = ["context"]
            columns[4:4] = ["token"]
        rows = []
        for pos, step in enumerate(walk):
            for candidate in step.candidates[:INFO_CANDIDATES]:
                is_chosen = step.chosen is not None and candidate.token_id == step.chosen.token_id
                row = [
                    pos, len(step.context), " ".join(map(str, step.context)), candidate.token_id, candidate.count,
                    f"{candidate.accepted}/{candidate.proposed}", round(candidate.prior, 3), round(candidate.value, 3),
                    round(step.chain * candidate.value, 3), round(candidate.score, 3),
                    step.mode if is_chosen or step.mode == "stop" else "",
                ]
                if self.decode is not None:
                    row[2:2] = [self._text(step.context)]
                    row[4:4] = [self._text([candidate.token_id])]
                rows.append(row)
        drafted = sum(1 for step in walk if step.chosen is not None)
        explored = sum(1 for step in walk if step.mode == "explore")
        if walk:
            first = walk[0]
            seen = sum(c.count for c in first.candidates)
            head = f"{len(first.context)}-token context {self._text(first.context)!r} seen {seen} time{'s' * (seen != 1)}"
        else:
            head = "no context found"
        return {
            "summary": f"{drafted} drafted; {head}; explored {explored} alternative{'s' * (explored != 1)}; stopped: {stop}",
            "tables": [{"title": f"n-gram table at each drafted position (top {INFO_CANDIDATES} by PUCT score)", "columns": columns, "rows": rows}],
            **{f"r_{n}": round(self.table.reliability(n), 3) for n in range(self.min_ngram, self.max_ngram + 1)},
            "contexts_in_table": len(self.table),
        }
