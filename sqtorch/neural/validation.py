"""Validation of a learned policy on the full n-agent system (SPEC §5), for training-time logging.

:func:`evaluate_return` is the single place training calls the Monte Carlo evaluator
(:func:`sqtorch.evaluation.execution.evaluate_mc`: greedy subsampled policy, all n agents in the
reward, ``gamma^t`` discounting, fixed initial states, common random numbers).

:class:`Reference` holds what a run can be compared with: ``V*`` (exact count MDP at k = n,
:mod:`sqtorch.evaluation.exact`) and the exact tabular Q at the same k
(:func:`sqtorch.tabular.exact.exact_q`), each only when the problem is small enough.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from sqtorch.envs.base import GlobalLocalMDP
from sqtorch.envs.simulator import make_generator, sample_initial_state
from sqtorch.evaluation.exact import optimal_value, policy_value, value_at
from sqtorch.evaluation.execution import SubsampledPolicy, evaluate_mc
from sqtorch.neural import metrics as M
from sqtorch.tabular.counts import num_counts
from sqtorch.tabular.exact import count_kernel, exact_q


def evaluate_return(env: GlobalLocalMDP, policy: SubsampledPolicy, n: int, **kwargs: Any) -> tuple[float, float]:
    """(mean, ci95) of the policy's discounted return on the n-agent system (SPEC §5)."""
    res = evaluate_mc(env, policy, n, **kwargs)
    return float(res.mean), float(res.ci95)


@dataclass
class Reference:
    """Comparators available for one (env, n, k): tabular Q at k, exact V* and its evaluator."""

    tabular: Any = None  # QTable
    tabular_return: tuple[float, float] | None = None
    v_star: Tensor | None = None
    kernel_n: Any = None  # the n-count kernel, reused by every exact policy evaluation
    initial: tuple[Tensor, Tensor] | None = None
    notes: list[str] = field(default_factory=list)


def _tabular_reference(env: GlobalLocalMDP, n: int, k: int, ref: Reference, eval_kwargs: dict) -> None:
    ref.tabular = exact_q(env, k)
    ref.tabular_return = evaluate_return(env, ref.tabular, n, **eval_kwargs)


def _optimal_reference(env: GlobalLocalMDP, n: int, ref: Reference, seed: int, num_initial: int) -> None:
    ref.kernel_n = count_kernel(env, n)
    ref.v_star = optimal_value(env, n, kernel=ref.kernel_n)
    ref.initial = sample_initial_state(env, n, num_initial, make_generator(seed, env.device))


def build_reference(
    env: GlobalLocalMDP,
    n: int,
    k: int,
    *,
    mode: str = "auto",
    max_states: int = 20_000,
    eval_kwargs: dict | None = None,
    with_tabular: bool = True,
) -> Reference:
    """Exact tabular Q at k and V* at n where ``G * C(.+L-1, .)`` is small."""
    ref = Reference()
    if mode == "none":
        return ref
    eval_kwargs = eval_kwargs or {}
    size_k, size_n = env.G * num_counts(k, env.L), env.G * num_counts(n, env.L)
    try:  # a comparator is a metric: never let it stop training
        if not with_tabular:
            pass
        elif size_k <= max_states:
            _tabular_reference(env, n, k, ref, eval_kwargs)
        else:
            ref.notes.append(f"G*C(k+L-1,k) = {size_k} > eval.max_states = {max_states}: no tabular Q")
        if size_n <= max_states:
            seed = int(eval_kwargs.get("seed", 0))
            _optimal_reference(env, n, ref, seed, int(eval_kwargs.get("num_initial", 64)))
        else:
            ref.notes.append(f"G*C(n+L-1,n) = {size_n} > eval.max_states = {max_states}: no exact gap")
    except Exception as e:
        warnings.warn(f"reference solutions unavailable: {e}", stacklevel=2)
        ref.notes.append(f"reference failed: {e}")
    return ref


def exact_gap(env: GlobalLocalMDP, n: int, greedy: Tensor, k: int, ref: Reference) -> float | None:
    """``mean_s0 V*(s0) - V^pi(s0)`` by exact policy evaluation on the count MDP (SPEC §5)."""
    if ref.v_star is None or ref.initial is None:
        return None
    v_pi = policy_value(env, n, greedy.to(env.device), k, kernel=ref.kernel_n)
    s_g, s_l = ref.initial
    return float((value_at(ref.v_star, s_g, s_l) - value_at(v_pi, s_g, s_l)).mean())


def validation_metrics(env: GlobalLocalMDP, policy: Any, n: int, ref: Reference, eval_kwargs: dict) -> dict[str, float]:
    """``eval/*`` metrics of a greedy subsampled policy (names in :mod:`sqtorch.neural.metrics`)."""
    mean, ci = evaluate_return(env, policy, n, **eval_kwargs)
    out = {M.EVAL_RETURN: mean, M.EVAL_RETURN_CI: ci}
    greedy = (
        policy.greedy() if hasattr(policy, "greedy") and (ref.v_star is not None or ref.tabular is not None) else None
    )
    gap = exact_gap(env, n, greedy, policy.k, ref) if greedy is not None else None
    if gap is not None:
        out[M.EVAL_GAP] = gap
    if ref.tabular is not None and ref.tabular.k == policy.k:
        q_tab = ref.tabular.q.to(greedy.device).double()
        out[M.EVAL_AGREEMENT] = (greedy == q_tab.argmax(-1)).double().mean().item()
        if hasattr(policy, "q_table"):
            q_nn = policy.q_table()
            out[M.EVAL_Q_REL_ERROR] = ((q_nn - q_tab).abs().max() / q_tab.abs().max()).item()
        if ref.tabular_return is not None:
            out[M.EVAL_GAP_TABULAR] = ref.tabular_return[0] - mean
    return out
