"""Config helpers shared by the Hydra entry point and the library: env building and validation.

:func:`validate_config` checks a composed Hydra config **before** anything is trained and raises
:class:`ConfigError` with a message that names the key, the bad value and the allowed range.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import OmegaConf

from sqtorch.envs import ENVS, make_env
from sqtorch.envs.base import GlobalLocalMDP

ALGOS = ("deepsets", "tabular")
LOSSES = ("huber", "mse")
LR_SCHEDULES = ("constant", "cosine")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class ConfigError(ValueError):
    """A config value is out of range; raised before training starts."""


def _plain(cfg: Any) -> Any:
    """OmegaConf node -> plain python containers (identity for plain data)."""
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg


def build_env(env_cfg: Mapping[str, Any]) -> GlobalLocalMDP:
    """Build an env from its config: ``_target_`` (a builder function) or ``name`` + params.

    ``{"_target_": "sqtorch.envs.queue", "Q": 4}`` calls ``queue(Q=4)``; ``{"name": "queue", ...}``
    goes through :func:`sqtorch.envs.make_env`. A custom env is a Python function returning a
    :class:`GlobalLocalMDP` plus a yaml file with its ``_target_`` (SPEC §4.3).
    """
    params = dict(_plain(env_cfg))
    if "_target_" in params:
        from hydra.utils import get_method

        target = params.pop("_target_")
        try:
            fn = get_method(target)
        except Exception as e:
            raise ConfigError(f"env._target_ = '{target}' cannot be imported: {e}") from e
        env = fn(**params)
    elif "name" in params:
        name = params.pop("name")
        if name not in ENVS:
            raise ConfigError(f"env = '{name}' is unknown; allowed: {sorted(ENVS)}")
        env = make_env(name, **params)
    else:
        raise ConfigError(f"env config needs '_target_' or 'name' (known names: {sorted(ENVS)})")
    if not isinstance(env, GlobalLocalMDP):
        raise ConfigError(f"env builder returned {type(env).__name__}, expected GlobalLocalMDP")
    return env


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_accelerator(accelerator: str | None) -> None:
    """``trainer=gpu`` without CUDA -> a clear error with the CPU fallback."""
    if str(accelerator).lower() in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator = '{accelerator}' but no CUDA GPU is available "
            "(torch.cuda.is_available() is False); run with trainer=cpu (or trainer=default, "
            "which picks the GPU when there is one and the CPU otherwise)"
        )


def validate_deepsets(a: Mapping[str, Any]) -> None:
    """Ranges of the DeepSets hyperparameters (``algo=deepsets``)."""
    _check(
        _is_int(a["batch_size"]) and a["batch_size"] >= 1,
        f"algo.batch_size = {a['batch_size']} is outside the allowed range batch_size >= 1",
    )
    _check(_is_int(a["m"]) and a["m"] >= 1, f"algo.m = {a['m']} is outside the allowed range m >= 1")
    _check(
        _is_int(a["max_steps"]) and a["max_steps"] >= 1,
        f"algo.max_steps = {a['max_steps']} is outside the allowed range max_steps >= 1",
    )
    opt = a["optim"]
    _check(float(opt["lr"]) > 0, f"algo.optim.lr = {opt['lr']} is outside the allowed range lr > 0")
    _check(
        float(opt["weight_decay"]) >= 0,
        f"algo.optim.weight_decay = {opt['weight_decay']} is outside the allowed range >= 0",
    )
    _check(
        opt["grad_clip"] is None or float(opt["grad_clip"]) > 0,
        f"algo.optim.grad_clip = {opt['grad_clip']} must be > 0 or null",
    )
    _check(
        opt["lr_schedule"] in LR_SCHEDULES,
        f"algo.optim.lr_schedule = '{opt['lr_schedule']}' is unknown; allowed: {list(LR_SCHEDULES)}",
    )
    _check(a["loss"] in LOSSES, f"algo.loss = '{a['loss']}' is unknown; allowed: {list(LOSSES)}")
    _check(
        _is_int(a["target_sync"]) and a["target_sync"] >= 1,
        f"algo.target_sync = {a['target_sync']} is outside the allowed range target_sync >= 1",
    )
    _check(
        a["tau"] is None or 0 < float(a["tau"]) <= 1,
        f"algo.tau = {a['tau']} is outside the allowed range 0 < tau <= 1 (or null)",
    )
    from sqtorch.neural.data import STATE_DISTS
    from sqtorch.neural.deepsets import POOLINGS

    _check(
        a["net"]["pooling"] in POOLINGS,
        f"algo.net.pooling = '{a['net']['pooling']}' is unknown; allowed: {list(POOLINGS)}",
    )
    d = a["data"]
    _check(
        d["state_dist"] in STATE_DISTS,
        f"algo.data.state_dist = '{d['state_dist']}' is unknown; allowed: {list(STATE_DISTS)}",
    )
    _check(
        0 <= float(d["uniform_frac"]) <= 1,
        f"algo.data.uniform_frac = {d['uniform_frac']} is outside the allowed range [0, 1]",
    )
    _check(
        0 <= float(d["epsilon"]) <= 1,
        f"algo.data.epsilon = {d['epsilon']} is outside the allowed range [0, 1]",
    )
    _check(
        _is_int(a["checkpoint_every"]) and a["checkpoint_every"] >= 1,
        f"algo.checkpoint_every = {a['checkpoint_every']} is outside the allowed range >= 1",
    )


def validate_tabular(a: Mapping[str, Any]) -> None:
    """Ranges of the tabular SUBSAMPLE-Q settings (``algo=tabular``)."""
    m = a["m"]
    _check(
        m == "exact" or (_is_int(m) and m >= 1),
        f"algo.m = {m!r} must be an integer >= 1 or 'exact'",
    )
    _check(_is_int(a["T"]) and a["T"] >= 1, f"algo.T = {a['T']} is outside the allowed range T >= 1")
    _check(float(a["tol"]) > 0, f"algo.tol = {a['tol']} is outside the allowed range tol > 0")
    _check(a["dtype"] in DTYPES, f"algo.dtype = '{a['dtype']}' is unknown; allowed: {list(DTYPES)}")


def validate_config(cfg: Any) -> None:
    """Every check that can fail before training (SPEC §2: ``1 <= k <= n``; ranges; devices)."""
    c = _plain(cfg)
    algo = c.get("algo") or {}
    name = algo.get("name")
    _check(name in ALGOS, f"algo = '{name}' is unknown; allowed: {list(ALGOS)} (e.g. algo=tabular)")
    n, k = c.get("n"), c.get("k")
    _check(_is_int(n) and n >= 1, f"n = {n} is outside the allowed range n >= 1")
    _check(_is_int(k) and 1 <= k <= n, f"k = {k} is outside the allowed range 1 <= k <= n = {n}")
    _check(_is_int(c.get("seed")), f"seed = {c.get('seed')!r} must be an integer")
    ev = c["eval"]
    for key in ("num_initial", "rollouts", "every"):
        _check(
            _is_int(ev[key]) and ev[key] >= 1,
            f"eval.{key} = {ev[key]} is outside the allowed range >= 1",
        )
    if name == "deepsets":
        validate_deepsets(algo)
    else:
        validate_tabular(algo)
    check_accelerator((c.get("trainer") or {}).get("accelerator"))


def device_of(accelerator: str | None) -> torch.device:
    """The torch device a non-Lightning path (tabular) uses for ``trainer.accelerator``."""
    acc = str(accelerator).lower()
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")
