"""Shared pieces of the standalone studies (bench/train_k_deploy_k.py, bench/queue_q50.py, bench/agent_types.py).

Plain Python on the library API, no Hydra: train a DeepSets policy with Lightning
(:class:`sqtorch.neural.module.SubsampleQModule`, docs/model.md §3), evaluate policies on the full
n-agent system with common random numbers (docs/model.md §5), write ``results.csv`` and a README.
"""

from __future__ import annotations

import csv
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

from sqtorch.neural import DeepSetsPolicy
from sqtorch.neural.data import DataConfig

ROOT = Path(__file__).resolve().parents[1]


def train_deepsets(
    env_cfg: dict,
    n: int,
    k: int,
    steps: int,
    seed: int = 0,
    data: DataConfig | None = None,
    max_seconds: float | None = None,
    **algo,
) -> tuple[DeepSetsPolicy, float]:
    """Train the DeepSets Q-network at k for ``steps`` optimizer steps (no validation, no files).

    Returns the greedy policy (mean pooling: ``DeepSetsPolicy(policy.net, k2)`` deploys it at any
    k2) and the training wall time in seconds. The device is Lightning's ``auto`` (a GPU if present).
    ``max_seconds`` stops training at that wall time (Lightning's ``max_time``) even before ``steps``.
    """
    from datetime import timedelta

    import lightning.pytorch as pl

    from sqtorch.neural.config import DeepSetsConfig
    from sqtorch.neural.module import SubsampleQModule

    cfg = DeepSetsConfig(max_steps=steps, data=data or DataConfig(), **algo)
    pl.seed_everything(seed, verbose=False)
    module = SubsampleQModule(env_cfg, n, k, cfg, {"reference": "none"}, seed)
    trainer = pl.Trainer(
        accelerator="auto", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
        max_time=None if max_seconds is None else timedelta(seconds=max_seconds),
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module)
    wall = time.perf_counter() - t0
    return DeepSetsPolicy(module.net.eval().cpu(), k), wall


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(key for r in rows for key in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def markdown_table(rows: list[dict], cols: list[str], fmt: dict[str, str] | None = None) -> str:
    fmt = fmt or {}

    def cell(r: dict, c: str) -> str:
        v = r.get(c, "")
        if isinstance(v, float):
            return format(v, fmt.get(c, ".4g"))
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r, c) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def machine_line() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} CPUs "
        f"({platform.machine()}), {dev}; load average at the end {load} (shared machine)"
    )


def command_line() -> str:
    return "PYTHONPATH=. python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
