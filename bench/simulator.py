"""Cost of the simulator protocol (docs/model.md §1.1) and speed of Algorithm 2 on the continuous ``tcl`` env.

1. Tensor envs, old vs new: ``evaluate_mc`` of a random QTable on ``queue`` (k = 8) and ``demand_response``
   (k = 4) at n = 10^4, rows x n = 2^20, 10 steps, timed in three trees: *old*, the package at ``--base`` (a
   commit before the protocol, extracted with ``git archive``); *new*, this tree (a GlobalLocalMDP takes
   the tensor path); *protocol*, this tree with the env seen only through the protocol methods (reward,
   local_step, global_step: the path of any user simulator). Each timing runs in its own process, the
   three alternate, ``--rounds`` rounds, medians reported; one table, one run.
   Then the same three in one process (``--inproc``): the old ``evaluate_mc`` is the base commit's
   ``sqtorch/evaluation/execution.py`` (``git show``) loaded as a module next to the new one, both on the
   same env object, alternating call by call (process CPU time, median of ``--rounds`` x 3 calls): what
   the evaluation loop itself costs, without the noise of separate processes.
2. ``tcl`` (continuous local states, d = 2) at n = 10^5: ``evaluate_mc`` agent-steps/s with a policy that
   reads the sampled temperatures (k = 8), 40 rows x 10 steps, with 1 and 2 torch threads (median of
   ``--rounds``).

    PYTHONPATH=. python bench/simulator.py --rounds 5 --out bench/RESULTS.md --append
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TENSOR_CASES = (("queue", 8), ("demand_response", 4))
N_TENSOR, ROWS_X_N, HORIZON = 10_000, 1 << 20, 10
N_TCL, TCL_ROWS = 100_000, 40


def best(fn, reps: int) -> tuple[float, float]:
    """Minimum wall-clock and minimum process CPU seconds of ``fn`` over ``reps`` calls."""
    wall, cpu = [], []
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return min(wall), min(cpu)


def one_tensor(env_name: str, k: int, mode: str, reps: int) -> tuple[float, float]:
    """Best-of-``reps`` seconds of one evaluate_mc call (in the tree on ``sys.path``)."""
    import torch

    from sqtorch.envs import make_env
    from sqtorch.evaluation import evaluate_mc
    from sqtorch.tabular.counts import num_counts
    from sqtorch.tabular.qtable import QTable

    env = make_env(env_name)
    gen = torch.Generator().manual_seed(0)
    policy = QTable(torch.randn(env.G, num_counts(k, env.L), env.A, generator=gen), k, env.L, env_name)
    sim = through(env) if mode == "protocol" else env
    rows = ROWS_X_N // N_TENSOR
    kw = dict(num_initial=4, rollouts=rows // 4, horizon=HORIZON, seed=0)
    evaluate_mc(sim, policy, N_TENSOR, **{**kw, "horizon": 2})
    return best(lambda: evaluate_mc(sim, policy, N_TENSOR, **kw), reps)


def through(env):
    """``env`` seen only through the protocol methods (reward, local_step, global_step): a user simulator's path."""
    from sqtorch.envs import Simulator

    class Through(Simulator):
        G, A, gamma, local, name = env.G, env.A, env.gamma, env.local, env.name

        def initial(self, n, batch, generator):
            return env.initial(n, batch, generator)

        def global_step(self, s_g, a_g, generator):
            return env.global_step(s_g, a_g, generator)

        def local_step(self, s_g, s_l, a_g, generator):
            return env.local_step(s_g, s_l, a_g, generator)

        def reward(self, s_g, s_l, a_g):
            return env.reward(s_g, s_l, a_g)

    return Through()


def inproc(base: str, calls: int) -> dict[str, tuple[float, float, float]]:
    """Median CPU seconds of old / new / protocol ``evaluate_mc`` in this process, per tensor env."""
    import importlib.util

    import torch

    from sqtorch.envs import make_env
    from sqtorch.evaluation import evaluate_mc
    from sqtorch.tabular.counts import num_counts
    from sqtorch.tabular.qtable import QTable

    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{base}:sqtorch/evaluation/execution.py"],
                         capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_execution.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_execution", path)
    old = importlib.util.module_from_spec(spec)
    sys.modules["old_execution"] = old
    spec.loader.exec_module(old)
    out = {}
    for name, k in TENSOR_CASES:
        env = make_env(name)
        gen = torch.Generator().manual_seed(0)
        policy = QTable(torch.randn(env.G, num_counts(k, env.L), env.A, generator=gen), k, env.L, name)
        rows = ROWS_X_N // N_TENSOR
        kw = dict(num_initial=4, rollouts=rows // 4, horizon=HORIZON, seed=0)
        runs = {"old": (old.evaluate_mc, env), "new": (evaluate_mc, env), "protocol": (evaluate_mc, through(env))}
        ref = old.evaluate_mc(env, policy, N_TENSOR, keep_returns=True, **kw).returns
        cpu: dict[str, list[float]] = {}
        for label, (fn, sim) in runs.items():
            assert torch.equal(fn(sim, policy, N_TENSOR, keep_returns=True, **kw).returns, ref), label
        for _ in range(calls):
            for label, (fn, sim) in runs.items():
                c = time.process_time()
                fn(sim, policy, N_TENSOR, **kw)
                cpu.setdefault(label, []).append(time.process_time() - c)
        out[name] = tuple(statistics.median(cpu[lab]) for lab in ("old", "new", "protocol"))
    return out


def one_tcl(reps: int) -> tuple[float, float]:
    import torch

    from sqtorch.envs import make_env
    from sqtorch.evaluation import evaluate_mc

    class ReadsTemperatures:
        k = 8

        def act(self, s_g, s_sub):
            return torch.where(s_sub[..., 0].mean(1) < 20.0, 2, 1)

    env, policy = make_env("tcl"), ReadsTemperatures()
    evaluate_mc(env, policy, 1000, num_initial=2, rollouts=2, horizon=2)
    return best(lambda: evaluate_mc(env, policy, N_TCL, num_initial=4, rollouts=TCL_ROWS // 4, horizon=HORIZON,
                                    seed=0), reps)


def child(tree: Path, args: list[str], threads: int) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *args, "--threads", str(threads)]
    out = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return float(res["seconds"]), float(res["cpu"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="ed0a0f6", help="commit of the old tree (before the protocol)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the tensor-env table")
    parser.add_argument("--out", default=None)
    parser.add_argument("--append", action="store_true")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        kind = args.child[0]
        if kind == "inproc":
            print(json.dumps(inproc(args.base, 3 * args.rounds)))
            return
        secs, cpu = one_tcl(2) if kind == "tcl" else one_tensor(args.child[1], int(args.child[2]), kind, 2)
        print(json.dumps({"seconds": secs, "cpu": cpu}))
        return
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.base, "sqtorch"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        trees = {"old": (old, "new"), "new": (ROOT, "new"), "protocol": (ROOT, "protocol")}
        times: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for r in range(args.rounds):
            for name, k in TENSOR_CASES:
                for label, (tree, mode) in trees.items():
                    times.setdefault((name, label), []).append(child(tree, [mode, name, str(k)], args.threads))
            for threads in (1, 2):
                times.setdefault(("tcl", str(threads)), []).append(child(ROOT, ["tcl"], threads))
            last = {key: f"{v[-1][0]:.3f}/{v[-1][1]:.3f}" for key, v in times.items()}
            print(f"round {r + 1}/{args.rounds}", last, flush=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "inproc", "--base", args.base,
               "--rounds", str(args.rounds), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
        same = json.loads(proc.stdout.strip().splitlines()[-1])
    med = {key: statistics.median(w for w, _ in v) for key, v in times.items()}
    med_cpu = {key: statistics.median(c for _, c in v) for key, v in times.items()}
    steps = ROWS_X_N // N_TENSOR // 4 * 4 * N_TENSOR * HORIZON
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        "## Simulator protocol: tensor envs old vs new, `tcl` at n = 10^5 (`bench/simulator.py`)\n",
        f"Command: `PYTHONPATH=. python bench/simulator.py --base {args.base} --rounds {args.rounds} "
        f"--threads {args.threads}`\n",
        f"torch {__import__('torch').__version__}, {os.cpu_count()} CPUs ({platform.machine()}), load average at "
        f"the end: {load}. Each number is the median over {args.rounds} rounds of the best of 2 calls in a fresh "
        f"process; old, new and protocol alternate within a round. *wall*: wall-clock; *CPU*: the process's CPU "
        f"time (with one thread less sensitive to other processes on the machine than the wall clock).\n",
        f"`evaluate_mc`, n = {N_TENSOR:,}, {ROWS_X_N // N_TENSOR // 4 * 4} rows, {HORIZON} steps, random QTable, "
        f"{args.threads} thread(s); agent-steps/s (ratio to old):\n",
        "| env | k | clock | old | new (tensor path) | protocol methods |", "|---|---|---|---|---|---|",
    ]
    for name, k in TENSOR_CASES:
        for clock, m in (("wall", med), ("CPU", med_cpu)):
            o, nw, p = (m[(name, lab)] for lab in ("old", "new", "protocol"))
            lines.append(f"| {name} | {k} | {clock} | {steps / o:.3g} | {steps / nw:.3g} (**{o / nw:.2f}x**) "
                         f"| {steps / p:.3g} (**{o / p:.2f}x**) |")
    lines += [
        "",
        f"The same in one process, old `evaluate_mc` loaded from `{args.base}` beside the new one, same env object, "
        f"alternating, median CPU seconds of {3 * args.rounds} calls each (returns checked bitwise equal first):\n",
        "| env | k | old | new (tensor path) | protocol methods |", "|---|---|---|---|---|",
        *(f"| {name} | {k} | {same[name][0]:.3f} s | {same[name][1]:.3f} s (**{same[name][0] / same[name][1]:.2f}x**) "
          f"| {same[name][2]:.3f} s (**{same[name][0] / same[name][2]:.2f}x**) |" for name, k in TENSOR_CASES),
    ]
    tcl_steps = TCL_ROWS * N_TCL * HORIZON
    lines += [
        "",
        f"`tcl`, n = {N_TCL:,}, {TCL_ROWS} rows x {HORIZON} steps, k = 8 (a policy reading the sampled "
        "temperatures), the whole Algorithm 2 loop:\n",
        "| torch threads | agent-steps/s (wall) | agent-steps per CPU-second |", "|---|---|---|",
        *(f"| {t} | **{tcl_steps / med[('tcl', str(t))]:.3g}** | {tcl_steps / med_cpu[('tcl', str(t))]:.3g} |"
          for t in (1, 2)),
        "",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a" if args.append else "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
