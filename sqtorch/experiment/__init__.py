"""The Hydra edge of sqtorch: typed configs, the algorithm registry, one training run, run dirs, studies.

Importing it registers the built-in algorithms (``algo=deepsets|tabular|sb3_dqn|sb3_ppo``) and
``eval/default`` with Hydra's ConfigStore, which ``train.py`` and the tests compose from, and
imports the modules named in ``$SQTORCH_PLUGINS`` (a user's algorithms and environments).
"""

from sqtorch.experiment import algos  # noqa: F401  (registers the built-in algorithms)
from sqtorch.experiment.config import ConfigError, RunSpec, register_configs, validate_config
from sqtorch.experiment.registry import (
    ALGORITHMS,
    Algorithm,
    LoadedPolicy,
    TrainContext,
    get_algorithm,
    load_plugins,
    register_algorithm,
)
from sqtorch.experiment.run import run

register_configs()
load_plugins()

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "ConfigError",
    "LoadedPolicy",
    "RunSpec",
    "TrainContext",
    "get_algorithm",
    "load_plugins",
    "register_algorithm",
    "register_configs",
    "run",
    "validate_config",
]
