"""The plots of a study (docs/model.md §5): gap, learning time and return vs k, cost curves, extra kinds.

Gap vs k on a log axis (tabular and neural, mean ± 95% CI over seeds, exact values solid, Monte
Carlo hollow, with the fitted ``c sqrt((n-k+1)/(n k))`` reference of docs/model.md §2; baselines as
horizontal lines with their CI band), learning time vs k (log axis), return vs k (with ``V*``), gap
vs samples and vs learning seconds, and the kinds a study names in ``plots:``
(:data:`sqtorch.experiment.study.PLOT_KINDS`). Used by :mod:`sqtorch.experiment.report`.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import torch  # noqa: E402

from sqtorch.experiment.groups import REF_EXACT, ZERO_GAP  # noqa: E402
from sqtorch.experiment.study import fit_reference, reference_curve  # noqa: E402
from sqtorch.runtime import atomic_write  # noqa: E402

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
        k = torch.linspace(1, _k_max(rows), 200, dtype=torch.float64)
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


def _k_max(rows: list[dict]) -> int:
    """The largest k on the axis: of the learners (a baseline that sees all n agents is a line, not a point)."""
    learners = [r["k"] for r in rows if r.get("kind") != "baseline"]
    return max(learners or [r["k"] for r in rows])


def _is_baseline(rows: list[dict], algo: str) -> bool:
    return any(r["algo"] == algo and r.get("kind") == "baseline" for r in rows)


def _baseline_line(ax: plt.Axes, rows: list[dict], algo: str, key: str, floor: float, col: str, exact: bool) -> None:
    """A baseline (one policy per seed, no k axis) as a horizontal line with its 95% CI band."""
    r = next(r for r in rows if r["algo"] == algo)
    y, ci = r[key], r.get(key + "_ci95", 0.0)
    sees = "all n agents" if r["k"] == r["n"] else f"k = {r['k']} sampled agents"
    ax.axhline(max(y, floor), color=col, ls="-.", lw=1.5,
               label=f"{algo} ({'exact' if exact else 'Monte Carlo'}, {r['seeds']} seed{'s' * (r['seeds'] != 1)}, "
                     f"sees {sees}; CI at right)")
    if ci > 0:  # the CI as an error bar right of the k axis (a band would hide the other series)
        x = _k_max(rows) + 0.25 + 0.15 * sorted({q["algo"] for q in rows}).index(algo) / len(rows)
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


def _tag(env: str, n: int) -> str:
    """File-name part of a group: ``queue_n10``; labelled envs keep letters, digits and ``._=-``."""
    return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9_.=-]", "_", f"{env}_n{n}")).strip("_")


def _trained(rows: list[dict]) -> list[dict]:
    """Rows of policies evaluated at the k they were trained at (deployed ones excluded)."""
    return [r for r in rows if r.get("train_k", r["k"]) == r["k"]]


def deployed_bases(rows: list[dict]) -> list[str]:
    """Algos some of whose policies were also executed at another k′ (``<base> trained at k=<k>`` rows)."""
    return sorted({r["algo"].rsplit(" trained at k=", 1)[0] for r in rows if r.get("train_k", r["k"]) != r["k"]})


def plot_deploy_heatmap(rows: list[dict], env: str, n: int, base: str, path: Path) -> None:
    """Return (and gap) of each ``base`` net trained at k (rows) and executed at k′ (columns)."""
    cells = {(r["train_k"], r["k"]): r for r in rows if r["algo"].startswith(f"{base} trained at k=")}
    cells.update({(r["k"], r["k"]): r for r in rows if r["algo"] == base})
    tks, dks = sorted({c[0] for c in cells}), sorted({c[1] for c in cells})
    gkey = _gap_key(rows)
    grid = torch.full((len(tks), len(dks)), math.nan, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(1.3 * len(dks) + 3, 0.8 * len(tks) + 2))
    for (tk, dk), r in cells.items():
        grid[tks.index(tk), dks.index(dk)] = r[gkey]
    im = ax.imshow(grid.numpy(), cmap="viridis_r", aspect="auto")
    top = float(grid[grid.isfinite()].max()) if bool(grid.isfinite().any()) else 0.0
    for (tk, dk), r in cells.items():
        g = r[gkey]
        ax.text(dks.index(dk), tks.index(tk), f"{r['mc_return']:.4g}\n({g:.3g})", ha="center", va="center",
                fontsize=7, color="w" if g > 0.5 * top else "k")
    ax.set_xticks(range(len(dks)), [str(k) for k in dks])
    ax.set_yticks(range(len(tks)), [str(k) for k in tks])
    ax.set_xlabel("deployed at k′")
    ax.set_ylabel("trained at k")
    what = "exact optimality gap" if gkey == "gap_exact" else "gap to the best evaluated policy"
    fig.colorbar(im, label=what)
    ax.set_title(f"{env}, n = {n}: return ({what}) of {base}", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def plot_size(rows: list[dict], refused: list[dict], env: str, n: int, path: Path) -> None:
    """Policy size vs k (table entries for tabular, parameters otherwise), refused tables as red crosses."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    trained = _trained(rows)
    for i, algo in enumerate(sorted({r["algo"] for r in trained})):
        ks, size, _ = _series(trained, algo, "size")
        what = "table entries" if algo.startswith("tabular") else "parameters"
        ax.plot(ks, size, marker="o", color=COLORS[i % len(COLORS)], label=f"{algo} ({what})")
    mine = [r for r in refused if r["env"] == env and r["n"] == n]
    for r in mine:
        ax.plot(r["k"], r["entries"], "rx", ms=9)
    if mine:
        ax.plot([], [], "rx", label=f"refused ({mine[0]['algo']}, > max_memory_gib = {mine[0]['max_memory_gib']:g})")
    ax.set(xscale="log", yscale="log", xlabel="k (sampled local agents)", ylabel="size",
           title=f"{env}, n = {n}: size vs k")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def plot_return_vs_cost(rows: list[dict], env: str, n: int, key: str, xlabel: str, path: Path) -> None:
    """Return (mean ± CI) vs a learning cost; one curve per ``series`` (an algo over k, or one k over budgets)."""
    fig, ax = plt.subplots(figsize=(9.6, 4.6))
    trained = [r for r in _trained(rows) if math.isfinite(r[key])]
    for i, series in enumerate(sorted({r.get("series", r["algo"]) for r in trained})):
        rs = [r for r in trained if r.get("series", r["algo"]) == series]  # an algo over k, or one k over budgets
        rs.sort(key=lambda r: r["k"] if r["algo"] == series else r[key])
        x = [r[key] for r in rs]
        y = [r["mc_return"] for r in rs]
        ax.errorbar(x, y, yerr=[r.get("mc_return_ci95", 0.0) for r in rs], xerr=[r.get(key + "_ci95", 0.0) for r in rs],
                    color=COLORS[i % len(COLORS)], marker="o", capsize=3, label=series)
        base = series.rsplit(" k=", 1)[0]
        for r, xv, yv in zip(rs, x, y, strict=True):
            note = r["algo"][len(base):].strip() if series != r["algo"] else f"k={r['k']}"
            ax.annotate(note, (xv, yv), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("return (Monte Carlo, common random numbers)")
    ax.set_title(f"{env}, n = {n}: return vs {xlabel.split(' [')[0]}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    _save(fig, path)


def plot_gap_by_env(summary: list[dict], n: int, path: Path) -> None:
    """Gap vs k of every env variant at this n (trained policies; exact gaps where V* is exact)."""
    rows = [r for r in _trained(summary) if r["n"] == n]
    floor = gap_floor(rows)
    fig, ax = plt.subplots(figsize=(9.6, 4.6))
    for i, env in enumerate(sorted({r["env"] for r in rows})):
        mine = [r for r in rows if r["env"] == env]
        gkey = _gap_key(mine)
        for j, algo in enumerate(sorted({r["algo"] for r in mine})):
            ks, y, ci = _series(mine, algo, gkey)
            ax.errorbar(ks, torch.tensor(y).clamp(min=floor), yerr=ci, color=COLORS[i % len(COLORS)],
                        marker="os^dv"[j % 5], ls="-" if len(ks) > 1 else "none", capsize=2,
                        label=f"{env}: {algo} ({'exact' if gkey == 'gap_exact' else 'MC, to best'})")
    ax.axhline(floor, color="0.7", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="k (sampled local agents)", ylabel="gap",
           title=f"n = {n}: gap vs k per env (gaps <= {ZERO_GAP:g} drawn at {floor:g})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    _save(fig, path)


def plot_validation_curves(curves: list[dict], env: str, n: int, path: Path) -> None:
    """Validation return vs optimizer step of every trained run of ``(env, n)`` (with its CI band, common
    random numbers across the steps of one run), and the exact gap beside it where the run logged one.
    The seeds of one ``(algo, k)`` share a colour and one legend entry."""
    mine = [c for c in curves if c["env"] == env and c["n"] == n]
    has_gap = any("gap" in c for c in mine)
    seeds = Counter((c["algo"], c["k"]) for c in mine)
    colour = {key: COLORS[i % len(COLORS)] for i, key in enumerate(sorted(seeds))}
    fig, axes = plt.subplots(1, 2 if has_gap else 1, figsize=(11.6 if has_gap else 7.4, 4.4), squeeze=False)
    labelled: set[tuple[str, int]] = set()
    for c in sorted(mine, key=lambda c: (c["algo"], c["k"], c["seed"])):
        key = (c["algo"], c["k"])
        col = colour[key]
        label = None
        if key not in labelled:  # one entry per (algo, k): its seeds share the colour
            label = f"{c['algo']} k={c['k']}" + (f" ({seeds[key]} seeds)" if seeds[key] > 1 else "")
            labelled.add(key)
        thin = dict(lw=0.9, alpha=0.75, markersize=3) if seeds[key] > 1 else {}
        x, y = torch.tensor(c["steps"]), torch.tensor(c["return"])
        axes[0, 0].plot(x, y, marker=".", color=col, label=label, **thin)
        if "return_ci95" in c:
            ci = torch.tensor(c["return_ci95"])
            axes[0, 0].fill_between(x, y - ci, y + ci, color=col, alpha=0.12 / seeds[key] ** 0.5, lw=0)
        if has_gap and "gap" in c:
            axes[0, 1].plot(x, torch.tensor(c["gap"]).clamp(min=ZERO_GAP), marker=".", color=col, label=label, **thin)
    axes[0, 0].set(xlabel="optimizer step", ylabel="validation return (Monte Carlo, ± 95% CI)",
                   title=f"{env}, n = {n}: validation curves")
    if has_gap:
        axes[0, 1].set(xlabel="optimizer step", ylabel="exact gap V* − V^π", yscale="log",
                       title=f"exact gap (<= {ZERO_GAP:g} drawn at {ZERO_GAP:g})")
    for ax in axes[0]:
        ax.grid(True, alpha=0.3)
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    _save(fig, path)


def _extra_plots(out: Path, summary: list[dict], refused: list[dict], kinds: tuple[str, ...] | list[str],
                 curves: list[dict] | None = None) -> list[str]:
    """The study's extra plots (:data:`PLOT_KINDS`); returns their file names."""
    plots = []
    if "validation_curves" in kinds and curves:
        for env, n in sorted({(c["env"], c["n"]) for c in curves}):
            name = f"validation_curves_{_tag(env, n)}.png"
            plot_validation_curves(curves, env, n, out / name)
            plots.append(name)
    for (env, n), srows in _groups(summary).items():
        tag = _tag(env, n)
        bases = deployed_bases(srows) if "deploy_heatmap" in kinds else []
        for base in bases:
            name = f"deploy_{tag}.png" if len(bases) == 1 else f"deploy_{tag}_{_tag(base, n)}.png"
            plot_deploy_heatmap(srows, env, n, base, out / name)
            plots.append(name)
        if "size_vs_k" in kinds:
            plot_size(srows, refused, env, n, out / f"size_vs_k_{tag}.png")
            plots.append(f"size_vs_k_{tag}.png")
        for kind, key, xlabel in (("return_vs_samples", "samples", "samples drawn [local-agent transitions]"),
                                  ("return_vs_time", "learn_seconds", "learning wall-clock [s]")):
            if kind in kinds:
                plot_return_vs_cost(srows, env, n, key, xlabel, out / f"{kind}_{tag}.png")
                plots.append(f"{kind}_{tag}.png")
    if "gap_vs_k_by_env" in kinds:
        for n in sorted({s["n"] for s in summary}):
            plot_gap_by_env(summary, n, out / f"gap_vs_k_by_env_n{n}.png")
            plots.append(f"gap_vs_k_by_env_n{n}.png")
    return plots
