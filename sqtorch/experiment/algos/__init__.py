"""The built-in algorithms, one module each, registered on import (see :mod:`sqtorch.experiment.registry`)."""

from sqtorch.experiment.algos.deepsets import DeepSets
from sqtorch.experiment.algos.deepsets_mfq import DeepSetsMFQ
from sqtorch.experiment.algos.fixed import Fixed
from sqtorch.experiment.algos.sb3 import Sb3Dqn, Sb3Ppo
from sqtorch.experiment.algos.tabular import Tabular
from sqtorch.experiment.algos.tabular_mfq import TabularLocalRule, TabularMFQ
from sqtorch.experiment.registry import register_algorithm

for _algo in (DeepSets(), DeepSetsMFQ(), Tabular(), TabularMFQ(), TabularLocalRule(), Sb3Dqn(), Sb3Ppo(), Fixed()):
    register_algorithm(_algo)

__all__ = ["DeepSets", "DeepSetsMFQ", "Fixed", "Sb3Dqn", "Sb3Ppo", "Tabular", "TabularLocalRule", "TabularMFQ"]
