"""Optimality gap of saved SUBSAMPLE-Q policies as k scales (SPEC §5): collect runs, evaluate them.

A *run dir* is what ``train.py`` leaves: ``config.yaml`` (resolved), ``metrics.json`` and an
artifact (``qtable.pt`` or ``checkpoints/final.ckpt``). A Hydra multirun dir holds one job dir per
job; a job dir without ``metrics.json`` or artifact is a *missing* job (it failed or was killed):
it is reported and the rest is evaluated. Every policy of one (env, n) group is evaluated on the
same initial states with the same seeds (common random numbers), by Monte Carlo and, where the
n-count MDP is tractable, exactly (hypergeometric lumping); the gap is taken against the exact
``V*`` where tractable, else against the best evaluated policy (and labelled so).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from sqtorch.config import build_env
from sqtorch.envs.base import GlobalLocalMDP
from sqtorch.evaluation.exact import check_tractable, optimal_value, policy_value, value_at
from sqtorch.evaluation.execution import evaluate_mc, initial_states
from sqtorch.tabular.exact import count_kernel

CONFIG, METRICS, QTABLE, CHECKPOINT = "config.yaml", "metrics.json", "qtable.pt", "checkpoints/final.ckpt"
REF_EXACT, REF_BEST = "exact V*", "best evaluated policy (V* not tractable)"
Z95 = 1.959963984540054
ZERO_GAP = 1e-9  # exact gaps below this are zero up to float rounding


class StudyError(ValueError):
    """A study input is unusable (no runs, wrong env, unloadable artifact): one line, fatal."""


@dataclass
class Run:
    """One trained policy and what it cost."""

    path: Path
    algo: str  # "deepsets" or "tabular m=<m>"
    env_name: str
    env_cfg: dict
    n: int
    k: int
    seed: int
    policy: Any
    learn_seconds: float
    size: int  # table entries (tabular) or parameters (DeepSets)


def job_dirs(root: Path) -> list[Path]:
    """Run dirs under ``root``: ``root`` itself or every dir holding a Hydra job (``.hydra``) or config."""
    if not root.is_dir():
        raise StudyError(f"runs: '{root}' is not a directory")
    found = {p.parent for p in root.rglob(CONFIG) if p.parent.name != ".hydra"}
    found |= {p.parent for p in root.rglob(".hydra") if p.is_dir()}
    return sorted(found)


def load_run(path: Path) -> Run:
    """Load one complete run dir; raises :class:`StudyError` if its artifact does not load."""
    cfg = OmegaConf.to_container(OmegaConf.load(path / CONFIG), resolve=True)
    metrics = json.loads((path / METRICS).read_text())
    algo = cfg["algo"]["name"]
    label = f"tabular m={cfg['algo']['m']}" if algo == "tabular" else algo
    try:
        if algo == "tabular":
            from sqtorch.tabular.qtable import QTable

            policy = QTable.load(path / QTABLE)
            size = policy.q.numel()
            seconds = metrics["tabular/learn_seconds"] + metrics.get("tabular/build_seconds", 0.0)
        else:
            from sqtorch.neural.deepsets import num_parameters
            from sqtorch.neural.policy import DeepSetsPolicy

            policy = DeepSetsPolicy.from_checkpoint(path / CHECKPOINT, k=cfg["k"])
            size = num_parameters(policy.net)
            seconds = metrics["train/wall_seconds"]
    except Exception as e:  # any load failure is fatal and reported in one line
        raise StudyError(f"{path}: the {algo} artifact does not load ({type(e).__name__}: {e})") from e
    env_name = cfg["env"].get("name") or cfg["env"].get("_target_", "?").rsplit(".", 1)[-1]
    return Run(path, label, env_name, cfg["env"], cfg["n"], cfg["k"], cfg["seed"], policy, seconds, size)


def is_complete(path: Path) -> str | None:
    """``None`` for a complete run dir, else why it is missing."""
    if not (path / METRICS).exists():
        return "no metrics.json (the job failed or was killed)"
    if not ((path / QTABLE).exists() or (path / CHECKPOINT).exists()):
        return "no qtable.pt or checkpoints/final.ckpt"
    if not (path / CONFIG).exists():
        return "no config.yaml"
    return None


def collect(roots: list[Path], env: str | None = None) -> tuple[list[Run], list[dict]]:
    """Every complete run under ``roots`` and a list of missing jobs ``{path, reason}``."""
    dirs = [d for root in roots for d in job_dirs(Path(root))]
    if not dirs:
        raise StudyError(f"runs: no run dirs (config.yaml or .hydra/) under {[str(r) for r in roots]}")
    runs, missing = [], []
    for d in dirs:
        reason = is_complete(d)
        if reason is None:
            runs.append(load_run(d))
        else:
            missing.append({"path": str(d), "reason": reason})
    if not runs:
        raise StudyError(f"runs: none of the {len(dirs)} run dirs is complete, e.g. {missing[0]}")
    if env is not None:
        other = [r for r in runs if r.env_name != env]
        if other:
            raise StudyError(f"{other[0].path}: run is for env '{other[0].env_name}', but env = '{env}' was requested")
    return runs, missing


def tractable(env: GlobalLocalMDP, n: int, max_states: int) -> bool:
    """Whether the n-count MDP is small enough for exact values (SPEC §5)."""
    try:
        check_tractable(env, n, max_states=max_states)
    except ValueError:
        return False
    return True


def evaluate_group(
    env: GlobalLocalMDP, n: int, runs: list[Run], *, num_initial: int, rollouts: int, seed: int,
    exact: bool, max_states: int,
) -> list[dict]:
    """Rows of results for runs that share (env, n): MC (common random numbers) and exact values."""
    s0 = initial_states(env, n, num_initial, seed=seed)
    kernel = count_kernel(env, n) if exact and tractable(env, n, max_states) else None
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
    """``sqrt((n - k + 1) / (n k))``: the without-replacement DKW rate of the gap (SPEC §2)."""
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
