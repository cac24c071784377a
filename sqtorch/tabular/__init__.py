"""Exact tabular SUBSAMPLE-Q over count vectors (SPEC §2)."""

from sqtorch.tabular.counts import all_counts, num_counts, rank, rank_states, unrank
from sqtorch.tabular.exact import CountKernel, count_kernel, exact_q
from sqtorch.tabular.learner import LearnResult, learn, sample_kernel
from sqtorch.tabular.qtable import QTable

__all__ = [
    "CountKernel",
    "LearnResult",
    "QTable",
    "all_counts",
    "count_kernel",
    "exact_q",
    "learn",
    "num_counts",
    "rank",
    "rank_states",
    "sample_kernel",
    "unrank",
]
