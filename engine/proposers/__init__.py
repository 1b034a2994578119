"""Proposers (drafters): propose a draft from the context, then observe the verdict.

Each proposer lives in its own module; pure search functions (n-gram matching) are kept apart
from the objects that hold state (KV caches).
"""

from .adaptive_ngram import AdaptiveNgramProposer
from .base import Proposal, Proposer
from .draft_model import DraftModelProposer
from .ngram import PromptLookupProposer, find_ngram_draft

__all__ = ["AdaptiveNgramProposer", "Proposal", "Proposer", "DraftModelProposer", "PromptLookupProposer", "find_ngram_draft"]
