"""Exact tabular SUBSAMPLE-Q over count vectors (SPEC §2)."""
