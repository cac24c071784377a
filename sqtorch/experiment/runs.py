"""Run dirs: find them, tell complete from missing, load their policies (for evaluate.py).

A *run dir* is what ``train.py`` leaves: ``config.yaml`` (resolved), an artifact (``qtable.pt`` or
``checkpoints/final.ckpt``) and, written last, ``metrics.json``. A Hydra multirun dir holds one job
dir per job; a job dir without ``metrics.json`` or artifact is a *missing* job (it failed or was
killed): it is reported and the rest is evaluated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from sqtorch import metrics as M
from sqtorch.experiment.run import CONFIG, FINAL_CKPT, METRICS, QTABLE
from sqtorch.neural.deepsets import num_parameters
from sqtorch.neural.policy import DeepSetsPolicy
from sqtorch.tabular.qtable import QTable


class StudyError(ValueError):
    """A study input is unusable (no runs, wrong env, unloadable artifact): one line, fatal."""


@dataclass
class Run:
    """One trained policy and what it cost."""

    path: Path
    algo: str  # "deepsets" or "tabular m=<m>"
    env_name: str
    env_cfg: dict
    n: int
    k: int
    seed: int
    policy: Any
    learn_seconds: float
    size: int  # table entries (tabular) or parameters (DeepSets)


def job_dirs(root: Path) -> list[Path]:
    """Run dirs under ``root``: ``root`` itself or every dir holding a Hydra job (``.hydra``) or config."""
    if not root.is_dir():
        raise StudyError(f"runs: '{root}' is not a directory")
    found = {p.parent for p in root.rglob(CONFIG) if p.parent.name != ".hydra"}
    found |= {p.parent for p in root.rglob(".hydra") if p.is_dir()}
    return sorted(found)


def load_run(path: Path) -> Run:
    """Load one complete run dir; raises :class:`StudyError` if its artifact does not load."""
    cfg = OmegaConf.to_container(OmegaConf.load(path / CONFIG), resolve=True)
    metrics = json.loads((path / METRICS).read_text())
    algo = cfg["algo"]["name"]
    label = f"tabular m={cfg['algo']['m']}" if algo == "tabular" else algo
    try:
        if algo == "tabular":
            policy = QTable.load(path / QTABLE)
            size = policy.q.numel()
            seconds = metrics[M.TABULAR_LEARN_SECONDS] + metrics.get(M.TABULAR_BUILD_SECONDS, 0.0)
        else:
            policy = DeepSetsPolicy.from_checkpoint(path / FINAL_CKPT, k=cfg["k"])
            size = num_parameters(policy.net)
            seconds = metrics[M.TRAIN_WALL_SECONDS]
    except Exception as e:  # any load failure is fatal and reported in one line
        raise StudyError(f"{path}: the {algo} artifact does not load ({type(e).__name__}: {e})") from e
    env_name = cfg["env"].get("name") or cfg["env"].get("_target_", "?").rsplit(".", 1)[-1]
    return Run(path, label, env_name, cfg["env"], cfg["n"], cfg["k"], cfg["seed"], policy, seconds, size)


def is_complete(path: Path) -> str | None:
    """``None`` for a complete run dir, else why it is missing."""
    if not (path / METRICS).exists():
        return "no metrics.json (the job failed or was killed)"
    if not ((path / QTABLE).exists() or (path / FINAL_CKPT).exists()):
        return "no qtable.pt or checkpoints/final.ckpt"
    if not (path / CONFIG).exists():
        return "no config.yaml"
    return None


def collect(roots: list[Path], env: str | None = None) -> tuple[list[Run], list[dict]]:
    """Every complete run under ``roots`` and a list of missing jobs ``{path, reason}``."""
    dirs = [d for root in roots for d in job_dirs(Path(root))]
    if not dirs:
        raise StudyError(f"runs: no run dirs (config.yaml or .hydra/) under {[str(r) for r in roots]}")
    runs, missing = [], []
    for d in dirs:
        reason = is_complete(d)
        if reason is None:
            runs.append(load_run(d))
        else:
            missing.append({"path": str(d), "reason": reason})
    if not runs:
        raise StudyError(f"runs: none of the {len(dirs)} run dirs is complete, e.g. {missing[0]}")
    if env is not None:
        other = [r for r in runs if r.env_name != env]
        if other:
            raise StudyError(f"{other[0].path}: run is for env '{other[0].env_name}', but env = '{env}' was requested")
    return runs, missing
