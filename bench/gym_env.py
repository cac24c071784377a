"""Throughput of the Gymnasium interface (sqtorch.gym) beside the raw torch simulator.

Env steps per second (one env step = one global action and all n local transitions) of:
``sqtorch.envs.simulator.step`` on a batch of B systems (torch tensors in, torch tensors out), the
batched ``GlobalLocalVectorEnv`` with B envs (numpy actions in, numpy observations, rewards and
flags out, next-step autoreset at the default horizon), and the single ``GlobalLocalEnv`` (what
SB3's ``DummyVecEnv`` steps), at n = 10 and 1000. Minimum over repetitions, one torch thread.

    PYTHONPATH=. python bench/gym_env.py   # prints the markdown table of bench/RESULTS.md (Gymnasium section)
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import numpy as np
import torch

from sqtorch.envs import make_env
from sqtorch.envs.simulator import cdf_columns, make_generator, sample_initial_state, step
from sqtorch.gym import GlobalLocalEnv, GlobalLocalVectorEnv

CASES = (("queue", None), ("queue", 8), ("demand_response", None), ("demand_response", 8))  # (env, k)
NS = (10, 1000)


def best_rate(fn: Callable[[], object], steps: int, reps: int) -> float:
    """Env steps per second: ``steps`` over the minimum wall time of ``fn`` in ``reps`` runs."""
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return steps / best


def raw_rate(name: str, n: int, batch: int, T: int, reps: int) -> float:
    mdp = make_env(name)
    gen = make_generator(0)
    cdf_g = cdf_columns(mdp.P_g)
    s_g, s_l = sample_initial_state(mdp, n, batch, gen)
    a = torch.randint(mdp.A, (T, batch), generator=gen)

    def run() -> None:
        g, x = s_g, s_l
        for t in range(T):  # time steps
            g, x, _ = step(mdp, g, x, a[t], gen, cdf_g)

    return best_rate(run, T * batch, reps)


def vector_rate(name: str, n: int, k: int | None, batch: int, T: int, reps: int) -> float:
    obs = "counts" if k is None else "subsample"
    env = GlobalLocalVectorEnv(num_envs=batch, mdp=name, n=n, obs=obs, k=k)
    env.reset(seed=0)
    a = np.random.default_rng(0).integers(0, env.mdp.A, size=(T, batch))

    def run() -> None:
        for t in range(T):  # time steps
            env.step(a[t])

    return best_rate(run, T * batch, reps)


def single_rate(name: str, n: int, k: int | None, T: int, reps: int) -> float:
    obs = "counts" if k is None else "subsample"
    env = GlobalLocalEnv(name, n=n, obs=obs, k=k)
    env.reset(seed=0)
    a = np.random.default_rng(0).integers(0, env.mdp.A, size=T)

    def run() -> None:
        for t in range(T):  # time steps
            if env.step(int(a[t]))[3]:
                env.reset()

    return best_rate(run, T, reps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=200, help="env steps per timed run (vector and raw)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    B, T = args.batch, args.steps
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} torch thread(s), B = {B}, {T} steps per run, best of {args.reps}\n")
    print("| env | obs | n | raw `step` env steps/s (B) | vector env env steps/s (B) | vector / raw "
          "| vector env agent steps/s | single env steps/s |")
    print("|---|---|---|---|---|---|---|---|")
    raw: dict[tuple[str, int], float] = {}
    for name, k in CASES:
        for n in NS:
            if (name, n) not in raw:
                raw[name, n] = raw_rate(name, n, B, T, args.reps)
            vec = vector_rate(name, n, k, B, T, args.reps)
            one = single_rate(name, n, k, T, args.reps)
            obs = "counts" if k is None else f"subsample k={k}"
            print(f"| {name} | {obs} | {n} | {raw[name, n]:,.0f} | {vec:,.0f} | {vec / raw[name, n]:.2f} "
                  f"| {vec * n:.3g} | {one:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
