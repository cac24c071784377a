"""Settings of the Stable-Baselines3 baselines (``algo=sb3_dqn`` / ``algo=sb3_ppo``): one place per default.

Registered as Hydra config groups by :mod:`sqtorch.experiment.config`; ``__post_init__`` checks
every range, so a bad value fails before anything is trained. This module does not import SB3, so
configs compose (and fail cleanly) without the ``baselines`` extra. A key left ``None`` takes the
run-length-scaled default of :func:`sqtorch.baselines.sb3.default_algo_kwargs`, otherwise SB3's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from sqtorch.checks import check_int, check_positive

OBS = ("counts", "subsample")
ARTIFACT_STEM = "policy"  # a run dir's SB3 artifact: policy.zip + policy.json (sqtorch.baselines.sb3)
_COMMON = ("name", "obs", "total_timesteps", "num_envs", "horizon", "bins")



@dataclass
class Sb3Config:
    """What both baselines share: the observation (docs/model.md §5 and ``sqtorch.gym``) and the budget."""

    name: str = "sb3"
    obs: str = "counts"  # counts: all n agents (k = n); subsample: a fresh k-subset each step (k = top-level k)
    total_timesteps: int = 15_000  # env steps; local-agent transitions drawn = env steps * n
    num_envs: int = 1  # parallel envs (SB3 DummyVecEnv)
    horizon: int | None = None  # episode truncation; None: smallest H with gamma^H <= 1e-4
    learning_rate: float | None = None  # None: SB3's default (DQN 1e-4, PPO 3e-4)
    batch_size: int | None = None  # None: scaled default (DQN 32, PPO min(64, n_steps * num_envs))
    bins: int | None = None  # continuous local states: the histogram observation's bins per coordinate

    @property
    def algo(self) -> str:
        """SB3 algorithm key of :data:`sqtorch.baselines.sb3.ALGOS` (``dqn`` / ``ppo``)."""
        return self.name.removeprefix("sb3_")

    def _check(self, expected: str) -> None:
        if self.name != expected:
            raise ValueError(f"algo.name = '{self.name}' does not match {type(self).__name__} (expected '{expected}')")
        if self.obs not in OBS:
            raise ValueError(f"algo.obs = '{self.obs}' is unknown; allowed: {list(OBS)}")
        check_int("algo.total_timesteps", self.total_timesteps, 1, "env steps")
        check_int("algo.num_envs", self.num_envs, 1, "parallel envs")
        for key in ("horizon", "batch_size", "bins"):
            if getattr(self, key) is not None:
                check_int(f"algo.{key}", getattr(self, key), 1, "a positive integer, or null for the default")
        check_positive("algo.learning_rate", self.learning_rate, allow_none=True)

    def algo_kwargs(self) -> dict[str, Any]:
        """The keys set (not ``None``) that go to the SB3 constructor."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in _COMMON and getattr(self, f.name) is not None}


@dataclass
class Sb3DqnConfig(Sb3Config):
    """``algo=sb3_dqn``: SB3 DQN (MLP Q-network, replay buffer, epsilon-greedy exploration)."""

    name: str = "sb3_dqn"
    buffer_size: int | None = None  # None: min(100k, max(1k, total_timesteps))
    learning_starts: int | None = None  # None: min(1000, total_timesteps / 10)
    target_update_interval: int | None = None  # None: total_timesteps / 20, at most 1000
    exploration_fraction: float | None = 0.3  # fraction of the run over which epsilon decays to its final value
    train_freq: int | None = None  # None: SB3's default (4 env steps per gradient step)

    def __post_init__(self) -> None:
        self._check("sb3_dqn")
        for key in ("buffer_size", "target_update_interval", "train_freq"):
            if getattr(self, key) is not None:
                check_int(f"algo.{key}", getattr(self, key), 1, "a positive integer, or null for the default")
        if self.learning_starts is not None:
            check_int("algo.learning_starts", self.learning_starts, 0, "env steps before learning, or null")
        if self.exploration_fraction is not None and not 0 < float(self.exploration_fraction) <= 1:
            raise ValueError(
                f"algo.exploration_fraction = {self.exploration_fraction} is outside the allowed range 0 < x <= 1"
            )


@dataclass
class Sb3PpoConfig(Sb3Config):
    """``algo=sb3_ppo``: SB3 PPO (MLP actor-critic, clipped surrogate objective)."""

    name: str = "sb3_ppo"
    n_steps: int | None = None  # None: total_timesteps / (4 num_envs), between 8 and 2048
    n_epochs: int | None = None  # None: SB3's default (10)
    ent_coef: float | None = None  # None: SB3's default (0)

    def __post_init__(self) -> None:
        self._check("sb3_ppo")
        for key in ("n_steps", "n_epochs"):
            if getattr(self, key) is not None:
                check_int(f"algo.{key}", getattr(self, key), 1, "a positive integer, or null for the default")
        if self.ent_coef is not None and not 0 <= float(self.ent_coef) < math.inf:
            raise ValueError(f"algo.ent_coef = {self.ent_coef} is outside the allowed range >= 0 (or null)")


SB3_CONFIGS: dict[str, type[Sb3Config]] = {"sb3_dqn": Sb3DqnConfig, "sb3_ppo": Sb3PpoConfig}

__all__ = ["ARTIFACT_STEM", "OBS", "SB3_CONFIGS", "Sb3Config", "Sb3DqnConfig", "Sb3PpoConfig"]
