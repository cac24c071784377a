"""The Hydra edge of sqtorch: typed configs, one training run, run dirs, studies and their reports.

Importing it registers the typed config groups (``algo/deepsets``, ``algo/tabular``,
``eval/default``) with Hydra's ConfigStore, which ``train.py`` and the tests compose from.
"""

from sqtorch.experiment.config import ConfigError, RunSpec, register_configs, validate_config
from sqtorch.experiment.run import run

register_configs()

__all__ = ["ConfigError", "RunSpec", "register_configs", "run", "validate_config"]
