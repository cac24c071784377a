"""Benchmark of Algorithm 2 execution (docs/model.md §2, §5) and of exact V* (docs/model.md §5).

Agent-steps per second of the Monte Carlo evaluation loop (fresh k-subset, QTable greedy action,
full n-agent transition and reward, batched rollouts) for n in {1e3, 1e4, 1e5} on queue and
demand_response, with the pieces timed separately and against the previous simulator (inverse-CDF
loop over local states, top-k subsets). Timings are the minimum over repetitions, so load from
other processes inflates them less. Also the time of exact V* for queue at n = 10.

    PYTHONPATH=. python bench/execution.py   # prints a markdown section for bench/RESULTS.md

``--scale`` instead measures ``evaluate_mc`` itself at n in {1e3, 1e4, 1e5, 1e6} for a tabular
and a DeepSets policy, each (policy, n, device) in its own subprocess so that its peak memory
(resident set size on CPU, ``torch.cuda.max_memory_allocated`` on a GPU) is its own; on CUDA too
when a GPU is present:

    PYTHONPATH=. python bench/execution.py --scale --threads 1 --out bench/RESULTS.md --append
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from sqtorch.envs import make_env
from sqtorch.envs.simulator import (
    cdf_columns,
    make_generator,
    sample_categorical,
    sample_initial_state,
    sample_subset,
    step,
)
from sqtorch.evaluation import compare_mc, evaluate_mc, initial_states
from sqtorch.evaluation.exact import optimal_value, policy_value, value_at
from sqtorch.evaluation.execution import simulate_returns
from sqtorch.tabular.counts import num_counts
from sqtorch.tabular.exact import count_kernel, optimal_q
from sqtorch.tabular.qtable import QTable

CASES = (("queue", 8), ("demand_response", 4))  # demand_response at k = 8: 10.5M count vectors
NS = (1_000, 10_000, 100_000)
ELEMS = 1 << 20  # agent entries per batch: B = ELEMS // n rollouts


def best_time(fn: Callable[[], object], reps: int) -> float:
    """Minimum wall time of ``fn`` over ``reps`` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def legacy_step(env, s_g, s_l, a_g, gen, cdf_g, cdf_l):
    """The simulator before this benchmark: inverse-CDF loop over L, 3-index reward gather."""
    r = env.reward(s_g, s_l, a_g)
    ga = s_g * env.A + a_g
    u_l = torch.rand(s_l.shape, generator=gen, dtype=torch.float64)
    s_l_next = sample_categorical(cdf_l, ga[:, None] * env.L + s_l, u_l)
    u_g = torch.rand(s_g.shape, generator=gen, dtype=torch.float64)
    return sample_categorical(cdf_g, ga, u_g), s_l_next, r


def legacy_subset(n: int, k: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(batch, n, generator=gen).topk(k, dim=1, sorted=False).indices


def bench_case(name: str, k: int, n: int, horizon: int, reps: int) -> dict:
    env = make_env(name)
    B = max(1, ELEMS // n)
    gen = make_generator(0)
    q = torch.randn(env.G, num_counts(k, env.L), env.A, generator=gen)  # speed ignores values
    policy = QTable(q, k, env.L, name)
    s_g, s_l = sample_initial_state(env, n, B, gen)
    a_g = torch.ones(B, dtype=torch.int64)
    cdf_g, cdf_l = cdf_columns(env.P_g), cdf_columns(env.P_l)
    steps = B * n
    def loop() -> torch.Tensor:
        gens = make_generator(1), make_generator(2)
        return simulate_returns(env, policy, s_g, s_l, horizon, *gens)

    t_loop = best_time(loop, reps)
    t_step = best_time(lambda: step(env, s_g, s_l, a_g, gen, cdf_g, cdf_l), reps * 3)
    t_old = best_time(lambda: legacy_step(env, s_g, s_l, a_g, gen, cdf_g, cdf_l), reps * 3)
    t_sub = best_time(lambda: s_l.gather(1, sample_subset(n, k, B, gen)), reps * 3)
    t_sub_old = best_time(lambda: s_l.gather(1, legacy_subset(n, k, B, gen)), reps * 3)
    return {
        "env": name, "k": k, "n": n, "B": B,
        "loop": steps * horizon / t_loop, "step": steps / t_step, "old_step": steps / t_old,
        "subset": steps / t_sub, "old_subset": steps / t_sub_old,
    }


def bench_exact(reps: int) -> tuple[float, float, float]:
    env = make_env("queue")
    times_k, times_v = [], []
    for _ in range(reps):
        t = time.perf_counter()
        K = count_kernel(env, 10)
        t1 = time.perf_counter()
        optimal_value(env, 10, kernel=K)
        times_k.append(t1 - t)
        times_v.append(time.perf_counter() - t1)
    total = min(a + b for a, b in zip(times_k, times_v, strict=True))
    return min(times_k), min(times_v), total


def bench_crn() -> str:
    """Paired (common-random-number) MC differences of optimal_q policies vs exact differences."""
    env, n = make_env("queue"), 10
    K = count_kernel(env, n)
    s_g, s_l = initial_states(env, n, 64, seed=0)  # the default initial states of evaluate_mc
    tables = {k: optimal_q(env, k, tol=1e-9) for k in (3, 5, 6)}
    exact = {
        k: float(value_at(policy_value(env, n, t.greedy(), k, kernel=K), s_g, s_l).mean())
        for k, t in tables.items()
    }
    lines = [
        "| pair | exact difference | paired MC (CRN) | unpaired CIs (each policy) |",
        "|---|---|---|---|",
    ]
    for a, b in ((5, 6), (3, 5)):
        t = time.perf_counter()
        d = compare_mc(env, tables[b], tables[a], n, num_initial=64, rollouts=512, seed=0)
        secs = time.perf_counter() - t
        lines.append(
            f"| V(pi_{b}) - V(pi_{a}) | {exact[b] - exact[a]:.4f} | {d.mean_diff:.4f} +- "
            f"{d.ci95:.4f} | +- {d.a.ci95:.4f}, +- {d.b.ci95:.4f} ({secs:.1f} s for both) |"
        )
    return (
        "Common random numbers, queue defaults, n = 10, 64 initial states x 512 rollouts, "
        "H = 88, pi_k = greedy of `optimal_q(env, k)`; exact values by `policy_value`:\n\n"
        + "\n".join(lines) + "\n\n"
    )


def render(
    rows: list[dict], exact: tuple[float, float, float], crn: str, args: argparse.Namespace
) -> str:
    head = (
        "| env | k | n | rollouts B | loop agent-steps/s | step | old step | step speedup "
        "| subset draw | old subset | subset speedup |\n" + "|---" * 11 + "|\n"
    )
    body = "".join(
        f"| {r['env']} | {r['k']} | {r['n']:,} | {r['B']} | **{r['loop']:.3g}** | {r['step']:.3g} "
        f"| {r['old_step']:.3g} | {r['step'] / r['old_step']:.1f}x | {r['subset']:.3g} "
        f"| {r['old_subset']:.3g} | {r['subset'] / r['old_subset']:.1f}x |\n"
        for r in rows
    )
    kern, vi, total = exact
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"## Execution benchmark, {torch.get_num_threads()} thread(s)\n\n"
        f"Command: `PYTHONPATH=. python bench/execution.py "
        f"--horizon {args.horizon} --reps {args.reps} --threads {args.threads} "
        f"--out {args.out}{' --append' if args.append else ''}`\n\n"
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), load average at the end: {load}.\n"
        f"Timings are minima over repetitions (other processes share this machine).\n\n"
        f"Rates are agent-steps per second (rollouts x agents per second). *loop*: the whole "
        f"Monte Carlo step of `evaluate_mc` (fresh k-subset, QTable greedy action, transition, "
        f"reward over all n, discounting), {args.horizon} steps. *step*: `simulator.step` alone; "
        f"*old*: the previous inverse-CDF step / top-k subsets. QTables are random "
        f"(speed does not depend on the values); demand_response uses k = 4 because k = 8 has "
        f"C(32, 8) = 10.5M count vectors.\n\n{head}{body}\n"
        f"Exact V* for queue at n = 10 (G * C(14, 4) = 4,004 lumped states): kernel "
        f"{kern:.2f} s + value iteration {vi:.2f} s = **{total:.2f} s** "
        f"(`count_kernel` + `optimal_value`, minimum over {args.reps} runs).\n\n{crn}"
    )


SCALE_NS = (1_000, 10_000, 100_000, 1_000_000)
SCALE_POLICIES = (("tabular", 8), ("deepsets", 16))
SCALE_ROWS_X_N = 1 << 22  # rollouts x agents simulated per evaluate_mc call (rows = this // n)


def _rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scale_one(kind: str, k: int, n: int, device: str, horizon: int, reps: int) -> dict:
    """agent-steps/s and peak memory of ``evaluate_mc`` (queue, one policy, n agents) on ``device``."""
    from sqtorch.neural import DeepSetsPolicy, DeepSetsQ, NetConfig
    from sqtorch.neural.deepsets import q_scale_of

    env = make_env("queue").to(device)
    gen = make_generator(0)
    if kind == "tabular":
        policy = QTable(torch.randn(env.G, num_counts(k, env.L), env.A, generator=gen), k, env.L, "queue")
    else:
        torch.manual_seed(0)
        net = DeepSetsQ(env.G, env.L, env.A, NetConfig(), q_scale=q_scale_of(env)).eval().to(device)
        policy = DeepSetsPolicy(net, k)
    rows = max(1, SCALE_ROWS_X_N // n)
    num_initial = min(rows, 8)
    rollouts = max(1, rows // num_initial)

    def run() -> None:
        evaluate_mc(env, policy, n, num_initial=num_initial, rollouts=rollouts, horizon=horizon, seed=0)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    evaluate_mc(env, policy, min(n, 100), num_initial=2, rollouts=2, horizon=2)  # load code paths
    base = _rss_mib()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t = best_time(run, reps)
    out = {
        "policy": kind, "k": k, "n": n, "device": device, "rows": num_initial * rollouts, "horizon": horizon,
        "agent_steps_per_s": num_initial * rollouts * n * horizon / t, "seconds": t,
        "rss_base_mib": base, "rss_peak_mib": _rss_mib(),
    }
    if device.startswith("cuda"):
        out["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_scale(args: argparse.Namespace) -> str:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for kind, k in SCALE_POLICIES:
            for n in SCALE_NS:
                cmd = [
                    sys.executable, __file__, "--scale-one", kind, str(k), str(n), device,
                    "--horizon", str(args.horizon), "--reps", str(args.reps), "--threads", str(args.threads),
                ]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(rows[-1], flush=True)
    head = (
        "| device | policy | k | n | rollouts (rows) | agent-steps/s | s per call | peak RSS MiB "
        "(above start) | GPU peak MiB |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['device']} | {r['policy']} | {r['k']} | {r['n']:,} | {r['rows']} | **{r['agent_steps_per_s']:.3g}** "
        f"| {r['seconds']:.2f} | {r['rss_peak_mib']:.0f} (+{r['rss_peak_mib'] - r['rss_base_mib']:.0f}) "
        f"| {format(r['gpu_peak_mib'], '.0f') if 'gpu_peak_mib' in r else '-'} |\n"
        for r in rows
    )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    gpu = (
        f"GPU: {torch.cuda.get_device_name(0)}."
        if torch.cuda.is_available()
        else "No GPU on this machine: no GPU numbers exist (run the same command on a CUDA machine)."
    )
    return (
        f"## Execution at scale: `evaluate_mc` at n = 10^3 .. 10^6 (`bench/execution.py --scale`)\n\n"
        f"Command: `PYTHONPATH=. python bench/execution.py --scale --horizon {args.horizon} --reps {args.reps} "
        f"--threads {args.threads}`\n\n"
        f"torch {torch.__version__}, {args.threads or torch.get_num_threads()} thread(s), {os.cpu_count()} CPUs, "
        f"load average at the end: {load}. {gpu}\n\n"
        f"`evaluate_mc` on `queue` (the whole Algorithm 2 loop: fresh k-subset, greedy action, full "
        f"n-agent transition, reward over all n), {args.horizon} steps, rows x n = 2^22 agents per call "
        f"(rows = initial states x rollouts: 4 rows at n = 10^6), best of {args.reps}. "
        f"Tabular: a random QTable at k = 8; DeepSets: an untrained default network at k = 16 (speed does "
        f"not depend on the weights). Each configuration runs in its own process; peak RSS is the "
        f"process's high-water mark (torch and Python included; in brackets the growth during the timed "
        f"calls). Memory is bounded by `max_batch_elems` (2^22 agent entries per simulated chunk) plus "
        f"the `[num_initial, n]` initial states: linear in n, nothing of size n x k x rows.\n\n"
        f"{head}{body}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--horizon", type=int, default=10, help="steps per timed loop")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (minimum is kept)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", default=None, help="also write the markdown section to this file")
    parser.add_argument("--append", action="store_true", help="append to --out instead of replacing")
    parser.add_argument("--scale", action="store_true", help="evaluate_mc at n = 1e3..1e6 (see the docstring)")
    parser.add_argument("--scale-one", nargs=4, metavar=("POLICY", "K", "N", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.scale_one:
        kind, k, n, device = args.scale_one
        print(json.dumps(scale_one(kind, int(k), int(n), device, args.horizon, args.reps)))
        return
    if args.scale:
        text = run_scale(args)
        print(text)
        if args.out:
            with open(args.out, "a" if args.append else "w") as f:
                f.write(text)
        return
    rows = []
    for name, k in CASES:
        for n in NS:
            rows.append(bench_case(name, k, n, args.horizon, args.reps))
            print({key: (f"{v:.3g}" if isinstance(v, float) else v) for key, v in rows[-1].items()})
    text = render(rows, bench_exact(args.reps), bench_crn(), args)
    print(text)
    if args.out:
        with open(args.out, "a" if args.append else "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
