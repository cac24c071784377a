"""Evaluation of subsampled policies on the full n-agent system (SPEC §2 Algorithm 2, SPEC §5)."""

from sqtorch.evaluation.execution import (
    EvalResult,
    PairedResult,
    SubsampledPolicy,
    compare_mc,
    evaluate_mc,
    horizon_for,
    initial_states,
)

__all__ = [
    "EvalResult",
    "PairedResult",
    "SubsampledPolicy",
    "compare_mc",
    "evaluate_mc",
    "horizon_for",
    "initial_states",
]
