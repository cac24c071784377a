"""Demand response at n = 50 under one wall-clock budget: best tabular policy that fits vs DeepSets at large k.

For each budget B (seconds of learning on this machine): the tabular candidate is the best (by
return) of the tabular SUBSAMPLE-Q tables ``learn(env, k, m)`` whose measured learning time is at
most B (docs/model.md §2); the neural candidates are DeepSets networks trained at large k for at
most B seconds (Lightning ``max_time``; the step count is set from a measured step rate so the
cosine schedule ends near B; docs/model.md §3). Every policy is evaluated on the full n = 50 system
with common random numbers (docs/model.md §5); no exact V* at n = 50 (25 local states).

    PYTHONPATH=. python bench/dr_n50_budget.py --threads 1   # writes docs/dr_n50_budget/
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from bench.study_utils import ROOT, command_line, machine_line, markdown_table, train_deepsets, write_csv  # noqa: E402
from sqtorch.envs import build_env  # noqa: E402
from sqtorch.evaluation import evaluate_mc, initial_states  # noqa: E402
from sqtorch.evaluation.execution import stratified_ci  # noqa: E402
from sqtorch.neural.data import DataConfig  # noqa: E402
from sqtorch.tabular import learn  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--budgets", type=float, nargs="+", default=[5.0, 15.0, 45.0])
    p.add_argument("--tabular-k", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    p.add_argument("--m", type=int, default=10)
    p.add_argument("--deepsets-k", type=int, nargs="+", default=[10, 50])
    p.add_argument("--num-initial", type=int, default=16)
    p.add_argument("--rollouts", type=int, default=32)
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "docs" / "dr_n50_budget"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    env_cfg = {"_target_": "sqtorch.envs.demand_response"}
    env, n = build_env(env_cfg), args.n
    s0 = initial_states(env, n, args.num_initial, seed=args.seed)
    kw = dict(s0=s0, rollouts=args.rollouts, seed=args.seed, keep_returns=True)
    tab = []
    for k in args.tabular_k:
        if tab and tab[-1]["learn_s"] > max(args.budgets):
            print(f"tabular k = {k}: skipped (k = {tab[-1]['k']} already took longer than every budget)")
            break
        t = time.perf_counter()
        res = learn(env, k, m=args.m, T=200, tol=1e-6, seed=0, max_memory_gib=4.0)
        wall = time.perf_counter() - t
        ev = evaluate_mc(env, res.qtable, n, **kw)
        tab.append(dict(algo=f"tabular m={args.m}", k=k, learn_s=wall, ret=ev.mean, ci95=ev.ci95, returns=ev.returns))
        print(f"tabular k = {k}: {wall:.1f} s, return {ev.mean:.4f} +- {ev.ci95:.4f}", flush=True)
    data = DataConfig(state_dist="visited", pool_size=64)
    rows = []
    for B in args.budgets:
        fits = [r for r in tab if r["learn_s"] <= B]
        best_tab = max(fits, key=lambda r: r["ret"]) if fits else None
        for k in args.deepsets_k:
            probe_steps = 20
            _, probe_s = train_deepsets(env_cfg, n, k, probe_steps, seed=0, data=data)
            steps = max(10, int(0.9 * B * probe_steps / probe_s))
            policy, wall = train_deepsets(env_cfg, n, k, steps, seed=0, data=data, max_seconds=B)
            ev = evaluate_mc(env, policy, n, **kw)
            row = dict(budget_s=B, deepsets_k=k, deepsets_steps=steps, deepsets_train_s=wall, deepsets_ret=ev.mean,
                       deepsets_ci95=ev.ci95)
            if best_tab is not None:
                diff, ci, _ = stratified_ci(ev.returns - best_tab["returns"])
                row.update(best_tabular_k=best_tab["k"], best_tabular_learn_s=best_tab["learn_s"],
                           best_tabular_ret=best_tab["ret"], deepsets_minus_tabular=diff, diff_ci95_paired=ci)
            rows.append(row)
            print({key: (round(v, 4) if isinstance(v, float) else v) for key, v in row.items()}, flush=True)
    out = Path(args.out)
    write_csv(out / "results.csv", rows)
    write_csv(out / "tabular.csv", [{key: v for key, v in r.items() if key != "returns"} for r in tab])

    fig, ax = plt.subplots(figsize=(6.4, 4))
    xs = sorted(set(args.budgets))
    best_by_budget = []
    for B in xs:
        fits = [r for r in tab if r["learn_s"] <= B]
        best_by_budget.append(max(r["ret"] for r in fits) if fits else float("nan"))
    ax.plot(xs, best_by_budget, "s-", color="C0", label="best tabular that fits the budget")
    for r in tab:
        ax.annotate(f"k={r['k']}", (max(r["learn_s"], min(xs) / 3), r["ret"]), fontsize=7, color="C0")
        ax.plot(max(r["learn_s"], min(xs) / 3), r["ret"], ".", color="C0")
    for j, k in enumerate(args.deepsets_k):
        rs = [r for r in rows if r["deepsets_k"] == k]
        ax.errorbar([r["budget_s"] for r in rs], [r["deepsets_ret"] for r in rs], yerr=[r["deepsets_ci95"] for r in rs],
                    fmt="o--", color=f"C{j + 1}", capsize=3, label=f"DeepSets k = {k}")
    ax.set(xscale="log", xlabel="learning wall-clock budget (s, this machine)", ylabel="return (MC, CRN)",
           title=f"demand_response, n = {n}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "return_vs_budget_dr_n50.png", dpi=120)

    wall = time.perf_counter() - t_start
    t1 = markdown_table([{key: v for key, v in r.items() if key != "returns"} for r in tab],
                        ["algo", "k", "learn_s", "ret", "ci95"], {"learn_s": ".2f", "ret": ".4f", "ci95": ".4f"})
    t2 = markdown_table(rows, ["budget_s", "deepsets_k", "deepsets_steps", "deepsets_train_s", "deepsets_ret",
                               "best_tabular_k", "best_tabular_ret", "deepsets_minus_tabular", "diff_ci95_paired"],
                        {"budget_s": ".0f", "deepsets_train_s": ".1f", "deepsets_ret": ".4f", "best_tabular_ret": ".4f",
                         "deepsets_minus_tabular": ".4f", "diff_ci95_paired": ".4f"})
    text = (
        f"# Demand response, n = {n}: DeepSets at large k vs the best tabular policy within one time budget\n\n"
        f"Command: `{command_line()}` ({wall / 60:.1f} min wall; {machine_line()}).\n\n"
        f"Tabular: `learn(env, k, m = {args.m}, T = 200, tol = 1e-6)`, learning time measured here. DeepSets: "
        f"trained at k for at most the budget (visited pool of 64, batch 256, m = 8, seed 0; steps from a "
        f"20-step probe of the step rate). Return: Monte Carlo on all n = {n} agents, {args.num_initial} initial "
        f"states x {args.rollouts} rollouts, seed {args.seed}, common random numbers; the DeepSets - tabular "
        f"difference has the paired 95% interval. Budgets are wall-clock seconds on a shared 2-core machine, "
        f"so they are noisy.\n\n![return vs budget](return_vs_budget_dr_n50.png)\n\nTabular tables:\n\n{t1}\n\n"
        f"Per budget:\n\n{t2}\n"
    )
    (out / "README.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
