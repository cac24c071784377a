"""Optimality gap of saved SUBSAMPLE-Q policies as k scales (docs/model.md §5).

Every policy of one (env, n) group is evaluated on the same initial states with the same seeds
(common random numbers), by Monte Carlo and, where the n-count MDP is tractable, exactly
(hypergeometric lumping); the gap is taken against the exact ``V*`` where tractable, else against
the best evaluated policy (and labelled so).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict

import torch

from sqtorch.envs import build_env
from sqtorch.envs.base import GlobalLocalMDP
from sqtorch.evaluation.exact import optimal_value, policy_value, value_at
from sqtorch.evaluation.execution import evaluate_mc, initial_states
from sqtorch.experiment.runs import Run
from sqtorch.runtime import Z95
from sqtorch.tabular.exact import count_kernel, is_tractable

REF_EXACT, REF_BEST = "exact V*", "best evaluated policy (V* not tractable)"
ZERO_GAP = 1e-9  # exact gaps below this are zero up to float rounding


def evaluate_group(
    env: GlobalLocalMDP, n: int, runs: list[Run], *, num_initial: int, rollouts: int, seed: int,
    exact: bool, max_states: int,
) -> list[dict]:
    """Rows of results for runs that share (env, n): MC (common random numbers) and exact values."""
    s0 = initial_states(env, n, num_initial, seed=seed)
    kernel = count_kernel(env, n) if exact and is_tractable(env, n, max_states) else None
    v_star = optimal_value(env, n, kernel=kernel, max_states=max_states) if kernel is not None else None
    v_star_s0 = float(value_at(v_star, *s0, L=env.L).mean()) if v_star is not None else math.nan
    rows = []
    for r in sorted(runs, key=lambda r: (r.algo, r.k, r.seed)):
        mc = evaluate_mc(env, r.policy, n, rollouts=rollouts, seed=seed, s0=s0)
        v_pi = None
        if kernel is not None:
            v_pi = policy_value(env, n, r.policy.greedy(), r.k, kernel=kernel, max_states=max_states)
        exact_return = float(value_at(v_pi, *s0, L=env.L).mean()) if v_pi is not None else math.nan
        rows.append(
            dict(
                env=r.env_name, n=n, algo=r.algo, k=r.k, seed=r.seed,
                mc_return=mc.mean, mc_ci95=mc.ci95, exact_return=exact_return, v_star=v_star_s0,
                gap_exact=v_star_s0 - exact_return, gap_mc=v_star_s0 - mc.mean, gap_mc_ci95=mc.ci95,
                gap_reference=REF_EXACT if v_star is not None else REF_BEST,
                learn_seconds=r.learn_seconds, size=r.size, path=str(r.path),
            )
        )
    if v_star is None:  # gap against the best policy evaluated, on the same random numbers
        best = max(row["mc_return"] for row in rows)
        for row in rows:
            row["gap_mc"] = best - row["mc_return"]
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
        rows += evaluate_group(
            env, group[0].n, group, num_initial=num_initial, rollouts=rollouts, seed=seed,
            exact=exact, max_states=max_states,
        )
    return rows


def reference_curve(n: int, k: torch.Tensor) -> torch.Tensor:
    """``sqrt((n - k + 1) / (n k))``: the without-replacement DKW rate of the gap (docs/model.md §2)."""
    return ((n - k + 1) / (n * k)).sqrt()


def fit_reference(n: int, ks: list[int], gaps: list[float]) -> float | None:
    """Least-squares ``c`` (in log space) of ``gap ~ c sqrt((n-k+1)/(n k))`` over non-zero gaps.

    Gaps below ``ZERO_GAP`` (the exact gap at k = n is 0 up to float rounding) carry no rate.
    """
    pts = [(k, g) for k, g in zip(ks, gaps, strict=True) if g > ZERO_GAP and math.isfinite(g)]
    if not pts:
        return None
    k = torch.tensor([p[0] for p in pts], dtype=torch.float64)
    g = torch.tensor([p[1] for p in pts], dtype=torch.float64)
    return float(torch.exp((g.log() - reference_curve(n, k).log()).mean()))


def summarize(rows: list[dict]) -> list[dict]:
    """Mean over seeds per (env, n, algo, k), with a 95% CI across seeds (MC CI for one seed)."""
    by: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        by[(row["env"], row["n"], row["algo"], row["k"])].append(row)
    out = []
    for (env, n, algo, k), rs in sorted(by.items()):
        s = {"env": env, "n": n, "algo": algo, "k": k, "seeds": len(rs), "gap_reference": rs[0]["gap_reference"]}
        for key in ("gap_exact", "gap_mc", "mc_return", "exact_return", "learn_seconds", "size"):
            x = torch.tensor([r[key] for r in rs], dtype=torch.float64)
            s[key] = float(x.mean())
            s[key + "_ci95"] = float(Z95 * x.std() / math.sqrt(len(rs))) if len(rs) > 1 else 0.0
        if len(rs) == 1:
            s["gap_mc_ci95"] = rs[0]["gap_mc_ci95"]
            s["mc_return_ci95"] = rs[0]["mc_ci95"]
        out.append(s)
    return out
