"""Validation of a learned policy on the full n-agent system (SPEC §5), for training-time logging.

:func:`evaluate_return` is the single place where the Monte Carlo evaluator is called: it uses
``sqtorch.evaluation.execution.evaluate_mc`` when that module exists and otherwise the minimal
:func:`mc_return` below (same contract: greedy subsampled policy, all n agents in the reward,
``gamma^t`` discounting, fixed initial states, separate seeded generators for subsets and
dynamics so policies evaluated with one seed share common random numbers).

:class:`Reference` holds what a run can be compared with: ``V*`` (exact count MDP at k = n,
``sqtorch.evaluation.exact``) and the exact tabular Q at the same k (``sqtorch.tabular.exact``),
each only when the module exists and the problem is small enough.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from sqtorch.envs.base import GlobalLocalMDP
from sqtorch.envs.simulator import (
    cdf_columns,
    make_generator,
    sample_initial_state,
    sample_subset,
    step,
)
from sqtorch.neural import metrics as M
from sqtorch.tabular.counts import num_counts


class SubsampledPolicy(Protocol):
    k: int

    def act(self, s_g: Tensor, s_sub: Tensor) -> Tensor: ...


def default_horizon(gamma: float, eps: float = 1e-4) -> int:
    """Smallest H with ``gamma^H <= eps`` (SPEC §5)."""
    return max(1, math.ceil(math.log(eps) / math.log(gamma)))


@torch.no_grad()
def mc_return(
    env: GlobalLocalMDP,
    policy: SubsampledPolicy,
    n: int,
    *,
    num_initial: int = 64,
    rollouts: int = 64,
    horizon: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> tuple[float, float]:
    """Monte Carlo ``V^pi(s0)`` averaged over ``num_initial`` fixed initial states: (mean, ci95)."""
    env = env.to(device) if device is not None else env
    H = default_horizon(env.gamma) if horizon is None else int(horizon)
    g_init, g_sub, g_dyn = (make_generator(seed + i, env.device) for i in range(3))
    s_g0, s_l0 = sample_initial_state(env, n, num_initial, g_init)
    s_g, s_l = s_g0.repeat_interleave(rollouts), s_l0.repeat_interleave(rollouts, 0)
    cdf_g, cdf_l = cdf_columns(env.P_g), cdf_columns(env.P_l)
    ret = torch.zeros(len(s_g), dtype=torch.float64, device=env.device)
    for t in range(H):
        idx = sample_subset(n, policy.k, len(s_g), g_sub)
        a = policy.act(s_g, s_l.gather(1, idx))
        s_g, s_l, r = step(env, s_g, s_l, a, g_dyn, cdf_g, cdf_l)
        ret += env.gamma**t * r
    ci = 1.96 * ret.std().item() / math.sqrt(len(ret)) if len(ret) > 1 else float("nan")
    return ret.mean().item(), ci


def evaluate_return(
    env: GlobalLocalMDP, policy: SubsampledPolicy, n: int, **kwargs: Any
) -> tuple[float, float]:
    """(mean, ci95) of the policy's discounted return on the n-agent system (SPEC §5)."""
    try:
        from sqtorch.evaluation.execution import evaluate_mc  # type: ignore[import-not-found]
    except ImportError:
        return mc_return(env, policy, n, **kwargs)
    res = evaluate_mc(env, policy, n, **kwargs)
    return float(res.mean), float(res.ci95)


@dataclass
class Reference:
    """Comparators available for one (env, n, k): tabular Q at k, exact V* and its evaluator."""

    tabular: Any = None  # QTable
    tabular_return: tuple[float, float] | None = None
    v_star: Any = None
    initial: tuple[Tensor, Tensor] | None = None
    notes: list[str] = field(default_factory=list)


def build_reference(
    env: GlobalLocalMDP,
    n: int,
    k: int,
    *,
    mode: str = "auto",
    max_states: int = 20_000,
    eval_kwargs: dict | None = None,
) -> Reference:
    """Exact tabular Q at k and V* at n where the modules exist and ``G * C(.+L-1, .)`` is small."""
    ref = Reference()
    if mode == "none":
        return ref
    if env.G * num_counts(k, env.L) <= max_states:
        try:
            from sqtorch.tabular.exact import exact_q

            ref.tabular = exact_q(env, k)
            ref.tabular_return = evaluate_return(env, ref.tabular, n, **(eval_kwargs or {}))
        except ImportError:
            ref.notes.append("sqtorch.tabular.exact not available: no tabular reference")
    else:
        ref.notes.append(
            f"G*C(k+L-1,k) = {env.G * num_counts(k, env.L)} > {max_states}: no tabular reference"
        )
    if env.G * num_counts(n, env.L) <= max_states:
        try:
            from sqtorch.evaluation.exact import optimal_value  # type: ignore[import-not-found]

            ref.v_star = optimal_value(env, n)
            seed = (eval_kwargs or {}).get("seed", 0)
            ref.initial = sample_initial_state(env, n, 64, make_generator(seed, env.device))
        except ImportError:
            ref.notes.append("sqtorch.evaluation.exact not available: no exact gap")
    return ref


def exact_gap(env: GlobalLocalMDP, n: int, greedy: Tensor, k: int, ref: Reference) -> float | None:
    """``mean_s0 V*(s0) - V^pi(s0)`` by exact policy evaluation on the count MDP (SPEC §5)."""
    if ref.v_star is None or ref.initial is None:
        return None
    try:
        from sqtorch.evaluation.exact import policy_value, value_at  # type: ignore[import-not-found]

        v_pi = policy_value(env, n, greedy, k)
        s_g, s_l = ref.initial
        return float((value_at(ref.v_star, s_g, s_l) - value_at(v_pi, s_g, s_l)).mean())
    except Exception as e:  # interface of a sibling module: never kill training over a metric
        warnings.warn(f"exact gap unavailable: {e}", stacklevel=2)
        return None


def validation_metrics(
    env: GlobalLocalMDP, policy: Any, n: int, ref: Reference, eval_kwargs: dict
) -> dict[str, float]:
    """``eval/*`` metrics of a greedy subsampled policy (names in :mod:`sqtorch.neural.metrics`)."""
    mean, ci = evaluate_return(env, policy, n, **eval_kwargs)
    out = {M.EVAL_RETURN: mean, M.EVAL_RETURN_CI: ci}
    greedy = (
        policy.greedy()
        if hasattr(policy, "greedy") and (ref.v_star is not None or ref.tabular is not None)
        else None
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
