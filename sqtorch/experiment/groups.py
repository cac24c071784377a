"""Evaluation of saved policies that share an (env, n): one table row per run (docs/model.md §5, §7.5).

Every policy of a group is run by the same code on the same initial states with the same seeds
(common random numbers), by Monte Carlo and, where the n-agent count MDP is tractable, exactly;
the gap is taken against the exact ``V*`` where tractable, else against the best evaluated policy
of the group (and labelled so). SUBSAMPLE-Q groups (any :class:`~sqtorch.envs.protocol.Simulator`)
run Algorithm 2 of arXiv 2403.00222 (:func:`evaluate_group`); groups whose local agents act
(:class:`~sqtorch.envs.local_actions.LocalActionMDP`) run the decentralized Algorithm 2 of
arXiv 2412.00661 (:func:`evaluate_group_mfq`), exactly on the lumped pair-count MDP where tractable.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict

from torch import Tensor

from sqtorch.envs import build_env
from sqtorch.envs.base import GlobalLocalMDP
from sqtorch.envs.local_actions import LocalActionMDP
from sqtorch.envs.protocol import Simulator
from sqtorch.envs.simulator import make_generator, sample_initial_state
from sqtorch.evaluation.exact import optimal_value, policy_value, value_at
from sqtorch.evaluation.execution import evaluate_mc, initial_states, stratified_ci
from sqtorch.evaluation.mfq import check_tractable_mfq, optimal_value_mfq, policy_value_mfq
from sqtorch.evaluation.mfq_execution import evaluate_mfq_mc
from sqtorch.experiment.runs import Run, StudyError
from sqtorch.tabular.exact import count_kernel, is_tractable

REF_EXACT, REF_BEST = "exact V*", "best evaluated policy (V* not tractable)"
ZERO_GAP = 1e-9  # exact gaps below this are zero up to float rounding


def _row(r: Run, n: int, mc_mean: float, mc_ci: float, exact_return: float, v_star_s0: float, exact: bool) -> dict:
    return dict(
        env=r.env_name, n=n, algo=r.algo, k=r.k, seed=r.seed,
        mc_return=mc_mean, mc_ci95=mc_ci, exact_return=exact_return, v_star=v_star_s0,
        gap_exact=v_star_s0 - exact_return, gap_mc=v_star_s0 - mc_mean, gap_mc_ci95=mc_ci,
        gap_reference=REF_EXACT if exact else REF_BEST,
        learn_seconds=r.learn_seconds, samples=r.samples, size=r.size, kind=r.kind,
        deterministic=r.deterministic, train_k=getattr(r, "train_k", r.k), series=getattr(r, "series", r.algo),
        path=str(r.path),
    )


def _gap_to_best(rows: list[dict], returns: list[Tensor]) -> None:
    """Without an exact ``V*``: gaps to the best evaluated policy, CIs from paired differences (CRN)."""
    i_best = max(range(len(rows)), key=lambda i: rows[i]["mc_return"])
    for row, ret in zip(rows, returns, strict=True):
        row["gap_mc"] = rows[i_best]["mc_return"] - row["mc_return"]
        row["gap_mc_ci95"] = stratified_ci(returns[i_best] - ret)[1]


def evaluate_group(
    env: Simulator, n: int, runs: list[Run], *, num_initial: int, rollouts: int, seed: int,
    exact: bool, max_states: int,
) -> list[dict]:
    """Rows of results for SUBSAMPLE-Q runs that share (env, n): MC (common random numbers) and exact values.

    Without an exact ``V*`` the gap is to the best evaluated policy of the group, and its
    ``gap_mc_ci95`` is the 95% CI of the paired per-rollout differences (common random numbers).
    """
    s0 = initial_states(env, n, num_initial, seed=seed)
    tensors = isinstance(env, GlobalLocalMDP)  # a simulator: Monte Carlo only
    kernel = count_kernel(env, n) if tensors and exact and is_tractable(env, n, max_states) else None
    v_star = optimal_value(env, n, kernel=kernel, max_states=max_states) if kernel is not None else None
    v_star_s0 = float(value_at(v_star, *s0, L=env.L).mean()) if v_star is not None else math.nan
    rows, returns = [], []
    for r in sorted(runs, key=lambda r: (r.algo, r.k, r.seed)):
        mc = evaluate_mc(env, r.policy, n, rollouts=rollouts, seed=seed, s0=s0, keep_returns=True)
        returns.append(mc.returns)
        v_pi = None
        if kernel is not None:
            v_pi = policy_value(env, n, r.policy.greedy(), r.k, kernel=kernel, max_states=max_states)
        exact_return = float(value_at(v_pi, *s0, L=env.L).mean()) if v_pi is not None else math.nan
        rows.append(_row(r, n, mc.mean, mc.ci95, exact_return, v_star_s0, v_star is not None))
    if v_star is None:
        _gap_to_best(rows, returns)
    return rows


def evaluate_group_mfq(
    env: LocalActionMDP, n: int, runs: list[Run], *, num_initial: int, rollouts: int, seed: int,
    exact: bool, max_states: int,
) -> list[dict]:
    """Rows for runs whose local agents act: the decentralized Algorithm 2 (docs/model.md §7.4) by Monte
    Carlo with common random numbers, and exactly (``V*`` and the policy's value on the lumped pair-count
    MDP, §7.5) where :func:`check_tractable_mfq` allows."""
    s0 = sample_initial_state(env, n, num_initial, make_generator(seed, env.device))
    tractable = exact
    if exact:
        try:
            check_tractable_mfq(env, n, max_states)
        except ValueError:
            tractable = False
    v_star = optimal_value_mfq(env, n, max_states=max_states) if tractable else None
    v_star_s0 = float(value_at(v_star, *s0, L=env.L).mean()) if v_star is not None else math.nan
    rows, returns = [], []
    for r in sorted(runs, key=lambda r: (r.algo, r.k, r.seed)):
        mc = evaluate_mfq_mc(env, r.policy, n, rollouts=rollouts, seed=seed, s0=s0)
        returns.append(mc.returns)
        exact_return = math.nan
        if v_star is not None:
            v_pi = policy_value_mfq(env, n, r.policy, max_states=max_states)
            exact_return = float(value_at(v_pi, *s0, L=env.L).mean())
        rows.append(_row(r, n, mc.mean, mc.ci95, exact_return, v_star_s0, v_star is not None))
    if v_star is None:
        _gap_to_best(rows, returns)
    return rows


def evaluate_runs(
    runs: list[Run], *, num_initial: int = 32, rollouts: int = 64, seed: int = 12345,
    exact: bool = True, max_states: int = 200_000,
) -> list[dict]:
    """Evaluate every run, grouped by (env config, n), each group on common random numbers."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        groups[json.dumps([r.env_cfg, r.n], sort_keys=True)].append(r)
    rows = []
    for group in groups.values():
        env = build_env(group[0].env_cfg)
        evaluate = evaluate_group_mfq if isinstance(env, LocalActionMDP) else evaluate_group
        if isinstance(env, LocalActionMDP) and not all(hasattr(r.policy, "act_local") for r in group):
            raise StudyError(f"{group[0].path}: env '{group[0].env_name}' has local agents that act; only policies "
                             "of local-action algorithms (e.g. algo=tabular_mfq) can be evaluated on it")
        rows += evaluate(env, group[0].n, group, num_initial=num_initial, rollouts=rollouts, seed=seed,
                         exact=exact, max_states=max_states)
    return rows
