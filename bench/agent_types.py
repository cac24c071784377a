"""Agent types: the optimality gap vs k as heterogeneity grows (sqtorch/envs/types.py, docs/model.md §5).

``queue_types`` with two types of queues, arrival rates ``0.5 - delta`` and ``0.5 + delta`` (equal
mix), the type part of the local state. For each ``delta``: tabular SUBSAMPLE-Q with the exact
operator (``optimal_q(env, k)``) at every k, evaluated

- exactly at small n (lumped count MDP over (type, queue length) counts; exact V* and exact
  policy values, averaged over initial states drawn from the type mix), and
- by Monte Carlo with common random numbers at large n (gap against the best evaluated k,
  labelled so), with the same tables;

plus a DeepSets network at one k per delta (exact gap at small n).

    PYTHONPATH=. python bench/agent_types.py --threads 1   # writes docs/agent_types/
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
from sqtorch.evaluation.exact import optimal_value, policy_value, value_at  # noqa: E402
from sqtorch.evaluation.execution import stratified_ci  # noqa: E402
from sqtorch.neural.data import DataConfig  # noqa: E402
from sqtorch.tabular import optimal_q  # noqa: E402
from sqtorch.tabular.exact import count_kernel  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--deltas", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3])
    p.add_argument("--Q", type=int, default=3, help="queue capacity per type (L = 2 (Q + 1))")
    p.add_argument("--n-exact", type=int, default=8)
    p.add_argument("--n-mc", type=int, default=1000)
    p.add_argument("--k", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8])
    p.add_argument("--deepsets-k", type=int, default=4)
    p.add_argument("--steps", type=int, default=800, help="DeepSets optimizer steps")
    p.add_argument("--num-initial", type=int, default=32)
    p.add_argument("--rollouts", type=int, default=16)
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "docs" / "agent_types"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    rows = []
    for delta in args.deltas:
        env_cfg = {"_target_": "sqtorch.envs.queue_types", "lams": [0.5 - delta, 0.5 + delta], "mix": [0.5, 0.5],
                   "Q": args.Q}
        env = build_env(env_cfg)
        ne, nm = args.n_exact, args.n_mc
        K = count_kernel(env, ne)
        s_e = initial_states(env, ne, args.num_initial, seed=args.seed)  # drawn from the type mix
        v_star = value_at(optimal_value(env, ne, kernel=K), *s_e)
        s_m = initial_states(env, nm, args.num_initial, seed=args.seed)
        tables = {k: optimal_q(env, k) for k in args.k}
        part, returns = [], []
        for k, table in tables.items():
            v = value_at(policy_value(env, ne, table.greedy(), k, kernel=K), *s_e)
            mc = evaluate_mc(env, table, nm, s0=s_m, rollouts=args.rollouts, seed=args.seed, keep_returns=True)
            returns.append(mc.returns)
            part.append(dict(delta=delta, algo="tabular exact-operator", k=k,
                             exact_gap_n_small=float((v_star - v).mean()), mc_return_n_large=mc.mean, mc_ci95=mc.ci95))
        if args.deepsets_k:
            k = args.deepsets_k
            policy, wall = train_deepsets(env_cfg, ne, k, args.steps, seed=0,
                                          data=DataConfig(state_dist="visited", pool_size=64))
            v = value_at(policy_value(env, ne, policy.greedy(), k, kernel=K), *s_e)
            mc = evaluate_mc(env, policy, nm, s0=s_m, rollouts=args.rollouts, seed=args.seed, keep_returns=True)
            returns.append(mc.returns)
            part.append(dict(delta=delta, algo="deepsets", k=k, exact_gap_n_small=float((v_star - v).mean()),
                             mc_return_n_large=mc.mean, mc_ci95=mc.ci95, train_s=wall))
        best = max(r["mc_return_n_large"] for r in part)
        i_best = max(range(len(part)), key=lambda i: part[i]["mc_return_n_large"])
        for r, ret in zip(part, returns, strict=True):
            r["mc_gap_vs_best_evaluated"] = best - r["mc_return_n_large"]
            r["mc_gap_ci95_paired"] = stratified_ci(returns[i_best] - ret)[1]  # common random numbers
            print({key: (round(v, 5) if isinstance(v, float) else v) for key, v in r.items()}, flush=True)
        rows += part
    out = Path(args.out)
    write_csv(out / "results.csv", rows)

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, delta in enumerate(args.deltas):
        c = f"C{i}"
        rs = [r for r in rows if r["delta"] == delta and r["algo"] != "deepsets"]
        ks = [r["k"] for r in rs]
        lab = f"lambda = {0.5 - delta:.2g} / {0.5 + delta:.2g}"
        ax.plot(ks, [max(r["exact_gap_n_small"], 1e-6) for r in rs], "-o", color=c, label=lab)
        ax2.errorbar(ks, [max(r["mc_gap_vs_best_evaluated"], 1e-4) for r in rs],
                     yerr=[r["mc_gap_ci95_paired"] for r in rs], fmt="--o", mfc="none", color=c, capsize=2, label=lab)
        for r in rows:
            if r["delta"] == delta and r["algo"] == "deepsets":
                ax.plot(r["k"], max(r["exact_gap_n_small"], 1e-6), "*", ms=11, color=c)
    ax.plot([], [], "k*", ms=9, label=f"DeepSets, k = {args.deepsets_k}")
    ax.set(xscale="log", yscale="log", xlabel="k", ylabel="exact gap V* - V^pi",
           title=f"2 queue types, n = {args.n_exact} (exact)")
    ax2.set(xscale="log", yscale="log", xlabel="k", ylabel="gap vs best evaluated k (MC, CRN)",
            title=f"2 queue types, n = {args.n_mc} (Monte Carlo)")
    ax.legend(fontsize=7)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "gap_vs_k_agent_types.png", dpi=120)

    wall = time.perf_counter() - t_start
    table = markdown_table(rows, ["delta", "algo", "k", "exact_gap_n_small", "mc_return_n_large", "mc_ci95",
                                  "mc_gap_vs_best_evaluated", "mc_gap_ci95_paired"],
                           {"delta": ".2f", "exact_gap_n_small": ".4f", "mc_return_n_large": ".4f", "mc_ci95": ".4f",
                            "mc_gap_vs_best_evaluated": ".4f", "mc_gap_ci95_paired": ".4f"})
    text = (
        f"# Agent types: gap vs k as heterogeneity grows\n\n"
        f"Command: `{command_line()}` ({wall / 60:.1f} min wall; {machine_line()}).\n\n"
        f"`queue_types(lams = [0.5 - delta, 0.5 + delta], mix = [0.5, 0.5], Q = {args.Q})`: two types of queues "
        f"(the type is part of the local state, L = {2 * (args.Q + 1)}; `P_l` block-diagonal, the type never "
        f"changes; the type mix is the initial local-state distribution `init_l`). Policies: the exact k-agent "
        f"table `optimal_q(env, k)` and a DeepSets network at k = {args.deepsets_k} ({args.steps} steps, visited "
        f"pool of 64, seed 0). **exact_gap_n_small**: `V* - V^pi` exact on the n = {args.n_exact} count MDP, "
        f"averaged over {args.num_initial} initial states drawn from the type mix (seed {args.seed}). "
        f"**mc_gap_vs_best_evaluated**: the same policies on n = {args.n_mc} agents by Monte Carlo with common "
        f"random numbers ({args.num_initial} initial states x {args.rollouts} rollouts), gap against the best "
        f"evaluated policy of the same delta (no exact V* at this n), with the 95% interval of the paired per-rollout "
        f"differences.\n\n"
        f"![gap vs k](gap_vs_k_agent_types.png)\n\n{table}\n"
    )
    (out / "README.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
