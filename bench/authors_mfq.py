"""Benchmark: SUBSAMPLE-MFQ learning time vs k, sqtorch beside the authors' public script (docs/results.md).

    python bench/authors_mfq.py --authors-dir PATH [--k 2 3 4 5 6 7] [--m 10] [--T 100]

PATH is a checkout of github.com/emiletimothy/Mean-Field-Subsample-Q-Learning (not part of sqtorch;
its ``centralized_training.Q_function`` is imported from there, its ``config.json`` functions are
defined the way its ``environment.py`` does). Equal work: the same env (its example, sqtorch's
``formation``), the same m next-state samples per update and the same T sweeps, one process, one
thread. For each k it prints the wall time of the authors' ``Q_function(...).learn(T)`` and of
``sqtorch.tabular.mfq.learn_mfq(formation(), k, m, T, stop_early=False)`` (exactly T sweeps; both
times include building the tables), and the table sizes.
The two learners do not compute the same thing (docs/results.md: their table pairs state counts with
action counts separately); the timing is of each as published.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path

import torch

from sqtorch.envs import formation
from sqtorch.tabular.mfq import learn_mfq


def authors_learner(path: Path):
    """``(Q_function, kwargs)`` built from the authors' checkout the way their environment.py builds them."""
    sys.path.insert(0, str(path))
    from centralized_training import Q_function  # noqa: PLC0415 - the reference's module, from its checkout

    config = json.loads((path / "config.json").read_text())
    env = config["environment"]
    funcs: dict = {}
    for lines in env["functions"].values():
        exec("\n".join(lines), funcs)  # noqa: S102 - their config defines the functions as code
    kwargs = dict(
        state_spaces=[env["local_agent"]["state_space"], env["global_agent"]["state_space"]],
        action_spaces=[env["local_agent"]["action_space"], env["global_agent"]["action_space"]],
        transition_system=[funcs["global_agent_transition"], funcs["local_agent_transition"]],
        reward_system=[funcs["global_agent_reward"], funcs["local_agent_reward"]],
        gamma=config["simulation"]["discount_factor"],
    )
    return Q_function, kwargs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--authors-dir", type=Path, required=True)
    ap.add_argument("--k", type=int, nargs="+", default=[2, 3, 4, 5, 6, 7])
    ap.add_argument("--m", type=int, default=10)
    ap.add_argument("--T", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    Q_function, kwargs = authors_learner(args.authors_dir.resolve())
    env = formation()
    print(f"| k | authors: learn(T = {args.T}) s | authors: table | sqtorch: learn_mfq(m = {args.m}, T = {args.T}) s "
          "| sqtorch: table | ratio |")
    print("|---|---|---|---|---|---|")
    for k in args.k:
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a line per sweep
            q = Q_function(n=k, samples=args.m, **kwargs)  # builds its tables (counted: part of its learning)
            q.learn(steps=args.T)
        t_authors = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = learn_mfq(env, k, args.m, T=args.T, seed=0, stop_early=False)
        t_ours = time.perf_counter() - t0
        print(f"| {k} | {t_authors:.2f} | {q.Q.size:,} | {t_ours:.3f} (sweeps {res.iterations}) | "
              f"{res.table.q.numel():,} | {t_authors / t_ours:.0f}x |", flush=True)


if __name__ == "__main__":
    main()
