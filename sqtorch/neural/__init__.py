"""Neural SUBSAMPLE-Q (SPEC §3): a DeepSets Q-network trained on sampled Bellman targets.

Public API: :class:`DeepSetsQ` (the network), :class:`DeepSetsPolicy` (greedy subsampled policy
with ``.k`` / ``.act``; ``DeepSetsPolicy.from_checkpoint(path, k=None)``),
:class:`SubsampleQModule` (the LightningModule), :class:`GenerativeSource` (the batch sampler),
:mod:`sqtorch.neural.metrics` (logged tag names) and :func:`evaluate_return` (the one place the
Monte Carlo evaluator is called).
"""

from sqtorch.neural.data import GenerativeSource
from sqtorch.neural.deepsets import DeepSetsQ
from sqtorch.neural.policy import DeepSetsPolicy
from sqtorch.neural.validation import evaluate_return

__all__ = ["DeepSetsPolicy", "DeepSetsQ", "GenerativeSource", "SubsampleQModule", "evaluate_return"]


def __getattr__(name: str):  # the LightningModule imports lightning: load it on first use
    if name == "SubsampleQModule":
        from sqtorch.neural.module import SubsampleQModule

        return SubsampleQModule
    raise AttributeError(name)
