"""Neural SUBSAMPLE-Q (docs/model.md §3): a DeepSets Q-network trained on sampled Bellman targets.

Public API: :class:`DeepSetsQ` (the network), :class:`DeepSetsPolicy` (greedy subsampled policy
with ``.k`` / ``.act``; ``DeepSetsPolicy.from_checkpoint(path, k=None)``), the settings
:class:`DeepSetsConfig` / :class:`NetConfig` / :class:`DataConfig`, :class:`GenerativeSource`
(the batch sampler) and :class:`SubsampleQModule` (the LightningModule, in
:mod:`sqtorch.neural.module`; importing it imports Lightning).
"""

from sqtorch.neural.config import DeepSetsConfig, OptimConfig
from sqtorch.neural.data import DataConfig, GenerativeSource
from sqtorch.neural.deepsets import DeepSetsQ, NetConfig
from sqtorch.neural.policy import DeepSetsPolicy

__all__ = [
    "DataConfig",
    "DeepSetsConfig",
    "DeepSetsPolicy",
    "DeepSetsQ",
    "GenerativeSource",
    "NetConfig",
    "OptimConfig",
]
