"""Environments: the shared MDP interface, the n-agent simulator and the named presets."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from sqtorch.envs.base import GlobalLocalMDP
from sqtorch.envs.demand_response import demand_response, demand_response_script
from sqtorch.envs.queue import queue
from sqtorch.envs.simulator import sample_initial_state, sample_subset, step
from sqtorch.envs.types import queue_types, type_of, with_types

ENVS: dict[str, Callable[..., GlobalLocalMDP]] = {
    "queue": queue,
    "demand_response": demand_response,
    "demand_response_script": demand_response_script,
    "queue_types": queue_types,
}


def register_env(name: str, builder: Callable[..., GlobalLocalMDP]) -> None:
    """Make ``make_env(name, **params)`` call ``builder(**params)``."""
    ENVS[name] = builder


def make_env(name: str, **params) -> GlobalLocalMDP:
    """Build a named environment; unknown names raise with the list of known ones."""
    if name not in ENVS:
        raise ValueError(f"env = '{name}' is unknown; allowed: {sorted(ENVS)}")
    return ENVS[name](**params)


def build_env(cfg: Mapping[str, Any]) -> GlobalLocalMDP:
    """An env from a plain config: ``{"_target_": "pkg.module.builder", **params}`` or ``{"name": ..., **params}``.

    ``{"_target_": "sqtorch.envs.queue", "Q": 4}`` calls ``queue(Q=4)``; ``{"name": "queue"}`` goes
    through :func:`make_env`. A custom env is a function returning a :class:`GlobalLocalMDP`
    (docs/model.md §4.3). Errors are ``ValueError`` naming the bad key.
    """
    params = dict(cfg)
    if "_target_" in params:
        target = str(params.pop("_target_"))
        module, _, attr = target.rpartition(".")
        try:
            builder = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError, ValueError) as e:
            raise ValueError(f"env._target_ = '{target}' cannot be imported: {e}") from e
    elif "name" in params:
        name = params.pop("name")
        if name not in ENVS:
            raise ValueError(f"env = '{name}' is unknown; allowed: {sorted(ENVS)}")
        builder = ENVS[name]
    else:
        raise ValueError(f"env config needs '_target_' or 'name' (known names: {sorted(ENVS)})")
    try:
        env = builder(**params)
    except TypeError as e:  # an unknown or missing keyword of the builder
        raise ValueError(f"env: {e}") from e
    if not isinstance(env, GlobalLocalMDP):
        raise ValueError(f"env builder returned {type(env).__name__}, expected GlobalLocalMDP")
    return env


__all__ = [
    "build_env",
    "ENVS",
    "GlobalLocalMDP",
    "demand_response",
    "demand_response_script",
    "make_env",
    "queue",
    "queue_types",
    "register_env",
    "sample_initial_state",
    "sample_subset",
    "step",
    "type_of",
    "with_types",
]
