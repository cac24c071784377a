"""Tabular SUBSAMPLE-Q over count vectors (docs/model.md §2)."""

from sqtorch.tabular.counts import all_counts, num_counts, rank, rank_states, unrank
from sqtorch.tabular.exact import CountKernel, check_tractable, count_kernel, optimal_q
from sqtorch.tabular.learner import LearnResult, learn, sample_kernel
from sqtorch.tabular.qtable import QTable

__all__ = [
    "CountKernel",
    "LearnResult",
    "QTable",
    "all_counts",
    "check_tractable",
    "count_kernel",
    "learn",
    "num_counts",
    "optimal_q",
    "rank",
    "rank_states",
    "sample_kernel",
    "unrank",
]
