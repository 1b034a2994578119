"""Prompt-lookup (n-gram) drafting: table-driven cases for find_ngram_draft and the proposer."""

from __future__ import annotations

import pytest
import torch

from engine.events import StepFeedback
from engine.drafting.proposers import PromptLookupProposer, find_ngram_draft
from engine.sampling import SamplingConfig

CASES = [
    # (tokens, k, max_ngram, min_ngram, expected, why)
    ([5, 6, 7, 8, 1, 5, 6], 3, 2, 1, [7, 8, 1], "docstring example: bigram 5 6 seen before"),
    ([1, 2, 3], 3, 2, 1, [], "no earlier occurrence of any suffix"),
    ([], 3, 3, 1, [], "empty context"),
    ([4], 3, 3, 1, [], "a single token has nothing earlier"),
    ([1, 2, 9, 1, 2, 8, 1, 2], 2, 2, 1, [8, 1], "most recent earlier match wins (8, not 9)"),
    ([1, 2, 9, 1, 2, 8, 1, 2], 5, 2, 1, [8, 1, 2], "draft stops at the end of the context"),
    ([7, 1, 2, 3, 4, 0, 2, 3, 5, 1, 2, 3], 2, 3, 1, [4, 0], "longest n first: trigram 1 2 3 beats the later bigram 2 3"),
    ([7, 1, 2, 3, 4, 0, 2, 3, 5, 1, 2, 3], 2, 2, 1, [5, 1], "with max_ngram 2 the most recent bigram 2 3 wins"),
    ([7, 1, 2, 3, 4, 0, 2, 3, 5, 1, 2, 3], 2, 1, 1, [5, 1], "unigram 3: most recent earlier 3 is followed by 5"),
    ([1, 2, 3, 4, 9, 4], 3, 3, 2, [], "only a unigram matches but min_ngram is 2"),
    ([1, 2, 3, 4, 9, 4], 3, 3, 1, [9, 4], "the unigram match when min_ngram allows it"),
    ([3, 3, 3, 3], 2, 2, 1, [3], "overlapping match: the most recent one may overlap the suffix"),
    ([1, 2, 3, 4, 5, 6, 1, 2], 1, 2, 1, [3], "k truncation to 1"),
    ([1, 2, 3, 4, 5, 6, 1, 2], 4, 2, 1, [3, 4, 5, 6], "k truncation to 4"),
    ([1, 2, 3, 4, 5, 6, 1, 2], 10, 2, 1, [3, 4, 5, 6, 1, 2], "k larger than what follows"),
    ([1, 2, 1, 2], 3, 5, 1, [1, 2], "max_ngram longer than the context is clipped"),
    ([9, 8, 7, 9, 8, 7], 3, 3, 3, [9, 8, 7], "exact trigram repetition"),
]


@pytest.mark.parametrize("tokens, k, max_ngram, min_ngram, expected, why", CASES, ids=[c[-1] for c in CASES])
def test_find_ngram_draft(tokens, k, max_ngram, min_ngram, expected, why):
    assert find_ngram_draft(tokens, k, max_ngram, min_ngram) == expected


def test_find_ngram_draft_does_not_modify_its_input():
    tokens = [1, 2, 3, 1, 2]
    find_ngram_draft(tokens, 3, 3, 1)
    assert tokens == [1, 2, 3, 1, 2]


def test_draft_is_always_a_continuation_of_a_match():
    """Property check on random sequences: a non-empty draft is what followed an earlier copy of a suffix."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        length = int(torch.randint(1, 25, (), generator=gen))
        tokens = torch.randint(0, 4, (length,), generator=gen).tolist()
        k = int(torch.randint(1, 6, (), generator=gen))
        draft = find_ngram_draft(tokens, k, max_ngram=3, min_ngram=1)
        assert len(draft) <= k
        if draft:
            found = any(
                tokens[start : start + n] == tokens[length - n :] and tokens[start + n : start + n + len(draft)] == draft
                for n in range(1, 4)
                for start in range(0, length - n)
            )
            assert found
        else:
            # nothing earlier matches even the last token
            assert tokens[-1] not in tokens[:-1]


def test_prompt_lookup_proposer():
    proposer = PromptLookupProposer(max_ngram=2, min_ngram=1)
    proposer.start([1, 2, 3])
    sampling = SamplingConfig()
    proposal = proposer.propose([5, 6, 7, 8, 1, 5, 6], 2, sampling, sampling.make_generator())
    assert proposal.token_ids == [7, 8] and proposal.draft_probs is None
    proposer.observe(StepFeedback(2, 1))
    assert proposer.propose([1, 2, 3], 4, sampling, sampling.make_generator()).token_ids == []
