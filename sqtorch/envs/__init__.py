"""Environments: the shared MDP interface, the n-agent simulator and the named presets."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from sqtorch.envs.base import GlobalLocalMDP
from sqtorch.envs.constrained_exploration import constrained_exploration
from sqtorch.envs.demand_response import demand_response, demand_response_script
from sqtorch.envs.ev_charging import ev_charging
from sqtorch.envs.local_actions import LocalActionMDP, formation
from sqtorch.envs.protocol import LocalSpace, Simulator, check_simulator
from sqtorch.envs.queue import queue
from sqtorch.envs.simulator import sample_initial_state, sample_subset, step
from sqtorch.envs.tcl import TCLSimulator, tcl
from sqtorch.envs.types import queue_types, type_of, with_types

ENVS: dict[str, Callable[..., Simulator | LocalActionMDP]] = {
    "queue": queue,
    "demand_response": demand_response,
    "demand_response_script": demand_response_script,
    "queue_types": queue_types,
    "tcl": tcl,
    "formation": formation,  # local agents act (LocalActionMDP, docs/model.md §7)
    "ev_charging": ev_charging,  # local agents act: EV charging under a feeder limit (§7.7)
    "constrained_exploration": constrained_exploration,  # local agents act: follow the global box (§7.10)
}
Env = Simulator | LocalActionMDP  # what build_env returns
ENV_TYPES = (Simulator, LocalActionMDP)


def register_env(name: str, builder: Callable[..., Simulator]) -> None:
    """Make ``make_env(name, **params)`` call ``builder(**params)``."""
    ENVS[name] = builder


def _builder(target: str) -> Callable[..., Simulator]:
    if target in ("???", "", "None"):
        raise ValueError("env._target_ is not set: pass env._target_=<module>.<builder> (a function or Simulator "
                         "class importable from the working directory, e.g. examples.my_simulator.EVFleet)")
    module, _, attr = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"env._target_ = '{target}' cannot be imported: {e}") from e


def env_params(builder: Callable[..., Simulator]) -> dict[str, Any]:
    """The keyword parameters of an env builder with their defaults (``inspect.Parameter.empty``: required)."""
    sig = inspect.signature(builder)
    return {p.name: p.default for p in sig.parameters.values()
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}


def build_env(spec: Env | str | Mapping[str, Any], /, **params: Any) -> Env:
    """The one way to get an env: from itself, a registered name, or a config mapping.

    - a :class:`GlobalLocalMDP`, any other :class:`Simulator` or a :class:`LocalActionMDP` is returned
      as it is (``params`` must be empty);
    - ``"queue"`` (a name of :func:`register_env`) calls the registered builder with ``params``;
    - ``{"_target_": "pkg.module.builder", **params}`` imports the builder (``{"_target_":
      "sqtorch.envs.queue", "Q": 4}`` calls ``queue(Q=4)``); ``{"name": "queue", **params}`` looks
      the name up. A custom env is a function returning a :class:`GlobalLocalMDP` (docs/model.md §4.3)
      or a :class:`Simulator` (docs/model.md §1.1; ``tcl`` is one).

    Training (Hydra's ``env`` node), the Gymnasium interface, the baselines and evaluation all call
    this. Errors are one-line ``ValueError`` naming the bad key, e.g. ``env.not_a_param is not a
    parameter of queue(Q, G, ...)``, raised before the builder runs.
    """
    if isinstance(spec, ENV_TYPES):
        if params:
            raise ValueError(f"env constants {sorted(params)} given with a {type(spec).__name__}; "
                             "pass constants only with a name or a config")
        return spec
    if isinstance(spec, str):
        cfg: dict[str, Any] = {"name": spec, **params}
    elif isinstance(spec, Mapping):
        cfg = {str(key): v for key, v in dict(spec).items()} | params
    else:
        raise ValueError(f"env = {spec!r} must be a GlobalLocalMDP, a registered name or a config mapping")
    if "_target_" in cfg:
        target = str(cfg.pop("_target_"))
        builder, label = _builder(target), target.rpartition(".")[2]
    elif "name" in cfg:
        label = cfg.pop("name")
        if label not in ENVS:
            raise ValueError(f"env = '{label}' is unknown; allowed: {sorted(ENVS)}")
        builder = ENVS[label]
    else:
        raise ValueError(f"env config needs '_target_' or 'name' (known names: {sorted(ENVS)}), got keys {sorted(cfg)}")
    try:
        sig = inspect.signature(builder)
    except (TypeError, ValueError):  # a builtin without a signature: let the call itself complain
        sig = None
    if sig is not None:
        allowed = env_params(builder)
        takes_any = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
        unknown = [key for key in cfg if key not in allowed]
        if unknown and not takes_any:
            raise ValueError(f"env.{unknown[0]} is not a parameter of {label}({', '.join(allowed)})")
        missing = [key for key, d in allowed.items() if d is inspect.Parameter.empty and key not in cfg]
        if missing:
            raise ValueError(f"env.{missing[0]} is required by {label}({', '.join(allowed)}) but not set")
    try:
        env = builder(**cfg)
    except TypeError as e:  # only reachable without a signature
        raise ValueError(f"env: {label}: {e}") from e
    if not isinstance(env, ENV_TYPES):
        raise ValueError(f"env builder {label} returned {type(env).__name__}, "
                         "expected a GlobalLocalMDP, Simulator or LocalActionMDP")
    return env


def make_env(name: str, **params: Any) -> Simulator:
    """A registered environment by name: ``build_env(name, **params)``."""
    return build_env(name, **params)


__all__ = [
    "build_env",
    "ENVS",
    "env_params",
    "GlobalLocalMDP",
    "LocalActionMDP",
    "LocalSpace",
    "Simulator",
    "check_simulator",
    "formation",
    "ev_charging",
    "constrained_exploration",
    "demand_response",
    "demand_response_script",
    "make_env",
    "queue",
    "queue_types",
    "register_env",
    "tcl",
    "TCLSimulator",
    "sample_initial_state",
    "sample_subset",
    "step",
    "type_of",
    "with_types",
]
