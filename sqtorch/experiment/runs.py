"""Run dirs: find them, tell complete from missing and corrupt, load their policies (for evaluate.py).

A *run dir* is what ``train.py`` leaves: ``config.yaml`` (resolved), an artifact (``qtable.pt``,
``checkpoints/final.ckpt`` or the SB3 ``policy.zip`` + ``policy.json``) and, written last,
``metrics.json``. A Hydra multirun dir holds one job dir per job.

- A job dir without ``metrics.json`` or artifact is *missing* (it failed or was killed).
- A complete dir whose ``config.yaml``, ``metrics.json`` or artifact does not load is *corrupt*:
  it is skipped with the file and the reason (``strict=True``: :class:`StudyError` instead).
- The same dir reached twice (``runs=[X,X]``, or a multirun and one of its jobs) counts once.

Every run also carries its **sample cost** in one unit for every algorithm, *local-agent
transitions drawn from the model* (:func:`local_transitions`), and its learning wall time.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from sqtorch import metrics as M
from sqtorch.baselines.config import ARTIFACT_STEM
from sqtorch.experiment.outputs import CONFIG, FINAL_CKPT, METRICS, QTABLE
from sqtorch.neural.deepsets import num_parameters
from sqtorch.neural.policy import DeepSetsPolicy
from sqtorch.tabular.qtable import QTable

SB3_ZIP = f"{ARTIFACT_STEM}.zip"
ARTIFACTS = (QTABLE, FINAL_CKPT, SB3_ZIP)
BASELINE, SUBSAMPLE_Q = "baseline", "subsample-q"


class StudyError(ValueError):
    """A study input is unusable (no runs, wrong env, a corrupt run with strict=true): one line, fatal."""


@dataclass
class Run:
    """One trained policy and what it cost."""

    path: Path
    algo: str  # "tabular m=<m>", "deepsets", "sb3 dqn counts", "sb3 ppo subsample", ...
    env_name: str
    env_cfg: dict
    n: int
    k: int  # agents the policy sees per step (n for the baselines' counts observation)
    seed: int
    policy: Any
    learn_seconds: float  # learning wall time
    size: int  # table entries (tabular) or parameters (DeepSets, SB3)
    samples: float = math.nan  # local-agent transitions drawn from the model (NaN: none, m = exact)
    kind: str = SUBSAMPLE_Q  # "subsample-q" or "baseline"


def local_transitions(cfg: dict, metrics: dict, size: int) -> float:
    """Local-agent transitions an algorithm drew from the model while learning (the study's sample unit).

    One unit for everyone: one local agent moved once by ``P_l`` (docs/model.md §1). Global-state
    draws are not counted (one per k or n local ones).

    - tabular, m samples: every entry ``(g, c, a)`` moves its k agents m times (docs/model.md §2):
      ``G N_k A * m * k`` = ``size * m * k``. ``m = exact`` draws none (NaN): it uses the kernels.
    - DeepSets: per optimizer step, ``batch_size * m`` successors of k agents, plus (``visited``)
      one step of the ``pool_size`` n-agent systems (docs/model.md §3).
    - SB3: every env step moves all n agents: ``env steps * n`` (``train/samples``).
    """
    algo, k, n = cfg["algo"], int(cfg["k"]), int(cfg["n"])
    name = algo["name"]
    if name == "tabular":
        return math.nan if algo["m"] == "exact" else float(size * int(algo["m"]) * k)
    if name == "deepsets":
        per_step = algo["batch_size"] * algo["m"] * k
        if algo["data"]["state_dist"] == "visited":
            per_step += algo["data"]["pool_size"] * n
        return float(metrics[M.TRAIN_GLOBAL_STEP] * per_step)
    return float(metrics[M.TRAIN_SAMPLES])


def job_dirs(root: Path) -> list[Path]:
    """Run dirs under ``root``: ``root`` itself or every dir holding a Hydra job (``.hydra``) or config."""
    if not root.is_dir():
        raise StudyError(f"runs: '{root}' is not a directory")
    found = {p.parent for p in root.rglob(CONFIG) if p.parent.name != ".hydra"}
    found |= {p.parent for p in root.rglob(".hydra") if p.is_dir()}
    return sorted(found)


def _read(path: Path, what: str) -> dict:
    """``config.yaml`` / ``metrics.json`` as a dict; :class:`StudyError` naming the file if it does not parse."""
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text())
        else:
            data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as e:  # a torn or hand-edited file: name it
        raise StudyError(f"{path}: corrupt {what} ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict):
        raise StudyError(f"{path}: corrupt {what} (expected a mapping, got {type(data).__name__})")
    return data


def load_run(path: Path) -> Run:
    """Load one complete run dir; raises :class:`StudyError` naming the file that does not load."""
    cfg = _read(path / CONFIG, "config.yaml")
    metrics = _read(path / METRICS, "metrics.json")
    try:
        algo = cfg["algo"]["name"]
        env_cfg, n, k, seed = cfg["env"], int(cfg["n"]), int(cfg["k"]), int(cfg["seed"])
    except (KeyError, TypeError, ValueError) as e:
        raise StudyError(f"{path / CONFIG}: corrupt config.yaml (missing or bad key {e})") from e
    kind = SUBSAMPLE_Q
    try:
        if algo == "tabular":
            label = f"tabular m={cfg['algo']['m']}"
            policy = QTable.load(path / QTABLE)
            size = policy.q.numel()
            seconds = metrics[M.TABULAR_LEARN_SECONDS] + metrics.get(M.TABULAR_BUILD_SECONDS, 0.0)
        elif algo == "deepsets":
            label = algo
            policy = DeepSetsPolicy.from_checkpoint(path / FINAL_CKPT, k=k)
            size = num_parameters(policy.net)
            seconds = metrics[M.TRAIN_WALL_SECONDS]
        else:  # SB3 baselines (optional extra)
            from sqtorch.baselines.sb3 import SB3Policy

            policy = SB3Policy.load(path / SB3_ZIP)
            label, kind, k = f"sb3 {policy.algo} {policy.obs}", BASELINE, policy.k
            size = policy.num_parameters()
            seconds = metrics[M.TRAIN_WALL_SECONDS]
        samples = local_transitions(cfg, metrics, size)
    except KeyError as e:
        raise StudyError(f"{path / METRICS}: corrupt metrics.json (no key {e})") from e
    except Exception as e:  # any load failure names the run and the artifact
        raise StudyError(f"{path}: the {algo} artifact does not load ({type(e).__name__}: {e})") from e
    env_name = env_cfg.get("name") or env_cfg.get("_target_", "?").rsplit(".", 1)[-1]
    return Run(path, label, env_name, env_cfg, n, k, seed, policy, float(seconds), size, samples, kind)


def is_complete(path: Path) -> str | None:
    """``None`` for a complete run dir, else why it is missing."""
    if not (path / METRICS).exists():
        return "no metrics.json (the job failed or was killed)"
    if not any((path / a).exists() for a in ARTIFACTS):
        return f"no artifact ({', '.join(ARTIFACTS)})"
    if not (path / CONFIG).exists():
        return "no config.yaml"
    return None


def collect(
    roots: list[Path], env: str | None = None, strict: bool = False
) -> tuple[list[Run], list[dict], list[dict]]:
    """Every complete run under ``roots`` (each dir once), missing jobs and corrupt runs (``{path, reason}``).

    A corrupt run is skipped and listed, or with ``strict`` raises :class:`StudyError`.
    """
    dirs = list(dict.fromkeys(d.resolve() for root in roots for d in job_dirs(Path(root))))
    if not dirs:
        raise StudyError(f"runs: no run dirs (config.yaml or .hydra/) under {[str(r) for r in roots]}")
    runs, missing, skipped = [], [], []
    for d in dirs:
        reason = is_complete(d)
        if reason is not None:
            missing.append({"path": str(d), "reason": reason})
            continue
        try:
            runs.append(load_run(d))
        except StudyError as e:
            if strict:
                raise StudyError(f"{e} (strict=true)") from e
            skipped.append({"path": str(d), "reason": str(e)})
    if not runs:
        first = (missing + skipped)[0]
        raise StudyError(f"runs: none of the {len(dirs)} run dirs is usable, e.g. {first['path']}: {first['reason']}")
    if env is not None:
        other = [r for r in runs if r.env_name != env]
        if other:
            raise StudyError(f"{other[0].path}: run is for env '{other[0].env_name}', but env = '{env}' was requested")
    return runs, missing, skipped
