"""Progress bar of DeepSets training: Lightning's TQDM bar, refreshed every ``refresh_rate`` steps.

The bar's one field besides the step count is the TD loss, which
:class:`~sqtorch.neural.module.SubsampleQModule` computes on logging steps only
(``trainer.log_every_n_steps``). Refreshing the bar on every step redraws the same numbers, and the
loss reaching it through ``self.log(..., prog_bar=True)`` makes Lightning process its result
collection on every later step. So the module keeps the bar's values in ``bar_metrics`` (a plain
dict, set on logging steps) and :class:`StepProgressBar` reads them when it refreshes.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    """:class:`TQDMProgressBar` that also shows the module's ``bar_metrics`` (its TD loss)."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        return {**super().get_metrics(trainer, pl_module), **getattr(pl_module, "bar_metrics", {})}


__all__ = ["StepProgressBar"]
