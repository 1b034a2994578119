"""SpecViz: what a person sees or keeps (UI, figures, SQLite store, CLI, benchmarks)."""
