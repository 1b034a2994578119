"""Analysis after the fact: the hindsight-optimal draft length (oracle) and the optimal multi-draft
acceptance (optimal_acceptance). Nothing here runs inside the decoding loop."""
