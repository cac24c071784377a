"""Benchmark: tabular SUBSAMPLE-Q learning time vs k, and the ratio to the paper script's learner.

    python bench/tabular.py                      # full table (several minutes on 2 cores)
    python bench/tabular.py --quick              # small k only

Each configuration runs in a fresh subprocess so its peak resident memory is its own. Every
configuration runs exactly T sweeps (``learn(..., stop_early=False)``: a fixed workload; the
default stopping rule would end demand response at 26 sweeps, see bench/RESULTS.md).
A "sample backup" is one term ``V(g'_j, c'_j)`` of the empirical Bellman operator, i.e. one
``(g, c, a, j)``; an iteration does ``G * N * A * m`` of them. ``read_fraction`` divides the
sample-backup rate by the machine's random-read rate (bench/random_read.py, 512 MiB array;
``huge_read_fraction``: the same array on transparent huge pages, as the learner's ``V^T``).
``learn_peak_gib`` is the peak resident memory added by ``learn`` (``peak_gib`` minus the
process before it); ``estimate_gib`` is ``table_memory_gib`` for the same configuration.

The ratio table times sqtorch at the script's budget (m = 1, T = 10) two ways, each in a fresh
process: *first*, the first ``learn`` call of the process (after imports and ``make_env``: it
pays torch's one-time op set-up), and *warm*, the median of ``WARM_CALLS`` further calls.
``--prime`` (with ``--one``) first runs one ``learn`` on ``queue`` (other L: none of sqtorch's
per-(k, L) tables is shared), so the timed first call pays its own set-up but not torch's.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import time

import torch

WARM_CALLS = 21

def _peak_rss_gib() -> float:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss it is not inherited over exec)."""
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kib / 2**20


def run_one(env_name: str, k: int, m: int, T: int, seed: int, warm: int = 0, prime: bool = False) -> dict:
    """Learn once (exactly T iterations) and report cost; then ``warm`` more calls (their median time).

    ``prime``: one ``learn`` on ``queue`` before (torch's one-time op set-up, not this call's tables).
    """
    from sqtorch.envs import make_env
    from sqtorch.tabular import learn
    from sqtorch.tabular.counts import num_counts
    from sqtorch.tabular.learner import distinct_local_kernels, table_memory_gib

    env = make_env(env_name)
    if prime:
        learn(make_env("queue"), k, m=1, T=T, tol=1e-300, seed=seed, stop_early=False)
    base_gib = _peak_rss_gib()
    N = num_counts(k, env.L)
    estimate = table_memory_gib(env.G, env.A, N, m, torch.float64, distinct_local_kernels(env), torch.get_num_threads(),
                                k=k)
    t0 = time.perf_counter()
    r = learn(env, k, m=m, T=T, tol=1e-300, seed=seed, max_memory_gib=16, stop_early=False)
    total = time.perf_counter() - t0
    backups = r.table_entries * m * r.iterations
    warm_s = []
    for _ in range(warm):
        t1 = time.perf_counter()
        learn(env, k, m=m, T=T, tol=1e-300, seed=seed, max_memory_gib=16, stop_early=False)
        warm_s.append(time.perf_counter() - t1)
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
        warm_median_s=statistics.median(warm_s) if warm_s else float("nan"),
        peak_gib=_peak_rss_gib(),
        learn_peak_gib=_peak_rss_gib() - base_gib,
        estimate_gib=estimate,
        sample_backups_per_s=backups / r.learn_seconds,
        entry_backups_per_s=r.table_entries * r.iterations / r.learn_seconds,
    )


def paper_script_learner(env_name: str, k: int, sweeps: int = 10) -> float:
    """Re-implementation of the paper's public script's learner. Returns seconds.

    A dictionary Q keyed by ``(s_g, sorted k-tuple, a_g)``, filled by enumerating all ``L^k``
    ordered tuples of local states (``itertools.product``) for every ``s_g`` and ``a_g``, with one
    deterministic next state per entry (the most likely ``g'`` and, per agent, the most likely
    ``x'``: the script's deterministic surrogate of the transition) and ``sweeps`` in-place
    sweeps (10 in the script). Transitions and rewards are precomputed Python lists, so this is
    a charitable (fast) version of the script's per-agent function calls.
    """
    from sqtorch.envs import make_env

    env = make_env(env_name)
    G, A, L = env.G, env.A, env.L
    g_next, x_next = env.P_g.argmax(-1).tolist(), env.P_l.argmax(-1).tolist()
    r_g, r_l, gamma = env.r_g.tolist(), env.r_l.tolist(), env.gamma
    t0 = time.perf_counter()
    Q: dict[tuple, float] = {}
    for _ in range(sweeps):
        for g in range(G):
            for t in itertools.product(range(L), repeat=k):
                key = tuple(sorted(t))
                for a in range(A):
                    g2, step = g_next[g][a], x_next[g][a]
                    t2 = tuple(sorted(step[x] for x in t))
                    best = max(Q.get((g2, t2, a2), 0.0) for a2 in range(A))
                    Q[g, key, a] = r_g[g][a] + sum(r_l[g][a][x] for x in t) / k + gamma * best
    return time.perf_counter() - t0


def subprocess_run(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="k <= 5 on demand_response, k <= 8 on queue")
    p.add_argument("--m", type=int, default=10)
    p.add_argument("--T", type=int, default=50, help="sweeps (all of them run: a fixed workload)")
    p.add_argument("--warm", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--prime", action="store_true", help="with --one: a learn on queue first (torch warmed up)")
    p.add_argument("--one", nargs=2, metavar=("ENV", "K"), help=argparse.SUPPRESS)
    p.add_argument("--script", nargs=2, metavar=("ENV", "K"), help=argparse.SUPPRESS)
    p.add_argument("--max-k", type=int, default=7, help="largest k on demand_response")
    p.add_argument("--script-max-k", type=int, default=4, help="largest k for the paper script's learner")
    a = p.parse_args()
    if a.one:
        print(json.dumps(run_one(a.one[0], int(a.one[1]), a.m, a.T, seed=0, warm=a.warm, prime=a.prime)))
        return
    if a.script:
        print(json.dumps(dict(seconds=paper_script_learner(a.script[0], int(a.script[1])))))
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, m = {a.m}, T = {a.T}\n")
    from random_read import measure  # bench/ is sys.path[0] when run as a script

    rr = measure(512, torch.get_num_threads())
    print(f"random reads/s (512 MiB float64, {rr['threads']} threads): {rr['random_reads_per_s']:.3g}; "
          f"3 reads per line: {rr['line_shared_3_reads_per_s']:.3g}; in cache: {rr['in_cache_reads_per_s']:.3g}; "
          f"on huge pages: {rr['huge_page_reads_per_s']:.3g}\n")
    dr_k = range(1, 6 if a.quick else a.max_k + 1)
    queue_k = [1, 2, 4, 8] if a.quick else [1, 2, 4, 8, 16, 24]
    rows = [subprocess_run(["--one", "demand_response", str(k), "--m", str(a.m), "--T", str(a.T)]) for k in dr_k]
    rows += [subprocess_run(["--one", "queue", str(k), "--m", str(a.m), "--T", str(a.T)]) for k in queue_k]
    for r in rows:
        r["read_fraction"] = r["sample_backups_per_s"] / rr["random_reads_per_s"]
        r["huge_read_fraction"] = r["sample_backups_per_s"] / rr["huge_page_reads_per_s"]
    cols = ["env", "k", "count_vectors", "entries", "T", "build_s", "iterate_s", "total_s", "peak_gib",
            "learn_peak_gib", "estimate_gib", "sample_backups_per_s", "read_fraction", "huge_read_fraction"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")

    print("\nSpeedup over the paper script's learner (re-implemented: L^k tuples, 1 deterministic next state,")
    print("10 sweeps), against sqtorch at the table's m and T and at the script's budget m = 1, T = 10")
    print(f"(first call of a fresh process; first call after one learn on queue; median of {WARM_CALLS} warm calls):\n")
    print("| env | k | script learner s | sqtorch s (m, T above) | ratio | sqtorch s (m=1, T=10) first call | ratio "
          "| first call, torch warmed | ratio | warm median | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for k in range(1, a.script_max_k + 1):
        ref = subprocess_run(["--script", "demand_response", str(k)])["seconds"]
        ours = next(r["total_s"] for r in rows if r["env"] == "demand_response" and r["k"] == k)
        same = subprocess_run(["--one", "demand_response", str(k), "--m", "1", "--T", "10", "--warm", str(WARM_CALLS)])
        primed = subprocess_run(["--one", "demand_response", str(k), "--m", "1", "--T", "10", "--prime"])["total_s"]
        first, warm = same["total_s"], same["warm_median_s"]
        cells = [f"{ref:.3g}", f"{ours:.3g}", f"{ref / ours:,.0f}x", f"{first:.3g}", f"{ref / first:,.0f}x",
                 f"{primed:.3g}", f"{ref / primed:,.0f}x", f"{warm:.3g}", f"{ref / warm:,.0f}x"]
        print(f"| demand_response | {k} | " + " | ".join(cells) + " |")


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


if __name__ == "__main__":
    main()
