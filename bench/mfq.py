"""Benchmark of SUBSAMPLE-MFQ (docs/model.md §7): learning time and memory vs k, execution vs n.

Every case runs in its own subprocess, so its peak resident memory is its own: the peak is reset
(``/proc/self/clear_refs``) after the imports and the env are built, and the table reports the
growth of the peak resident set over the resident set at that point, next to ``mfq_memory_gib``
(learning) or the agent-state memory ``8 B n`` (execution). One torch thread.

- ``learn``: ``formation`` (L = 3, Al = 3, G = A = 5), k = 3..7, exact and m = 10.
- ``exec``: Algorithm 2 on ``formation`` at n = 14 .. 10^5 with the k = 3 greedy policy,
  16 rows x 10 steps: agent-steps per second.

    PYTHONPATH=. python bench/mfq.py        # prints a markdown section for bench/RESULTS.md

``--gaps`` instead prints the exact optimality gap ``V*(s) - V^{pi_k}(s)`` of Algorithm 2 on
``formation`` at n = 4, 6, 8 for every k (greedy policy of the exact ``Q_k``): its maximum over
states and its mean over uniform initial states ``(s_g, s_1..s_n)``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import torch

KS = (3, 4, 5, 6, 7)
NS = (14, 1_000, 10_000, 100_000, 1_000_000)


def _rss_gib(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 2**20
    return float("nan")


def _reset_peak() -> float:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _rss_gib("VmRSS:")


def one(case: str, arg: str, m: str) -> dict:
    torch.set_num_threads(1)
    from sqtorch.envs.local_actions import formation
    from sqtorch.evaluation.mfq_execution import evaluate_mfq_mc
    from sqtorch.tabular.mfq import learn_mfq, mfq_memory_gib
    from sqtorch.tabular.mfq_policy import MFQPolicy

    env = formation()
    if case == "learn":
        k, mm = int(arg), (m if m == "exact" else int(m))
        MFQPolicy.from_table(learn_mfq(env, 2, m=mm).table)  # torch's first-call allocations happen here
        base = _reset_peak()
        t = time.perf_counter()
        res = learn_mfq(env, k, m=mm)
        MFQPolicy.from_table(res.table)
        sec = time.perf_counter() - t
        return dict(entries=res.table.q.numel(), sweeps=res.iterations, seconds=sec,
                    peak=_rss_gib("VmHWM:") - base, estimate=mfq_memory_gib(env, k, mm))
    n = int(arg)
    policy = MFQPolicy.from_table(learn_mfq(env, 3).table)
    evaluate_mfq_mc(env, policy, 14, num_initial=2, rollouts=2, horizon=2)  # warm-up
    base = _reset_peak()
    t = time.perf_counter()
    res = evaluate_mfq_mc(env, policy, n, num_initial=16, rollouts=1, horizon=10)
    sec = time.perf_counter() - t
    return dict(seconds=sec, rate=16 * 10 * n / sec, peak=_rss_gib("VmHWM:") - base, mean=res.mean)


def run(case: str, arg: object, m: str = "-") -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", case, str(arg), m], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    print("### Learning, `formation` (G = A = 5, L = Al = 3), one thread\n")
    print("| k | m | entries G·A·C(k+8, k) | sweeps | seconds (incl. greedy tables) | peak RSS growth GiB "
          "| estimate GiB |")
    print("|---|---|---|---|---|---|---|")
    for k in KS:
        for m in ("exact", "10"):
            r = run("learn", k, m)
            print(f"| {k} | {m} | {r['entries']:,} | {r['sweeps']} | {r['seconds']:.3f} | {r['peak']:.4f} | "
                  f"{r['estimate']:.4f} |")
    print("\n### Execution (Algorithm 2), `formation`, k = 3, 16 rows x 10 steps, one thread\n")
    print("| n | seconds | agent-steps/s | peak RSS growth GiB | GiB per 1e5 agents x row |")
    print("|---|---|---|---|---|")
    for n in NS:
        r = run("exec", n)
        print(f"| {n:,} | {r['seconds']:.3f} | {r['rate']:.3g} | {r['peak']:.4f} | {r['peak'] / (16 * n) * 1e5:.4f} |")


def gaps() -> None:
    import math

    from sqtorch.envs.local_actions import formation
    from sqtorch.evaluation.mfq import optimal_value_mfq, policy_value_mfq
    from sqtorch.tabular.counts import all_counts
    from sqtorch.tabular.mfq import learn_mfq
    from sqtorch.tabular.mfq_policy import MFQPolicy

    torch.set_num_threads(1)
    env = formation()
    print("### Exact gaps of Algorithm 2, `formation` (greedy policy of the exact Q_k)\n")
    print("| n | k | max gap | mean gap (uniform s0) | seconds |")
    print("|---|---|---|---|---|")
    for n in (4, 6, 8):
        C = all_counts(n, env.L)
        w = torch.tensor([math.factorial(n) / math.prod(math.factorial(c) for c in row) for row in C.tolist()])
        w = (w / env.L**n).double() / env.G  # probability of each (g, C) under uniform agent states
        V_star = optimal_value_mfq(env, n)
        for k in range(1, n + 1):
            t = time.perf_counter()
            gap = V_star - policy_value_mfq(env, n, MFQPolicy.from_table(learn_mfq(env, k, tol=1e-12).table))
            sec = time.perf_counter() - t
            print(f"| {n} | {k} | {gap.max().item():.3g} | {(gap * w).sum().item():.3g} | {sec:.2f} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--gaps":
        gaps()
    elif len(sys.argv) > 1 and sys.argv[1] == "--one":
        print(json.dumps(one(*sys.argv[2:5])))
    else:
        main()
