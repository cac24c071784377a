"""Run dirs: find them, tell complete from missing and corrupt, load their policies (for evaluate.py).

A *run dir* is what ``train.py`` leaves: ``config.yaml`` (resolved), an artifact (``qtable.pt``,
``checkpoints/final.ckpt`` or the SB3 ``policy.zip`` + ``policy.json``) and, written last,
``metrics.json``. A Hydra multirun dir holds one job dir per job.

- A job dir without ``metrics.json`` or artifact is *missing* (it failed or was killed).
- A complete dir whose ``config.yaml``, ``metrics.json`` or artifact does not load is *corrupt*:
  it is skipped with the file and the reason (``strict=True``: :class:`StudyError` instead).
- The same dir reached twice (``runs=[X,X]``, or a multirun and one of its jobs) counts once.

Every run also carries its **sample cost** in one unit for every algorithm, *local-agent
transitions drawn from the model* (:meth:`sqtorch.experiment.registry.Algorithm.samples`), and its
learning wall time. Each run is loaded by the algorithm named in its ``config.yaml``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from sqtorch.experiment.outputs import CONFIG, METRICS
from sqtorch.experiment.registry import SUBSAMPLE_Q, get_algorithm


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
    deterministic: bool = False  # a rerun gives the same policy bit for bit


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
        env_cfg, n, seed = cfg["env"], int(cfg["n"]), int(cfg["seed"])
        int(cfg["k"])
    except (KeyError, TypeError, ValueError) as e:
        raise StudyError(f"{path / CONFIG}: corrupt config.yaml (missing or bad key {e})") from e
    try:
        algorithm = get_algorithm(algo)
    except ValueError as e:
        raise StudyError(f"{path / CONFIG}: {e} (register it, e.g. through SQTORCH_PLUGINS)") from e
    try:
        loaded = algorithm.load(path, cfg, metrics)
        samples = algorithm.samples(cfg, metrics, loaded.size)
    except KeyError as e:
        raise StudyError(f"{path / METRICS}: corrupt metrics.json (no key {e})") from e
    except Exception as e:  # any load failure names the run and the artifact
        raise StudyError(f"{path}: the {algo} artifact does not load ({type(e).__name__}: {e})") from e
    env_name = env_cfg.get("name") or env_cfg.get("_target_", "?").rsplit(".", 1)[-1]
    return Run(path, loaded.label, env_name, env_cfg, n, loaded.k, seed, loaded.policy, loaded.learn_seconds,
               loaded.size, samples, loaded.kind, loaded.deterministic)


def is_complete(path: Path) -> str | None:
    """``None`` for a complete run dir (metrics.json, config.yaml and its algorithm's artifact), else why not.

    A config that does not parse or names an unregistered algorithm counts as complete here, so
    that :func:`load_run` reports it as corrupt with its reason.
    """
    if not (path / METRICS).exists():
        return "no metrics.json (the job failed or was killed)"
    if not (path / CONFIG).exists():
        return "no config.yaml"
    try:
        algorithm = get_algorithm(_read(path / CONFIG, "config.yaml")["algo"]["name"])
    except (StudyError, KeyError, TypeError, ValueError):
        return None
    if not (path / algorithm.artifact).exists():
        return f"no artifact ({algorithm.artifact})"
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
