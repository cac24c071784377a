"""Environments: the shared MDP interface, the n-agent simulator and the named presets."""

from __future__ import annotations

from collections.abc import Callable

from sqtorch.envs.base import GlobalLocalMDP
from sqtorch.envs.demand_response import demand_response, demand_response_script
from sqtorch.envs.queue import queue
from sqtorch.envs.simulator import sample_initial_state, sample_subset, step

ENVS: dict[str, Callable[..., GlobalLocalMDP]] = {
    "queue": queue,
    "demand_response": demand_response,
    "demand_response_script": demand_response_script,
}


def register_env(name: str, builder: Callable[..., GlobalLocalMDP]) -> None:
    """Make ``make_env(name, **params)`` call ``builder(**params)``."""
    ENVS[name] = builder


def make_env(name: str, **params) -> GlobalLocalMDP:
    """Build a named environment; unknown names raise with the list of known ones."""
    if name not in ENVS:
        raise ValueError(f"env = '{name}' is unknown; allowed: {sorted(ENVS)}")
    return ENVS[name](**params)


__all__ = [
    "ENVS",
    "GlobalLocalMDP",
    "demand_response",
    "demand_response_script",
    "make_env",
    "queue",
    "register_env",
    "sample_initial_state",
    "sample_subset",
    "step",
]
