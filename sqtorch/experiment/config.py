"""From a composed Hydra config to typed settings, validated before anything is written.

The algorithm and evaluation settings are dataclasses that live beside the code that uses them:
each registered algorithm's config (:mod:`sqtorch.experiment.registry`, the Hydra options
``algo=<name>``) and :class:`~sqtorch.evaluation.reference.ValidationConfig` (``eval/default``),
so each default is written once, overrides are type-checked when Hydra composes, and unknown keys
are refused.
:func:`validate_config` then checks every range and builds the env, and raises :class:`ConfigError`
with a message that names the key, the bad value and the allowed range.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sqtorch.checks import check_int, check_k
from sqtorch.envs import build_env
from sqtorch.envs.base import GlobalLocalMDP
from sqtorch.envs.local_actions import LocalActionMDP
from sqtorch.envs.protocol import Simulator, check_simulator
from sqtorch.evaluation.reference import ValidationConfig
from sqtorch.experiment.registry import ALGORITHMS, Algorithm, check_env_kind, get_algorithm

DEVICES = ("cpu", "gpu", "cuda")  # Lightning's "auto" could pick Apple's MPS, which has no float64


def run_name() -> str:
    """This process's run dir name: ``<time>_p<pid>-<random>``, so that runs never share a directory.

    Under Slurm it is ``slurm-<job id>[_<array task>]`` instead, the same after a requeue, so a
    requeued job finds its own directory and resumes there (:mod:`sqtorch.experiment.slurm`).
    """
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if job:
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        return f"slurm-{job}" + (f"_{task}" if os.environ.get("SLURM_ARRAY_JOB_ID") and task else "")
    return f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_p{os.getpid()}-{secrets.token_hex(2)}"


RUN_NAME = run_name()  # computed once per process


class ConfigError(ValueError):
    """A config value is out of range; raised before anything is trained or written."""


def register_configs() -> None:
    """Register ``eval/default`` and the resolvers ``${sqtorch.run_name:}``, ``${sqtorch.accelerator:}``.

    The ``algo/<name>`` options are stored by :func:`sqtorch.experiment.registry.register_algorithm`.
    """
    if not OmegaConf.has_resolver("sqtorch.run_name"):
        OmegaConf.register_new_resolver("sqtorch.run_name", lambda: RUN_NAME)
    if not OmegaConf.has_resolver("sqtorch.accelerator"):  # trainer=default: the GPU when there is one
        OmegaConf.register_new_resolver("sqtorch.accelerator", lambda: "gpu" if torch.cuda.is_available() else "cpu")
    ConfigStore.instance().store(group="eval", name="default", node=ValidationConfig)


@dataclass
class RunSpec:
    """A validated run: typed settings and the env they describe."""

    algo: Any  # an instance of the algorithm's config dataclass (sqtorch.experiment.registry)
    eval: ValidationConfig
    env: Simulator | LocalActionMDP
    env_cfg: dict
    n: int
    k: int
    seed: int
    threads: int | None
    device: torch.device
    ckpt_path: str | None = None  # the checkpoint the run resumes from (validated by its algorithm)


def device_of(accelerator: Any) -> torch.device:
    """The torch device of ``trainer.accelerator``: only the CPU and CUDA are supported."""
    acc = str(accelerator).lower()
    if acc not in DEVICES:
        raise ConfigError(
            f"trainer.accelerator = '{accelerator}' is not supported; allowed: {list(DEVICES)} "
            "(trainer=default picks the GPU when there is one, else the CPU)"
        )
    if acc in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator = '{accelerator}' but no CUDA GPU is available "
            "(torch.cuda.is_available() is False); run with trainer=cpu (or trainer=default, "
            "which picks the GPU when there is one and the CPU otherwise)"
        )
    return torch.device("cpu" if acc == "cpu" else "cuda")


def _typed(node: Any, cls: type, key: str) -> Any:
    """``node`` as an instance of the dataclass ``cls`` (runs its range checks)."""
    try:
        if OmegaConf.is_config(node):
            node = OmegaConf.to_container(node, resolve=True)
        return cls(**node)
    except (ValueError, TypeError, OmegaConfBaseException) as e:
        raise ConfigError(f"{key}: {e}" if not str(e).startswith(key) else str(e)) from e


def validate_config(cfg: DictConfig) -> RunSpec:
    """Every check that can fail before training: ranges of every key, ``1 <= k <= n``, the env, the device,
    the checkpoint to resume from. Needs no Hydra run (``paths`` and ``hydra`` are not resolved)."""
    c = {key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
         for key in cfg if key not in ("paths", "hydra", "trainer", "callbacks", "logger")}
    c["trainer"] = {"accelerator": OmegaConf.select(cfg, "trainer.accelerator", default="cpu")}
    try:
        algorithm = get_algorithm((c.get("algo") or {}).get("name"))
    except ValueError as e:
        raise ConfigError(str(e)) from e
    algo = _typed(c["algo"], algorithm.config, "algo")
    ev = _typed(c.get("eval") or {}, ValidationConfig, "eval")
    try:
        if c.get("n") is None:
            raise ValueError("n is not set: the env preset sets it (e.g. 'n: 10' in conf/env/queue.yaml); "
                             "or pass n=<number of local agents>")
        n = check_int("n", c.get("n"), 1, "number of local agents")
        k = check_k(c.get("k"), n)
        seed = check_int("seed", c.get("seed"), 0, "a seed")
        threads = None if c.get("threads") is None else check_int("threads", c["threads"], 1, "torch CPU threads")
    except ValueError as e:
        raise ConfigError(str(e)) from e
    try:
        env = build_env(c["env"])
        check_env_kind(algorithm, env)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if not isinstance(env, (GlobalLocalMDP, LocalActionMDP)):
        _check_simulator_run(algorithm, env, n)
    try:
        algorithm.check_env(algo, env, n, k)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    device = device_of(c["trainer"]["accelerator"])
    ckpt = _resume_from(algorithm, c.get("ckpt_path"), c, n, k, device.type)
    return RunSpec(algo, ev, env, c["env"], n, k, seed, threads, device, ckpt)


def _check_simulator_run(algorithm: Algorithm, env: Simulator, n: int) -> None:
    """A simulator (not a GlobalLocalMDP) trains only with an algorithm that needs samples alone, and only
    once :func:`~sqtorch.envs.protocol.check_simulator` passes (its message names what is wrong)."""
    if not algorithm.simulators:
        fits = sorted(name for name, a in ALGORITHMS.items() if a.simulators)
        raise ConfigError(f"algo = '{algorithm.name}' needs the tensors P_g, P_l, r_g, r_l of a GlobalLocalMDP; "
                          f"env '{env.name}' is a simulator ({env.local.describe()} local states): "
                          f"algorithms for it: {fits}")
    try:
        check_simulator(env, n=min(n, 5))
    except ValueError as e:
        raise ConfigError(f"env: {e}") from e


def _resume_from(algorithm: Algorithm, ckpt_path: Any, c: dict, n: int, k: int, device: str) -> str | None:
    """The checkpoint file of ``ckpt_path`` as the algorithm resolves and checks it (``None``: fresh run)."""
    if ckpt_path is None:
        return None
    try:
        return algorithm.resume_from(ckpt_path, c, n, k, device)
    except (OSError, ValueError) as e:
        raise ConfigError(str(e)) from e
