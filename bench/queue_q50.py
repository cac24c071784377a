"""Large local state space: queue with capacity Q = 50 (L = 51) at n = 10^4, DeepSets up to k = 100.

The count-vector table has ``G * C(k+50, k) * A`` entries (docs/model.md §2): feasible for small
k only. The tabular learner is run where its table fits ``--max-gib`` and its refusal is recorded
beyond; the DeepSets network (docs/model.md §3) has the same size at every k. Every policy is
evaluated on the full n-agent system with common random numbers (docs/model.md §5). n = 10^4 has
no exact V*: gaps are against the **best evaluated policy** (labelled so).

    PYTHONPATH=. python bench/queue_q50.py --threads 1   # writes docs/queue_q50/
"""

from __future__ import annotations

import argparse
import math
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
from sqtorch.neural import DeepSetsPolicy  # noqa: E402
from sqtorch.neural.data import DataConfig  # noqa: E402
from sqtorch.neural.deepsets import num_parameters  # noqa: E402
from sqtorch.tabular import learn  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--tabular-k", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    p.add_argument("--deepsets-k", type=int, nargs="+", default=[1, 4, 16, 64, 100])
    p.add_argument("--m", type=int, default=10, help="tabular samples per entry")
    p.add_argument("--T", type=int, default=60, help="tabular iterations (0.9^60 = 0.002 of the initial error)")
    p.add_argument("--max-gib", type=float, default=2.0, help="tabular memory limit (shared 24 GiB machine)")
    p.add_argument("--steps", type=int, default=400, help="DeepSets optimizer steps per k")
    p.add_argument("--deploy-from", type=int, default=4,
                   help="also deploy the net trained at this k at every DeepSets k (mean pooling; 0: off)")
    p.add_argument("--num-initial", type=int, default=8)
    p.add_argument("--rollouts", type=int, default=8)
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "docs" / "queue_q50"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    env_cfg = {"_target_": "sqtorch.envs.queue", "Q": 50}
    env, n = build_env(env_cfg), args.n
    s0 = initial_states(env, n, args.num_initial, seed=args.seed)
    kw = dict(s0=s0, rollouts=args.rollouts, seed=args.seed, keep_returns=True)
    rows, refusals, returns = [], [], []
    for k in args.tabular_k:
        entries = env.G * math.comb(k + env.L - 1, k) * env.A
        try:
            t = time.perf_counter()
            res = learn(env, k, m=args.m, T=args.T, tol=1e-6, seed=0, max_memory_gib=args.max_gib)
            wall = time.perf_counter() - t
        except ValueError as e:
            refusals.append(dict(k=k, entries=entries, message=str(e)))
            print(f"tabular k = {k}: refused: {e}", flush=True)
            continue
        ev = evaluate_mc(env, res.qtable, n, **kw)
        returns.append(ev.returns)
        rows.append(dict(algo=f"tabular m={args.m}", k=k, ret=ev.mean, ci95=ev.ci95, train_s=wall, size=entries))
        print(f"tabular k = {k}: {wall:.1f} s, return {ev.mean:.3f} +- {ev.ci95:.3f}", flush=True)
    data = DataConfig(state_dist="visited", pool_size=32)
    for k in args.deepsets_k:
        policy, wall = train_deepsets(env_cfg, n, k, args.steps, seed=0, data=data)
        ev = evaluate_mc(env, policy, n, **kw)
        returns.append(ev.returns)
        rows.append(dict(algo="deepsets", k=k, ret=ev.mean, ci95=ev.ci95, train_s=wall,
                         size=num_parameters(policy.net)))
        print(f"deepsets k = {k}: {wall:.1f} s, return {ev.mean:.3f} +- {ev.ci95:.3f}", flush=True)
        if k == args.deploy_from:
            trained_net = policy.net
    if args.deploy_from in args.deepsets_k:
        for k in args.deepsets_k:
            if k == args.deploy_from:
                continue
            ev = evaluate_mc(env, DeepSetsPolicy(trained_net, k), n, **kw)
            returns.append(ev.returns)
            rows.append(dict(algo=f"deepsets trained at k={args.deploy_from}", k=k, ret=ev.mean, ci95=ev.ci95,
                             train_s=0.0, size=num_parameters(trained_net)))
            print(f"deepsets trained at {args.deploy_from}, deployed at k = {k}: return {ev.mean:.3f}", flush=True)
    best = max(r["ret"] for r in rows)
    i_best = max(range(len(rows)), key=lambda i: rows[i]["ret"])
    for r, ret in zip(rows, returns, strict=True):
        r["gap_vs_best_evaluated"] = best - r["ret"]
        r["gap_ci95_paired"] = stratified_ci(returns[i_best] - ret)[1]  # common random numbers
    out = Path(args.out)
    write_csv(out / "results.csv", rows + [dict(algo="tabular refused", k=r["k"], size=r["entries"]) for r in refusals])

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    series = ((f"tabular m={args.m}", "s"), ("deepsets", "o"), (f"deepsets trained at k={args.deploy_from}", "^"))
    for algo, marker in series:
        rs = [r for r in rows if r["algo"] == algo]
        if not rs:
            continue
        ax.errorbar([r["k"] for r in rs], [r["gap_vs_best_evaluated"] for r in rs],
                    yerr=[r["gap_ci95_paired"] for r in rs], marker=marker, capsize=3, label=algo)
        if algo.startswith("deepsets trained"):
            continue
        ax2.plot([r["k"] for r in rs], [r["size"] for r in rs], marker=marker,
                 label=f"{algo} ({'table entries' if algo != 'deepsets' else 'parameters'})")
    ks = list(range(1, max(args.deepsets_k) + 1))
    ax2.plot(ks, [env.G * math.comb(k + env.L - 1, k) * env.A for k in ks], "k:", label="table entries G*C(k+50,k)*A")
    for r in refusals:
        ax2.plot(r["k"], r["entries"], "rx", ms=9)
    ax2.plot([], [], "rx", label=f"tabular refused (> {args.max_gib} GiB)")
    ax.set(xscale="log", xlabel="k", ylabel="gap vs best evaluated policy (MC, CRN)",
           title=f"queue Q = 50 (L = 51), n = {n}")
    ax2.set(xscale="log", yscale="log", xlabel="k", ylabel="size", ylim=(1e2, 1e16), title="size vs k")
    ax.legend(fontsize=8)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "gap_vs_k_queue_q50.png", dpi=120)

    wall = time.perf_counter() - t_start
    table = markdown_table(
        rows, ["algo", "k", "ret", "ci95", "gap_vs_best_evaluated", "gap_ci95_paired", "train_s", "size"],
        {"ret": ".3f", "ci95": ".3f", "gap_vs_best_evaluated": ".3f", "gap_ci95_paired": ".3f", "train_s": ".1f"},
    )
    refused = "\n".join(f"- k = {r['k']} ({r['entries']:,} entries): `{r['message']}`" for r in refusals)
    text = (
        f"# queue with Q = 50 (L = 51), n = {n}: tabular vs DeepSets up to k = {max(args.deepsets_k)}\n\n"
        f"Command: `{command_line()}` ({wall / 60:.1f} min wall; {machine_line()}).\n\n"
        f"Tabular: `learn(env, k, m = {args.m}, T = {args.T}, tol = 1e-6, max_memory_gib = {args.max_gib})`. "
        f"DeepSets: {args.steps} optimizer steps per k (batch 256, m = 8, visited pool of 32 systems, seed 0; "
        f"far fewer than the 5000 default: a budget choice for 2 shared cores). Return: Monte Carlo on all "
        f"n = {n} agents, {args.num_initial} initial states x {args.rollouts} rollouts, seed {args.seed}, common "
        f"random numbers. No exact V* (the n-count MDP has G*C(n+50, 50) states): **gap = best evaluated "
        f"policy - policy**, a lower bound on the optimality gap, with its 95% interval from the paired "
        f"per-rollout differences (gap_ci95_paired). `size`: table entries (tabular) or "
        f"parameters (DeepSets). `deepsets trained at k={args.deploy_from}`: the k = {args.deploy_from} net "
        f"deployed unchanged at the other k (mean pooling, docs/model.md §3).\n\n"
        f"![gap vs k](gap_vs_k_queue_q50.png)\n\n{table}\n\n"
        f"Refused tabular tables:\n\n{refused or '- none'}\n"
    )
    (out / "README.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
