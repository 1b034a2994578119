"""Drafting: proposers (what is drafted), draft-length policies (how much), the diffusion drafter and its token
lattice with the causal-consistency path search, and the online n-gram table."""
