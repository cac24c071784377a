"""Outputs of a k-scaling study: ``results.csv``, ``summary.json``, PNG plots, TensorBoard, ``report.md``.

Plots (docs/model.md §5): optimality gap vs k on a log axis (tabular and neural, mean ± 95% CI over seeds,
exact values solid, Monte Carlo hollow, with the fitted ``c sqrt((n-k+1)/(n k))`` reference of
docs/model.md §2; baselines as horizontal lines with their CI band), learning time vs k (log axis) and
return vs k (with ``V*``). When a group has baselines: gap vs samples drawn (local-agent transitions,
:meth:`sqtorch.experiment.registry.Algorithm.samples`) and gap vs learning wall-clock seconds.
``report.md`` and ``summary.json`` name the hardware and library versions, the skipped (corrupt)
runs, and, with ``compare=``, whether each row reproduces the committed summary.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import torch  # noqa: E402

from sqtorch.experiment.study import REF_EXACT, ZERO_GAP, fit_reference, reference_curve  # noqa: E402
from sqtorch.runtime import atomic_write, write_text_atomic  # noqa: E402

COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray",
          "tab:olive", "tab:cyan"]


def gap_floor(rows: list[dict]) -> float:
    """Where zero gaps (exactly 0 at k = n) are drawn: a decade below the smallest non-zero gap."""
    pos = [r[k] for r in rows for k in ("gap_exact", "gap_mc") if math.isfinite(r[k]) and r[k] > ZERO_GAP]
    return 10 ** math.floor(math.log10(min(pos) / 3)) if pos else 1e-6


def _groups(summary: list[dict]) -> dict[tuple[str, int], list[dict]]:
    by: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for s in summary:
        by[(s["env"], s["n"])].append(s)
    return by


def _series(rows: list[dict], algo: str, key: str) -> tuple[list[int], list[float], list[float]]:
    rs = sorted((r for r in rows if r["algo"] == algo), key=lambda r: r["k"])
    return [r["k"] for r in rs], [r[key] for r in rs], [r.get(key + "_ci95", 0.0) for r in rs]


def _gap_key(rows: list[dict]) -> str:
    return "gap_exact" if rows[0]["gap_reference"] == REF_EXACT else "gap_mc"


def fitted_c(rows: list[dict], n: int) -> float | None:
    """``c`` of the reference line, fitted to a deterministic algorithm's gaps (an exact operator first)."""
    tabular = sorted({r["algo"] for r in rows if r.get("deterministic")}, key=lambda a: ("exact" not in a, a))
    if not tabular:
        return None
    ks, gaps, _ = _series(rows, tabular[0], _gap_key(rows))
    return fit_reference(n, ks, gaps)


def plot_gap(rows: list[dict], env: str, n: int, path: Path) -> float | None:
    """Gap vs k, log y; returns the fitted reference constant c."""
    fig, ax = plt.subplots(figsize=(9.6, 4.6))
    exact = rows[0]["gap_reference"] == REF_EXACT
    floor = gap_floor(rows)
    for i, algo in enumerate(sorted({r["algo"] for r in rows})):
        col = COLORS[i % len(COLORS)]
        if _is_baseline(rows, algo):
            _baseline_line(ax, rows, algo, "gap_exact" if exact else "gap_mc", floor, col, exact)
            continue
        ks, y, ci = _series(rows, algo, "gap_exact" if exact else "gap_mc")
        y, ci = torch.tensor(y), torch.tensor(ci)
        yv = y.clamp(min=floor)
        yerr = torch.stack([yv - (y - ci).clamp(min=floor), (y + ci).clamp(min=floor) - yv])
        seeds = max(r["seeds"] for r in rows if r["algo"] == algo)
        ci_of = f"95% CI over {seeds} seeds" if seeds > 1 else ("1 seed" if exact else "1 seed, Monte Carlo 95% CI")
        label = f"{algo} ({'exact' if exact else 'Monte Carlo'}, {ci_of})"
        ax.errorbar(ks, yv, yerr=yerr, color=col, marker="o", capsize=3, label=label)
        if exact:  # the Monte Carlo estimate of the same gap, CIs in results.csv / report.md
            ks, y_mc, _ = _series(rows, algo, "gap_mc")
            ax.plot(ks, torch.tensor(y_mc).clamp(min=floor), ls="none", marker="o", mfc="none", color=col,
                    alpha=0.6, label=f"{algo} (Monte Carlo)")
    c = fitted_c(rows, n)
    if c is not None:
        k = torch.linspace(1, max(r["k"] for r in rows), 200, dtype=torch.float64)
        ax.plot(k, c * reference_curve(n, k), "k--", lw=1, label=f"{c:.3g}·sqrt((n-k+1)/(n·k))")
    ax.axhline(floor, color="0.7", lw=0.8)
    ax.text(0.01, floor * 1.15, f"gaps ≤ {ZERO_GAP:g} drawn at {floor:g}", fontsize=7, color="0.4",
            transform=ax.get_yaxis_transform())  # x in axes units: inside the plot whatever the k range
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_yscale("log")
    lo, hi = ax.get_ylim()  # at least a decade around the floor, also when every gap is zero
    ax.set_ylim(min(lo, floor / 2), max(hi, floor * 20))
    ax.set_xlabel("k (sampled local agents)")
    ax.set_ylabel("optimality gap  V* − V^π" if exact else "gap to best evaluated policy")
    ax.set_title(f"{env}, n = {n}: gap vs k" + ("" if exact else " (V* not tractable)"))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    _save(fig, path)
    return c


def _is_baseline(rows: list[dict], algo: str) -> bool:
    return any(r["algo"] == algo and r.get("kind") == "baseline" for r in rows)


def _baseline_line(ax: plt.Axes, rows: list[dict], algo: str, key: str, floor: float, col: str, exact: bool) -> None:
    """A baseline (one policy per seed, no k axis) as a horizontal line with its 95% CI band."""
    r = next(r for r in rows if r["algo"] == algo)
    y, ci = r[key], r.get(key + "_ci95", 0.0)
    sees = "all n agents" if r["k"] == r["n"] else f"k = {r['k']} sampled agents"
    ax.axhline(max(y, floor), color=col, ls="-.", lw=1.5,
               label=f"{algo} ({'exact' if exact else 'Monte Carlo'}, {r['seeds']} seeds, sees {sees}; CI at right)")
    if ci > 0:  # the CI as an error bar right of the k axis (a band would hide the other series)
        x = max(q["k"] for q in rows) + 0.25 + 0.15 * sorted({q["algo"] for q in rows}).index(algo) / len(rows)
        lo, hi = max(y - ci, floor), max(y + ci, floor)
        ax.errorbar([x], [max(y, floor)], yerr=[[max(y, floor) - lo], [hi - max(y, floor)]], color=col, capsize=3)


def plot_cost(rows: list[dict], env: str, n: int, key: str, xlabel: str, path: Path) -> None:
    """Gap vs a learning cost (samples drawn or wall seconds), log-log; one point per (algo, k), mean ± CI."""
    exact = rows[0]["gap_reference"] == REF_EXACT
    gkey = _gap_key(rows)
    floor = gap_floor(rows)
    fig, ax = plt.subplots(figsize=(9.6, 4.6))
    skipped = []
    for i, algo in enumerate(sorted({r["algo"] for r in rows})):
        rs = sorted((r for r in rows if r["algo"] == algo and math.isfinite(r[key])), key=lambda r: r["k"])
        if not rs:
            skipped.append(algo)
            continue
        x = torch.tensor([r[key] for r in rs])
        y = torch.tensor([r[gkey] for r in rs])
        ci = torch.tensor([r.get(gkey + "_ci95", 0.0) for r in rs])
        xci = torch.tensor([r.get(key + "_ci95", 0.0) for r in rs])
        yv = y.clamp(min=floor)
        yerr = torch.stack([yv - (y - ci).clamp(min=floor), (y + ci).clamp(min=floor) - yv])
        base = _is_baseline(rows, algo)
        ax.errorbar(x, yv, yerr=yerr, xerr=xci, color=COLORS[i % len(COLORS)], marker="s" if base else "o",
                    ls="none" if base else "-", capsize=3, label=algo + ("" if base else " (k = " +
                    ",".join(str(r["k"]) for r in rs) + ")"))
        if not base and len(rs) > 1:  # name the ends of each k series
            for r, xv, yy in ((rs[0], x[0], yv[0]), (rs[-1], x[-1], yv[-1])):
                ax.annotate(f"k={r['k']}", (float(xv), float(yy)), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
    ax.axhline(floor, color="0.7", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("optimality gap  V* − V^π (exact)" if exact else "gap to best evaluated policy (Monte Carlo)")
    note = f" — not shown (no {'samples' if key == 'samples' else 'value'}): {', '.join(skipped)}" if skipped else ""
    ax.set_title(f"{env}, n = {n}: gap vs {xlabel.split(' [')[0].split(' (')[0]}{note}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> None:
    """Save the figure as a PNG, whole or not at all."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def plot_metric(rows: list[dict], env: str, n: int, key: str, ylabel: str, path: Path, log: bool,
                v_star: float | None = None) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, algo in enumerate(sorted({r["algo"] for r in rows})):
        ks, y, ci = _series(rows, algo, key)
        ax.errorbar(ks, y, yerr=ci, marker="o", capsize=3, color=COLORS[i % len(COLORS)], label=algo)
    if v_star is not None and math.isfinite(v_star):
        ax.axhline(v_star, color="k", ls="--", lw=1, label="V* (exact)")
    if log:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("k (sampled local agents)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{env}, n = {n}: {ylabel} vs k")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def write_outputs(
    out: Path, rows: list[dict], summary: list[dict], missing: list[dict], meta: dict,
    skipped: list[dict] | None = None, comparison: list[dict] | None = None,
) -> dict:
    """Write every output of the study into ``out``; returns the ``summary.json`` content."""
    skipped = skipped or []
    out.mkdir(parents=True, exist_ok=True)
    table = io.StringIO()
    w = csv.DictWriter(table, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(out / "results.csv", table.getvalue())
    plots, fits = [], {}
    for (env, n), srows in _groups(summary).items():
        tag = f"{env}_n{n}"
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
    result = dict(meta, fitted_c=fits, summary=summary, missing=missing, skipped=skipped, plots=plots)
    if comparison is not None:
        result["compare"] = comparison
    _tensorboard(out, summary)
    _report_md(out, summary, missing, fits, plots, meta, skipped, comparison)
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
    skipped: list[dict], comparison: list[dict] | None,
) -> None:
    cols = ["env", "n", "algo", "k", "seeds", "gap_exact", "gap_exact_ci95", "gap_mc", "gap_mc_ci95", "mc_return",
            "exact_return", "learn_seconds", "samples", "size"]
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
    if comparison is not None:
        ok = sum(bool(c["ok"]) for c in comparison)
        lines += ["", "## Reproduction check", "",
                  f"Against `{meta.get('compare', '')}`: {ok} of {len(comparison)} rows ok.", "",
                  "| env | n | algo | k | metric | committed | ±CI | rerun | ±CI | status | expect | ok |",
                  "|" + "---|" * 12]
        lines += ["| " + " | ".join(_fmt(c.get(key, "")) for key in ("env", "n", "algo", "k", "metric", "committed",
                  "committed_ci95", "rerun", "rerun_ci95", "status", "expect", "ok")) + " |" for c in comparison]
    if missing:
        lines += ["", "## Missing jobs", ""] + [f"- `{m['path']}`: {m['reason']}" for m in missing]
    if skipped:
        lines += ["", "## Skipped runs (corrupt)", ""] + [f"- `{m['path']}`: {m['reason']}" for m in skipped]
    lines += [""] + [f"![{p}]({p})" for p in plots]
    write_text_atomic(out / "report.md", "\n".join(lines) + "\n")
