"""Prompt lookup (n-gram) drafting: copy what followed the last n tokens the previous time.

No model and no probabilities: verification treats the draft as one-hot.
"""

from __future__ import annotations

import torch

from engine.events import StepFeedback
from engine.sampling import SamplingConfig
from engine.drafting.proposers.base import Proposal


def find_ngram_draft(tokens: list[int], k: int, max_ngram: int, min_ngram: int) -> list[int]:
    """Up to k tokens that followed the most recent earlier occurrence of the context's suffix n-gram.

    Tries n = max_ngram down to min_ngram; the first n with a match wins.

    >>> find_ngram_draft([5, 6, 7, 8, 1, 5, 6], k=3, max_ngram=2, min_ngram=1)
    [7, 8, 1]
    >>> find_ngram_draft([1, 2, 3], k=3, max_ngram=2, min_ngram=1)
    []
    """
    length = len(tokens)
    for n in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        suffix = tokens[length - n :]
        # scan right to left so the most recent earlier occurrence wins (it may overlap the suffix)
        for start in range(length - n - 1, -1, -1):
            if tokens[start : start + n] == suffix:
                draft = tokens[start + n : start + n + k]
                if draft:
                    return draft
    return []


class PromptLookupProposer:
    def __init__(self, max_ngram: int, min_ngram: int):
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram

    def start(self, prompt_ids: list[int]) -> None:
        pass

    def propose(self, context: list[int], k: int, sampling: SamplingConfig, generator: torch.Generator) -> Proposal:
        draft = find_ngram_draft(context, k, self.max_ngram, self.min_ngram)
        return Proposal(draft, None)

    def observe(self, feedback: StepFeedback) -> None:
        pass
