"""Do the local states matter on ``tcl`` (docs/model.md §4.5)? Two heuristic policies, compared with CRN.

*price-only*: a fixed offset per price level (the best of all ``A^G`` tables, searched on a separate
seed). *tracking*: hold the mean temperature of the k sampled units at a target per price level
(largest offset below the target when the sampled mean is above it, the next one up otherwise);
the targets are searched on the same separate seed at k = 8. Then ``compare_mc`` (common random
numbers) of tracking at k = 1 .. n against the best table on a fresh seed: if the gain grows with
k, the best offset depends on the temperature distribution and k matters.

    PYTHONPATH=. python bench/tcl_heuristics.py --threads 1
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from sqtorch.envs import build_env
from sqtorch.evaluation import compare_mc, evaluate_mc


class PriceOnly:
    """Offset index ``table[s_g]``, whatever the sampled units."""

    def __init__(self, table: tuple[int, ...], k: int = 1) -> None:
        self.table, self.k = torch.tensor(table), k

    def act(self, s_g: torch.Tensor, s_sub: torch.Tensor) -> torch.Tensor:
        return self.table[s_g]


class Tracking:
    """Hold the sampled mean temperature at ``targets[s_g]`` with the two offsets around it."""

    def __init__(self, env, targets: tuple[float, ...], k: int) -> None:
        self.targets, self.k = torch.tensor(targets, dtype=torch.float64), k
        self.offsets, self.theta_set = torch.tensor(env.offsets, dtype=torch.float64), env.theta_set

    def act(self, s_g: torch.Tensor, s_sub: torch.Tensor) -> torch.Tensor:
        target = self.targets[s_g]
        below = (self.offsets[None, :] <= (target - self.theta_set)[:, None]).sum(1) - 1
        below = below.clamp(0, len(self.offsets) - 2)
        hot = s_sub[..., 0].double().mean(1) > target
        return torch.where(hot, below, below + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    env, n = build_env("tcl"), args.n
    t0 = time.perf_counter()
    search = dict(num_initial=16, rollouts=8, horizon=100, seed=1, initial_seed=1)
    tables = itertools.product(range(env.A), repeat=env.G)
    best_table = max(tables, key=lambda tb: evaluate_mc(env, PriceOnly(tb), n, **search).mean)
    grid = [t for t in itertools.product((19.5, 20.0, 20.5, 21.0, 21.5, 22.0), repeat=env.G) if list(t) == sorted(t)]
    best_targets = max(grid, key=lambda t: evaluate_mc(env, Tracking(env, t, 8), n, **search).mean)
    final = dict(num_initial=32, rollouts=16, seed=0, initial_seed=0)
    base = evaluate_mc(env, PriceOnly(best_table), n, **final)
    print("## `tcl`: tracking the sampled temperatures vs the best price-only offsets (`bench/tcl_heuristics.py`)\n")
    print(f"Command: `PYTHONPATH=. python bench/tcl_heuristics.py --n {n} --threads {args.threads}`\n")
    print(f"tcl defaults (offsets {env.offsets} °C, prices {env.prices} $/kWh, gamma {env.gamma}), n = {n}; "
          f"search on seed 1 (16 x 8 rollouts, H = 100), evaluation on seed 0: 32 initial states x 16 rollouts, "
          f"H = {base.horizon}. Best price-only table (offset index per price level): {best_table}, "
          f"V = {base.mean:.4f} +- {base.ci95:.4f}. Tracking targets (°C per price level): {best_targets}.\n")
    print("| k | V(tracking) | V(tracking) - V(price-only), paired (CRN) |\n|---|---|---|")
    for k in sorted({1, 2, 4, 8, 16, 32, n}):
        if k > n:
            continue
        d = compare_mc(env, Tracking(env, best_targets, k), PriceOnly(best_table), n, **final)
        print(f"| {k} | {d.a.mean:.4f} +- {d.a.ci95:.4f} | **{d.mean_diff:+.4f} +- {d.ci95:.4f}** |", flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s in all.\n")


if __name__ == "__main__":
    main()
