"""Benchmark: tabular SUBSAMPLE-Q learning time vs k, and the speedup over a naive L^k tuple table.

    python bench/tabular.py                      # full table (several minutes on 2 cores)
    python bench/tabular.py --quick              # small k only

Each configuration runs in a fresh subprocess so its peak resident memory is its own.
A "sample backup" is one term ``V(g'_j, c'_j)`` of the empirical Bellman operator, i.e. one
``(g, c, a, j)``; an iteration does ``G * N * A * m`` of them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import resource
import subprocess
import sys
import time

import torch


def run_one(env_name: str, k: int, m: int, T: int, seed: int) -> dict:
    """Learn once (T iterations, no early stop) and report cost."""
    from sqtorch.envs import make_env
    from sqtorch.tabular import learn

    env = make_env(env_name)
    t0 = time.perf_counter()
    r = learn(env, k, m=m, T=T, tol=1e-300, seed=seed, max_memory_gib=16)
    total = time.perf_counter() - t0
    backups = r.table_entries * m * r.iterations
    return dict(
        env=env_name,
        k=k,
        count_vectors=r.qtable.q.shape[1],
        entries=r.table_entries,
        m=m,
        T=r.iterations,
        build_s=r.build_seconds,
        iterate_s=r.learn_seconds,
        total_s=total,
        peak_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        sample_backups_per_s=backups / r.learn_seconds,
        entry_backups_per_s=r.table_entries * r.iterations / r.learn_seconds,
    )


def naive_tuple_learner(env_name: str, k: int, m: int, T: int, seed: int) -> float:
    """The public script's way: a Python loop over the L^k tuple table (docs/model.md §6). Returns seconds."""
    from sqtorch.envs import make_env

    env = make_env(env_name)
    G, A, L = env.G, env.A, env.L
    P_g, P_l = env.P_g.tolist(), env.P_l.tolist()
    r_g, r_l = env.r_g.tolist(), env.r_l.tolist()
    rng = random.Random(seed)
    t0 = time.perf_counter()
    tuples = list(itertools.product(range(L), repeat=k))
    index = {t: i for i, t in enumerate(tuples)}
    samples = {}
    for g in range(G):
        for a in range(A):
            for t in tuples:
                nxt = []
                for _ in range(m):
                    g2 = rng.choices(range(G), P_g[g][a])[0]
                    t2 = tuple(rng.choices(range(L), P_l[g][a][x])[0] for x in t)
                    nxt.append((g2, index[t2]))
                reward = r_g[g][a] + sum(r_l[g][a][x] for x in t) / k
                samples[g, a, index[t]] = (reward, nxt)
    Q = [[[0.0] * A for _ in tuples] for _ in range(G)]
    for _ in range(T):
        V = [[max(row) for row in Q[g]] for g in range(G)]
        Q_new = [[[0.0] * A for _ in tuples] for _ in range(G)]
        for (g, a, i), (reward, nxt) in samples.items():
            Q_new[g][i][a] = reward + env.gamma * sum(V[g2][i2] for g2, i2 in nxt) / m
        Q = Q_new
    return time.perf_counter() - t0


def subprocess_run(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="k <= 5 on demand_response, k <= 8 on queue")
    p.add_argument("--m", type=int, default=10)
    p.add_argument("--T", type=int, default=50)
    p.add_argument("--one", nargs=2, metavar=("ENV", "K"), help=argparse.SUPPRESS)
    p.add_argument("--naive", nargs=2, metavar=("ENV", "K"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(run_one(a.one[0], int(a.one[1]), a.m, a.T, seed=0)))
        return
    if a.naive:
        print(json.dumps(dict(seconds=naive_tuple_learner(a.naive[0], int(a.naive[1]), a.m, a.T, seed=0))))
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, m = {a.m}, T = {a.T}\n")
    dr_k = range(1, 6 if a.quick else 8)
    queue_k = [1, 2, 4, 8] if a.quick else [1, 2, 4, 8, 16, 24]
    rows = [subprocess_run(["--one", "demand_response", str(k), "--m", str(a.m), "--T", str(a.T)]) for k in dr_k]
    rows += [subprocess_run(["--one", "queue", str(k), "--m", str(a.m), "--T", str(a.T)]) for k in queue_k]
    cols = ["env", "k", "count_vectors", "entries", "build_s", "iterate_s", "total_s", "peak_gib",
            "sample_backups_per_s", "entry_backups_per_s"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")

    print("\nSpeedup over the naive L^k tuple table (same m and T, both single runs measured here):\n")
    print("| env | k | naive tuple table s | sqtorch s | speedup |")
    print("|---|---|---|---|---|")
    for k in [2, 3]:
        naive = subprocess_run(["--naive", "demand_response", str(k), "--m", str(a.m), "--T", str(a.T)])["seconds"]
        ours = next(r["total_s"] for r in rows if r["env"] == "demand_response" and r["k"] == k)
        print(f"| demand_response | {k} | {naive:.2f} | {ours:.3f} | {naive / ours:,.0f}x |")


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


if __name__ == "__main__":
    main()
