"""Proposers (drafters): propose a draft from the context, then observe the verdict.

Each proposer lives in its own module; pure search functions (n-gram matching) are kept apart
from the objects that hold state (KV caches).
"""

from engine.drafting.proposers.adaptive_ngram import AdaptiveNgramProposer
from engine.drafting.proposers.base import Proposal, Proposer
from engine.drafting.proposers.draft_model import DraftModelProposer
from engine.drafting.proposers.ngram import PromptLookupProposer, find_ngram_draft

__all__ = ["AdaptiveNgramProposer", "Proposal", "Proposer", "DraftModelProposer", "PromptLookupProposer", "find_ngram_draft"]
