"""Evaluation of subsampled policies on the full n-agent system (Algorithm 2, docs/model.md §5)."""

from sqtorch.evaluation.exact import optimal_value, policy_value, value_at
from sqtorch.evaluation.execution import (
    EvalResult,
    PairedResult,
    SubsampledPolicy,
    compare_mc,
    evaluate_mc,
    horizon_for,
    initial_states,
)
from sqtorch.evaluation.reference import Reference, ValidationConfig, build_reference, validation_metrics
from sqtorch.tabular.exact import optimal_q

__all__ = [
    "EvalResult",
    "PairedResult",
    "Reference",
    "SubsampledPolicy",
    "ValidationConfig",
    "build_reference",
    "compare_mc",
    "evaluate_mc",
    "horizon_for",
    "initial_states",
    "optimal_q",
    "optimal_value",
    "policy_value",
    "validation_metrics",
    "value_at",
]
