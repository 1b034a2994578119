"""Decoding: the one driver loop (driver), its chain / tree / PEARL steps (chain, tree, pearl), verification as
pure functions (verification for chains, draft_tree for trees) and incremental detokenization."""
