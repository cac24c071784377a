"""Train at k, deploy at k': one mean-pooling DeepSets network executed with any k' (docs/model.md §3).

Mean pooling makes the network a function of the empirical distribution of the sample, so a net
trained on k-subsets can act on k'-subsets. For each training k, the same network is deployed at
every k' and evaluated on the full n-agent system (Algorithm 2, docs/model.md §2) with common
random numbers (docs/model.md §5). n = 1000 has no exact V*: the gap is taken against the best
evaluated (k, k') pair, labelled so.

    PYTHONPATH=. python bench/train_k_deploy_k.py --threads 1   # writes docs/train_k_deploy_k/
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.study_utils import ROOT, command_line, machine_line, markdown_table, train_deepsets, write_csv  # noqa: E402
from sqtorch.envs import build_env  # noqa: E402
from sqtorch.evaluation import evaluate_mc, initial_states  # noqa: E402
from sqtorch.evaluation.execution import stratified_ci  # noqa: E402
from sqtorch.neural import DeepSetsPolicy  # noqa: E402
from sqtorch.neural.data import DataConfig  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--train-k", type=int, nargs="+", default=[4, 16, 64])
    p.add_argument("--deploy-k", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    p.add_argument("--steps", type=int, default=600, help="optimizer steps per training k")
    p.add_argument("--num-initial", type=int, default=16)
    p.add_argument("--rollouts", type=int, default=16)
    p.add_argument("--seed", type=int, default=12345, help="evaluation seed (common random numbers)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "docs" / "train_k_deploy_k"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    env_cfg = {"_target_": "sqtorch.envs.queue"}
    env, n = build_env(env_cfg), args.n
    s0 = initial_states(env, n, args.num_initial, seed=args.seed)
    data = DataConfig(state_dist="visited", pool_size=32)
    rows, returns = [], []
    for k in args.train_k:
        policy, wall = train_deepsets(env_cfg, n, k, args.steps, seed=0, data=data, batch_size=256)
        print(f"trained k = {k}: {wall:.1f} s", flush=True)
        for k2 in args.deploy_k:
            t = time.perf_counter()
            res = evaluate_mc(env, DeepSetsPolicy(policy.net, k2), n, s0=s0, rollouts=args.rollouts, seed=args.seed,
                              keep_returns=True)
            returns.append(res.returns)
            rows.append(dict(train_k=k, deploy_k=k2, ret=res.mean, ci95=res.ci95, train_s=wall,
                             eval_s=time.perf_counter() - t))
            print(f"  deploy k' = {k2}: return {res.mean:.4f} +- {res.ci95:.4f}", flush=True)
    best = max(r["ret"] for r in rows)
    i_best = max(range(len(rows)), key=lambda i: rows[i]["ret"])
    for r, ret in zip(rows, returns, strict=True):
        r["gap_vs_best_evaluated"] = best - r["ret"]
        r["gap_ci95_paired"] = stratified_ci(returns[i_best] - ret)[1]  # common random numbers
    out = Path(args.out)
    write_csv(out / "results.csv", rows)

    R = np.array([[next(r["ret"] for r in rows if r["train_k"] == k and r["deploy_k"] == k2)
                   for k2 in args.deploy_k] for k in args.train_k])
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    im = ax.imshow(best - R, cmap="viridis_r", aspect="auto")
    ax.set_xticks(range(len(args.deploy_k)), [str(k) for k in args.deploy_k])
    ax.set_yticks(range(len(args.train_k)), [str(k) for k in args.train_k])
    ax.set_xlabel("deploy k'")
    ax.set_ylabel("train k")
    for i in range(R.shape[0]):
        for j in range(R.shape[1]):
            ax.text(j, i, f"{R[i, j]:.3f}\n({best - R[i, j]:.3f})", ha="center", va="center", fontsize=7,
                    color="w" if best - R[i, j] > 0.5 * (best - R.min()) else "k")
    fig.colorbar(im, label="gap vs best evaluated pair")
    ax.set_title(f"queue, n = {n}: return (gap vs best evaluated), CRN, {args.num_initial}x{args.rollouts}")
    fig.tight_layout()
    fig.savefig(out / "train_k_deploy_k.png", dpi=120)

    wall = time.perf_counter() - t_start
    table = markdown_table(
        rows, ["train_k", "deploy_k", "ret", "ci95", "gap_vs_best_evaluated", "gap_ci95_paired", "train_s"],
        {"ret": ".4f", "ci95": ".4f", "gap_vs_best_evaluated": ".4f", "gap_ci95_paired": ".4f", "train_s": ".1f"},
    )
    text = (
        f"# Train at k, deploy at k' (queue, n = {n})\n\n"
        f"Command: `{command_line()}` ({wall / 60:.1f} min wall; {machine_line()}).\n\n"
        f"One DeepSets network (mean pooling, docs/model.md §3) per training k, {args.steps} optimizer steps "
        f"(batch 256, m = 8, visited pool of 32 systems, seed 0), then deployed unchanged at every k'. "
        f"Return: Monte Carlo on all n = {n} agents, {args.num_initial} initial states x {args.rollouts} "
        f"rollouts, seed {args.seed}, common random numbers for every cell (docs/model.md §5). No exact V* at "
        f"n = {n}: **gap = best evaluated cell - cell** (not an optimality gap). ci95 is each cell's own "
        f"(unpaired) interval; gap_ci95_paired is the interval of the gap from the paired per-rollout "
        f"differences (common random numbers). A gap of exactly 0 means the cell took the best cell's "
        f"action at every step of every rollout.\n\n"
        f"![heat map](train_k_deploy_k.png)\n\n{table}\n"
    )
    (out / "README.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
