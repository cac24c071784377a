"""Baselines for SUBSAMPLE-Q (docs/model.md §5): Stable-Baselines3 DQN / PPO on the Gymnasium env.

Optional extra: ``pip install -e ".[baselines]"``. The settings (:mod:`sqtorch.baselines.config`)
import without SB3; ``SB3Policy`` and ``train_sb3`` are imported lazily from
:mod:`sqtorch.baselines.sb3`, so ``import sqtorch.baselines`` works without SB3 installed.
"""

from __future__ import annotations

from typing import Any

from sqtorch.baselines.config import ARTIFACT_STEM, SB3_CONFIGS, Sb3Config, Sb3DqnConfig, Sb3PpoConfig

_LAZY = ("SB3Policy", "train_sb3")
__all__ = ["ARTIFACT_STEM", "SB3_CONFIGS", "SB3Policy", "Sb3Config", "Sb3DqnConfig", "Sb3PpoConfig", "train_sb3"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from sqtorch.baselines import sb3

        return getattr(sb3, name)
    raise AttributeError(f"module 'sqtorch.baselines' has no attribute {name!r}")
