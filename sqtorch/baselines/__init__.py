"""Baselines for SUBSAMPLE-Q (docs/model.md §5): Stable-Baselines3 DQN / PPO on the Gymnasium env.

Optional extra: ``pip install -e ".[baselines]"``. Names are imported lazily from
:mod:`sqtorch.baselines.sb3`, so ``import sqtorch.baselines`` works without SB3 installed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SB3Policy", "train_sb3"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from sqtorch.baselines import sb3

        return getattr(sb3, name)
    raise AttributeError(f"module 'sqtorch.baselines' has no attribute {name!r}")
