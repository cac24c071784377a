"""Outputs of a k-scaling study: ``results.csv``, ``summary.json``, PNG plots, TensorBoard, ``report.md``.

Plots (docs/model.md §5): optimality gap vs k on a log axis (tabular and neural, mean ± 95% CI over seeds,
exact values solid, Monte Carlo hollow, with the fitted ``c sqrt((n-k+1)/(n k))`` reference of
docs/model.md §2; baselines as horizontal lines with their CI band), learning time vs k (log axis) and
return vs k (with ``V*``). When a group has baselines: gap vs samples drawn (local-agent transitions,
:meth:`sqtorch.experiment.registry.Algorithm.samples`) and gap vs learning wall-clock seconds.
``report.md`` and ``summary.json`` name the hardware and library versions, the skipped (corrupt)
runs, the tabular jobs refused by their memory limit, and, with ``compare=``, whether each row
reproduces the committed summary. A study adds plots by name (``plots:`` in its yaml,
:data:`PLOT_KINDS`): ``deploy_heatmap`` (return of each net trained at k and executed at k′),
``size_vs_k`` (table entries / parameters vs k, refused tables marked), ``return_vs_samples`` and
``return_vs_time`` (return vs learning cost: the budget axis), ``gap_vs_k_by_env`` (one figure
per n with every env variant of the study) and ``validation_curves`` (:mod:`sqtorch.experiment.curves`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.ticker  # noqa: E402

from sqtorch.experiment.plots import (  # noqa: E402
    _extra_plots,
    _groups,
    _tag,
    plot_cost,
    plot_gap,
    plot_metric,
)
from sqtorch.experiment.study import (  # noqa: E402
    PLOT_KINDS,
)
from sqtorch.runtime import write_text_atomic  # noqa: E402


def write_outputs(
    out: Path, rows: list[dict], summary: list[dict], missing: list[dict], meta: dict,
    skipped: list[dict] | None = None, comparison: list[dict] | None = None, refused: list[dict] | None = None,
    plots: tuple[str, ...] | list[str] = (), curves: list[dict] | None = None,
) -> dict:
    """Write every output of the study into ``out``; returns the ``summary.json`` content.

    ``refused``: tabular jobs the learner refused by memory (listed, drawn by ``size_vs_k``);
    ``plots``: extra plot kinds (:data:`PLOT_KINDS`); ``curves``: validation curves of the trained
    runs (:func:`sqtorch.experiment.curves.study_curves`), drawn by ``validation_curves`` and tabled.
    """
    skipped, refused, kinds = skipped or [], refused or [], tuple(plots)
    unknown = set(kinds) - set(PLOT_KINDS)
    if unknown:
        raise ValueError(f"plots {sorted(unknown)} are unknown; allowed: {', '.join(PLOT_KINDS)}")
    out.mkdir(parents=True, exist_ok=True)
    table = io.StringIO()
    w = csv.DictWriter(table, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(out / "results.csv", table.getvalue())
    plots, fits = [], {}
    for (env, n), srows in _groups(summary).items():
        tag = _tag(env, n)
        v_star = next((r["v_star"] for r in rows if r["env"] == env and r["n"] == n), math.nan)
        c = plot_gap(srows, env, n, out / f"gap_vs_k_{tag}.png")
        plot_metric(srows, env, n, "learn_seconds", "learning time [s]", out / f"time_vs_k_{tag}.png", log=True)
        plot_metric(srows, env, n, "mc_return", "return (Monte Carlo)", out / f"return_vs_k_{tag}.png",
                    log=False, v_star=v_star)
        fits[tag] = c
        plots += [f"gap_vs_k_{tag}.png", f"time_vs_k_{tag}.png", f"return_vs_k_{tag}.png"]
        if any(r.get("kind") == "baseline" for r in srows):
            plot_cost(srows, env, n, "samples", "samples drawn [local-agent transitions from the model]",
                      out / f"gap_vs_samples_{tag}.png")
            plot_cost(srows, env, n, "learn_seconds", "learning wall-clock [s]", out / f"gap_vs_time_{tag}.png")
            plots += [f"gap_vs_samples_{tag}.png", f"gap_vs_time_{tag}.png"]
    plots += _extra_plots(out, summary, refused, kinds, curves)
    result = dict(meta, fitted_c=fits, summary=summary, missing=missing, skipped=skipped, refused=refused, plots=plots)
    if curves:
        result["curves"] = curves
    if comparison is not None:
        result["compare"] = comparison
    _tensorboard(out, summary)
    _report_md(out, summary, missing, fits, plots, meta, skipped, comparison, refused, curves)
    write_text_atomic(out / "summary.json", json.dumps(result, indent=2, sort_keys=True) + "\n")  # last
    return result


def _tensorboard(out: Path, summary: list[dict]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out / "tensorboard"))
    try:
        for s in summary:
            pre = f"study/{s['env']}_n{s['n']}/{s['algo']}"
            for key in ("gap_exact", "gap_mc", "mc_return", "learn_seconds"):
                if math.isfinite(s[key]):
                    writer.add_scalar(f"{pre}/{key}", s[key], global_step=s["k"])
    finally:
        writer.close()


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return "—" if not math.isfinite(v) else f"{v:.4g}"
    return str(v)


def _report_md(
    out: Path, summary: list[dict], missing: list[dict], fits: dict, plots: list[str], meta: dict,
    skipped: list[dict], comparison: list[dict] | None, refused: list[dict] | None = None,
    curves: list[dict] | None = None,
) -> None:
    cols = ["env", "n", "algo", "k", "seeds", "gap_exact", "gap_exact_ci95", "gap_mc", "gap_mc_ci95", "mc_return",
            "exact_return", "learn_seconds", "samples", "size"]
    if any(s.get("train_k", s["k"]) != s["k"] for s in summary):  # some policies run at another k than trained
        cols.insert(4, "train_k")
    lines = [f"# {meta.get('title', 'k-scaling study')}", ""]
    lines += [f"Gap reference: {', '.join(sorted({s['gap_reference'] for s in summary}))}. "
              f"Evaluation: {meta.get('evaluation', '')}. CIs: {meta.get('ci95', '')}.", ""]
    if meta.get("command"):
        wall = meta.get("wall_seconds")
        lines += [f"Command: `{meta['command']}`" + (f" (wall time {wall:.0f} s)" if wall else ""), ""]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(s.get(c, math.nan)) for c in cols) + " |" for s in summary]
    lines += [""] + [f"Fitted reference `c·sqrt((n−k+1)/(n·k))` for {t}: c = {_fmt(c)}" for t, c in fits.items()]
    env = meta.get("environment")
    if env:
        vers = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
        lines += ["", "## Hardware and libraries", "",
                  f"{env['cpu']} ({env['cpu_count']} logical CPUs, torch CPU kernels: {env['torch_cpu_capability']}"
                  f"{', GPU ' + env['cuda'] if env.get('cuda') else ''}); {env['platform']}; Python {env['python']}; "
                  f"{vers}. Tabular rows and exact values reproduce bit for bit elsewhere; neural and baseline "
                  "rows depend on the CPU's floating-point kernels and reproduce within their CIs."]
    if curves:
        lines += ["", "## Validation curves", "",
                  "Each trained run's validation return (common random numbers across its steps): its gain from "
                  "the first to the last validation and its spread (max − min) over the last quarter of the "
                  "steps; a spread small against the gain means the curve has flattened.", "",
                  "| env | n | algo | k | seed | steps | validations | first return | final return | ±CI | gain "
                  "| spread, last 25% of steps |", "|" + "---|" * 12]
        lines += ["| " + " | ".join(_fmt(v) for v in (
                  c["env"], c["n"], c["algo"], c["k"], c["seed"], c["steps"][-1], len(c["steps"]), c["return"][0],
                  c["return"][-1], c.get("return_ci95", [math.nan])[-1], c["return"][-1] - c["return"][0],
                  c["tail_spread"])) + " |" for c in curves]
    if comparison is not None:
        ok = sum(bool(c["ok"]) for c in comparison)
        lines += ["", "## Reproduction check", "",
                  f"Against `{meta.get('compare', '')}`: {ok} of {len(comparison)} rows ok.", "",
                  "| env | n | algo | k | metric | committed | ±CI | rerun | ±CI | status | expect | ok |",
                  "|" + "---|" * 12]
        lines += ["| " + " | ".join(_fmt(c.get(key, "")) for key in ("env", "n", "algo", "k", "metric", "committed",
                  "committed_ci95", "rerun", "rerun_ci95", "status", "expect", "ok")) + " |" for c in comparison]
    if refused:
        lines += ["", "## Refused tables (memory limit)", "",
                  "Tabular jobs whose table exceeds `algo.max_memory_gib`; the learner's message:", ""]
        lines += [f"- {r['env']}, n = {r['n']}, {r['algo']}, k = {r['k']} ({r['entries']:,} entries): {r['reason']}"
                  for r in refused]
    if missing:
        lines += ["", "## Missing jobs", ""] + [f"- `{m['path']}`: {m['reason']}" for m in missing]
    if skipped:
        lines += ["", "## Skipped runs (corrupt)", ""] + [f"- `{m['path']}`: {m['reason']}" for m in skipped]
    lines += [""] + [f"![{p}]({p})" for p in plots]
    write_text_atomic(out / "report.md", "\n".join(lines) + "\n")
