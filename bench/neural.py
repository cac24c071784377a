"""Benchmark: DeepSets SUBSAMPLE-Q training throughput vs k (docs/model.md §3).

    python bench/neural.py                       # k = 4, 16, 64 on queue and demand_response
    python bench/neural.py --quick               # fewer steps
    python bench/neural.py   # prints the table; --out FILE also writes it

For each k it reports, on the device it ran on (CUDA when available, else CPU):

* raw step: sample a batch from the generative model (``visited`` pool of n-agent systems
  advanced one step with the greedy policy, k-subsets, m successors per item) + TD target + loss
  + backward + Adam, timed outside Lightning;
* Lightning step: the same through ``Trainer.fit`` (logging every 10 steps, no validation,
  no checkpoints), wall time / steps after a warm-up fit;
* items/s = batch_size / step time (one item = one (s_g, s_Delta, a_g) with its m successors),
  transitions/s = items/s * m.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqtorch.neural.data import DataConfig, GenerativeSource  # noqa: E402
from sqtorch.neural.module import SubsampleQModule  # noqa: E402
from sqtorch.tabular.counts import counts_of  # noqa: E402

ENVS = {"queue": {"_target_": "sqtorch.envs.queue"}, "demand_response": {"_target_": "sqtorch.envs.demand_response"}}


def make_module(env: str, n: int, k: int, args: argparse.Namespace, max_steps: int) -> SubsampleQModule:
    return SubsampleQModule(
        ENVS[env],
        n=n,
        k=k,
        algo={
            "m": args.m,
            "batch_size": args.batch_size,
            "max_steps": max_steps,
            "net": {"hidden": args.hidden},
            "data": {"state_dist": "visited", "pool_size": 256},
        },
        eval={"reference": "none"},
    )


def raw_step_ms(env: str, n: int, k: int, args: argparse.Namespace, device: torch.device) -> float:
    """ms per optimizer step without Lightning."""
    module = make_module(env, n, k, args, args.steps).to(device)
    module.source = GenerativeSource(module.env.to(device), n, k, args.m, DataConfig("visited"), seed=0)
    opt = torch.optim.Adam(module.net.parameters(), lr=1e-3)
    L = module.env.L

    def step() -> None:
        b = module.source.sample(args.batch_size, module._greedy_fn)
        q = module.net.forward_counts(b.s_g, counts_of(b.s_sub, L))
        pred = q.gather(1, b.a_g[:, None])[:, 0]
        loss = module._loss(pred, module.td_target(b.r, b.g_next, b.c_next))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    best = float("inf")
    for _ in range(args.repeats):  # best of repeats: the machine may be shared
        sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync(device)
        best = min(best, (time.perf_counter() - t0) / args.steps * 1e3)
    return best


def lightning_step_ms(env: str, n: int, k: int, args: argparse.Namespace, device: torch.device) -> float:
    """ms per optimizer step through ``Trainer.fit`` (second fit, after a warm-up fit)."""
    import lightning.pytorch as pl

    times = []
    for steps in (10,) + (args.steps,) * args.repeats:
        module = make_module(env, n, k, args, steps)
        trainer = pl.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=1,
            max_steps=steps,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            log_every_n_steps=10,
        )
        t0 = time.perf_counter()
        trainer.fit(module)
        sync(device)
        times.append((time.perf_counter() - t0) / steps * 1e3)
    return min(times[1:])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ks", type=int, nargs="+", default=[4, 16, 64])
    p.add_argument("--n", type=int, default=64, help="agents of the n-agent system (>= max k)")
    p.add_argument("--envs", nargs="+", default=list(ENVS))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--m", type=int, default=8)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3, help="report the best of this many timings")
    p.add_argument("--quick", action="store_true", help="50 steps")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", default=None, help="write a markdown table here")
    args = p.parse_args()
    if args.quick:
        args.steps = 50
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    header = (
        f"device: {device.type} ({name}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads; n = {args.n}, batch {args.batch_size}, "
        f"m = {args.m}, hidden {args.hidden}, best of {args.repeats} x {args.steps} timed steps, "
        f"state_dist = visited; load average at start {os.getloadavg()[0]:.1f}"
    )
    rows = [
        "| env | k | raw ms/step | raw items/s | raw transitions/s | Lightning ms/step | Lightning items/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    print(header, flush=True)
    for env in args.envs:
        for k in args.ks:
            raw = raw_step_ms(env, args.n, k, args, device)
            lit = lightning_step_ms(env, args.n, k, args, device)
            ips = args.batch_size / raw * 1e3
            row = (
                f"| {env} | {k} | {raw:.2f} | {ips:,.0f} | {ips * args.m:,.0f} | {lit:.2f} "
                f"| {args.batch_size / lit * 1e3:,.0f} |"
            )
            rows.append(row)
            print(row, flush=True)
    if args.out:
        cmd = "python " + " ".join(shlex.quote(a) for a in sys.argv)
        text = (
            f"# DeepSets training throughput\n\nCommand: `{cmd}`\n\n{header}\n\n"
            + "\n".join(rows)
            + f"\n\nLoad average at the end: {os.getloadavg()[0]:.1f} (a shared machine: "
            "other processes compete for the cores; numbers are best-of-repeats).\n"
        )
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
