"""Optimality gap of saved policies as k scales, and reproducibility checks (docs/model.md §5).

Every policy of one (env, n) group, SUBSAMPLE-Q or baseline, is evaluated by the same code on the
same initial states with the same seeds (common random numbers), by Monte Carlo and, where the
n-count MDP is tractable, exactly (hypergeometric lumping: any deterministic policy of (s_g,
counts of the agents it sees) has an exact value there); the gap is taken against the exact
``V*`` where tractable, else against the best evaluated policy (and labelled so).

Means over seeds carry a 95% CI from Student's t with ``seeds - 1`` degrees of freedom.
:func:`compare` checks a rerun against a committed ``summary.json``: deterministic rows (tabular,
exact values) must be identical, neural and baseline rows must agree within their CIs.

A study (``conf/study/<name>.yaml``, run by ``evaluate.py study=<name>``) is config only:
``sweeps`` of ``train.py -m`` overrides (``common`` ones merged into each, :func:`sweep_overrides`),
and optionally ``label`` (config keys that name env and algo variants, :func:`label_runs`),
``deploy`` (every DeepSets run also evaluated at other k′ and every run at other n′,
:func:`deployed`) and extra ``plots`` (:mod:`sqtorch.experiment.report`). A tabular job that
the learner refused because its table exceeds ``algo.max_memory_gib`` is recorded as refused
with the learner's own message (:func:`split_refused`), not as missing.
"""

from __future__ import annotations

import math
import os
import platform
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from sqtorch.envs import build_env
from sqtorch.experiment.groups import REF_EXACT, ZERO_GAP
from sqtorch.experiment.outputs import CONFIG
from sqtorch.experiment.runs import Run, StudyError
from sqtorch.neural.policy import DeepSetsPolicy
from sqtorch.runtime import Z95
from sqtorch.tabular.config import DTYPES
from sqtorch.tabular.counts import num_counts
from sqtorch.tabular.learner import check_memory

CI_METHOD = "95% CI of the mean over seeds, Student t (seeds - 1 dof); one seed: the Monte Carlo CI"
# two-sided 95% quantiles of Student's t, degrees of freedom 1..30 (standard table)
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
       2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t95(dof: int) -> float:
    """Two-sided 95% quantile of Student's t with ``dof`` degrees of freedom (normal + 1/dof term above 30)."""
    if dof < 1:
        raise ValueError(f"dof = {dof} is outside the allowed range dof >= 1")
    return T95[dof - 1] if dof <= len(T95) else Z95 * (1 + (1 + Z95**2) / (4 * dof))


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and Student-t 95% CI half-width ``t95(n - 1) * std / sqrt(n)`` of ``n`` values (float64;
    the CI is NaN for a single value)."""
    x = torch.tensor(list(values), dtype=torch.float64)
    ci = float(t95(len(x) - 1) * x.std() / math.sqrt(len(x))) if len(x) > 1 else math.nan
    return float(x.mean()), ci


STUDY_KEYS = ("name", "title", "env", "common", "sweeps", "label", "deploy", "plots")
PLOT_KINDS = ("deploy_heatmap", "size_vs_k", "return_vs_samples", "return_vs_time", "gap_vs_k_by_env",
              "validation_curves")


def check_study(study: Mapping[str, Any]) -> dict:
    """A study config as a plain dict; :class:`StudyError` naming a bad key (before anything is trained)."""
    spec = OmegaConf.to_container(study, resolve=True) if OmegaConf.is_config(study) else dict(study)
    checks = [
        ("study", set(spec) - set(STUDY_KEYS), STUDY_KEYS),
        ("study.label", set(spec.get("label") or {}) - {"env", "algo"}, ("env", "algo")),
        ("study.deploy", set(spec.get("deploy") or {}) - {"k", "n", "train_k"}, ("k", "n", "train_k")),
        ("study.plots", set(spec.get("plots") or []) - set(PLOT_KINDS), PLOT_KINDS),
    ]
    for where, bad, allowed in checks:
        if bad:
            raise StudyError(f"{where} has {sorted(bad)}; allowed: {', '.join(allowed)}")
    if not spec.get("sweeps"):
        raise StudyError("study.sweeps is empty: a study needs at least one sweep of train.py overrides")
    return spec


def sweep_overrides(study: Mapping[str, Any]) -> dict[str, list[str]]:
    """``{sweep: overrides}`` of a study: its ``common`` overrides, then the sweep's own.

    A key set both in ``common`` and in a sweep takes the sweep's value (Hydra rejects a key given twice).
    """
    common = list(study.get("common") or [])
    out = {}
    for name, own in study["sweeps"].items():
        keys = {_key(o) for o in own}
        out[str(name)] = [o for o in common if _key(o) not in keys] + [str(o) for o in own]
    return out


def _key(override: str) -> str:
    return str(override).split("=", 1)[0].lstrip("+~")


def _value_text(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value_text(x) for x in v) + "]"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _label_text(cfg: Any, keys: Sequence[str]) -> str:
    """``"lams=[0.4,0.6] Q=3"``: the last part of each key and its value in ``cfg`` (absent keys left out)."""
    parts = []
    for key in keys:
        v = OmegaConf.select(cfg, key, default=None)
        if v is not None:
            v = OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            parts.append(f"{key.rsplit('.', 1)[-1]}={_value_text(v)}")
    return " ".join(parts)


def label_runs(runs: list[Run], label: Mapping[str, Sequence[str]] | None) -> list[Run]:
    """Name variants that share an env or algo name by config keys of their ``config.yaml``.

    ``label = {"env": ["env.lams"], "algo": ["algo.max_steps"]}`` turns env ``queue_types`` into
    ``queue_types lams=[0.4,0.6]`` and algo ``deepsets`` into ``deepsets max_steps=500`` (a key a
    run's config lacks is left out). Runs are grouped, summarized and plotted by these names. Every
    run's ``series`` names the curve it belongs to across the algo-label values: ``<algo> k=<k>``
    when the algo name got a label, else the algo name.
    """
    label = label or {}
    bad = set(label) - {"env", "algo"}
    if bad:
        raise ValueError(f"study.label has keys {sorted(bad)}; allowed: env, algo")
    out = []
    for r in runs:
        cfg = OmegaConf.load(r.path / CONFIG)
        parts = {what: _label_text(cfg, label.get(what, [])) for what in ("env", "algo")}
        new = replace(r, env_name=f"{r.env_name} {parts['env']}".strip(), algo=f"{r.algo} {parts['algo']}".strip())
        new.series = f"{r.algo} k={r.k}" if parts["algo"] else new.algo
        new.train_k = r.k
        out.append(new)
    return out


def deployed(runs: list[Run], k: Sequence[int] = (), n: Sequence[int] = (), train_k: Sequence[int] | None = None
             ) -> list[Run]:
    """Extra evaluations of trained runs at another k′ and on another n′ (docs/model.md §3).

    Every DeepSets run (whose k is in ``train_k``, all when ``None``) is also executed at every
    k′ in ``k`` other than its own with k′ <= n, unchanged (mean pooling: the network is a
    function of the sample's empirical distribution), as algo ``<algo> trained at k=<k>``; then
    every run, these included, is also evaluated on every n′ in ``n`` with k <= n′ (the policy
    does not depend on n). Returns only the extra runs.
    """
    extra = []
    for r in runs:
        if not isinstance(r.policy, DeepSetsPolicy) or (train_k is not None and r.k not in train_k):
            continue
        for k2 in k:
            if k2 != r.k and k2 <= r.n:
                new = replace(r, k=int(k2), policy=DeepSetsPolicy(r.policy.net, int(k2)),
                              algo=f"{r.algo} trained at k={r.k}")
                new.train_k, new.series = getattr(r, "train_k", r.k), new.algo
                extra.append(new)
    for r in list(runs) + list(extra):
        for n2 in n:
            if n2 != r.n and r.k <= n2:
                new = replace(r, n=int(n2))
                new.train_k, new.series = getattr(r, "train_k", r.k), getattr(r, "series", r.algo)
                extra.append(new)
    return extra


def split_refused(missing: list[dict], label: Mapping[str, Sequence[str]] | None = None
                  ) -> tuple[list[dict], list[dict]]:
    """Missing jobs -> (refused, still missing): a tabular job whose table exceeds ``algo.max_memory_gib``.

    The learner refuses such a table before allocating (:func:`sqtorch.tabular.learner.check_memory`);
    its job leaves ``config.yaml`` and no ``metrics.json``. The same check on that config
    (``threads`` worker threads, torch's default when null) gives the refusal's message.
    """
    refused, still = [], []
    for m in missing:
        path = Path(m["path"])
        try:
            cfg = OmegaConf.load(path / CONFIG)
            algo = cfg.algo
        except Exception:  # no or unreadable config: an ordinary missing job
            still.append(m)
            continue
        if algo.get("name") != "tabular":
            still.append(m)
            continue
        env = build_env(OmegaConf.to_container(cfg.env, resolve=True))
        k, mm = int(cfg.k), algo.m if algo.m == "exact" else int(algo.m)
        workers = int(cfg.threads) if cfg.get("threads") else torch.get_num_threads()
        try:
            need = check_memory(env, k, mm, DTYPES[algo.dtype], float(algo.max_memory_gib), workers)
        except ValueError as e:
            env_cfg = OmegaConf.to_container(cfg.env, resolve=True)
            env_name = env_cfg.get("name") or str(env_cfg.get("_target_", "?")).rsplit(".", 1)[-1]
            env_name = f"{env_name} {_label_text(cfg, (label or {}).get('env', []))}".strip()
            refused.append(dict(env=env_name, n=int(cfg.n), algo=f"tabular m={algo.m}", k=k,
                                entries=env.G * num_counts(k, env.L) * env.A, max_memory_gib=float(algo.max_memory_gib),
                                reason=str(e), path=str(path)))
            continue
        still.append(dict(m, reason=f"{m['reason']} (its table needs {need:.2f} GiB: within max_memory_gib)"))
    return refused, still


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
        s = {"env": env, "n": n, "algo": algo, "k": k, "seeds": len(rs), "gap_reference": rs[0]["gap_reference"],
             "kind": rs[0].get("kind", "subsample-q"), "deterministic": bool(rs[0].get("deterministic", False)),
             "train_k": rs[0].get("train_k", k), "series": rs[0].get("series", algo)}
        for key in ("gap_exact", "gap_mc", "mc_return", "exact_return", "learn_seconds", "samples", "size"):
            s[key], ci = mean_ci95([r.get(key, math.nan) for r in rs])
            s[key + "_ci95"] = ci if len(rs) > 1 else 0.0
        if len(rs) == 1:
            s["gap_mc_ci95"] = rs[0]["gap_mc_ci95"]
            s["mc_return_ci95"] = rs[0]["mc_ci95"]
        out.append(s)
    return out


def environment() -> dict:
    """The hardware and library versions a result was measured with (numbers depend on them)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {}
    for pkg in ("torch", "numpy", "lightning", "stable-baselines3", "gymnasium", "hydra-core"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": versions,
    }


def _primary(row: dict) -> str:
    """The compared quantity: the exact gap where V* is exact, else the Monte Carlo return."""
    return "gap_exact" if row["gap_reference"] == REF_EXACT and math.isfinite(row["gap_exact"]) else "mc_return"


def compare(summary: list[dict], committed: list[dict]) -> list[dict]:
    """Per (env, n, algo, k): does this summary reproduce the ``committed`` one?

    Rows of deterministic algorithms (tabular: seeded generators, exact values) must be ``identical``
    (within 1e-9 relative: ``equal``). Every other row is a mean over seeds whose per-seed values
    depend on the CPU's floating-point kernels: ``inside`` when the rerun mean lies in the
    committed 95% CI, ``consistent`` when the two means differ by less than
    ``sqrt(ci_committed^2 + ci_rerun^2)`` (their difference's 95% CI covers 0), else ``differs``.
    A row present on one side only is ``missing``/``new``. ``ok`` is the verdict.
    """
    key = lambda r: (r["env"], int(r["n"]), r["algo"], int(r["k"]))  # noqa: E731
    new, old = {key(r): r for r in summary}, {key(r): r for r in committed}
    out = []
    for kk in sorted(set(new) | set(old), key=str):
        a, b = old.get(kk), new.get(kk)
        row = dict(zip(("env", "n", "algo", "k"), kk, strict=True))
        if a is None or b is None:
            row.update(status="new" if a is None else "missing", ok=a is None, expect="")
            out.append(row)
            continue
        metric = _primary(a)
        x, cx, y, cy = a[metric], a.get(metric + "_ci95", 0.0), b[metric], b.get(metric + "_ci95", 0.0)
        if metric == "mc_return" and int(a["seeds"]) == 1:
            cx = a.get("mc_return_ci95", cx)
        if metric == "mc_return" and int(b["seeds"]) == 1:
            cy = b.get("mc_return_ci95", cy)
        expect = "exact" if b.get("deterministic") else "statistical"  # the algorithm's own word (registry)
        if x == y:
            status = "identical"
        elif abs(x - y) <= 1e-9 * max(1.0, abs(x)):
            status = "equal"
        elif abs(y - x) <= cx:
            status = "inside"
        elif abs(y - x) <= math.hypot(cx, cy):
            status = "consistent"
        else:
            status = "differs"
        ok = status in ("identical", "equal") if expect == "exact" else status != "differs"
        row.update(metric=metric, committed=x, committed_ci95=cx, committed_seeds=int(a["seeds"]), rerun=y,
                   rerun_ci95=cy, rerun_seeds=int(b["seeds"]), status=status, expect=expect, ok=ok)
        out.append(row)
    return out
