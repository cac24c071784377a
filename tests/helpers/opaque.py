"""A GlobalLocalMDP seen only through the Simulator protocol (no tensors reach the learner).

``Opaque(env)`` delegates every protocol method to ``env``, so the same numbers come out, but it is
not a :class:`GlobalLocalMDP`: code that trains on it must take the simulator path. Its law is the
env's kernels, so what is learned on it can be checked against the exact solution of ``env``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sqtorch.envs import GlobalLocalMDP, LocalSpace, Simulator, build_env


class Opaque(Simulator):
    def __init__(self, env: GlobalLocalMDP) -> None:
        self.env, self.G, self.A, self.gamma = env, env.G, env.A, env.gamma
        self.local, self.name = LocalSpace.finite(env.L), f"opaque_{env.name}"

    def initial(self, n: int, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return self.env.initial(n, batch, generator)

    def global_step(self, s_g: Tensor, a_g: Tensor, generator: torch.Generator) -> Tensor:
        return self.env.global_step(s_g, a_g, generator)

    def local_step(self, s_g: Tensor, s_l: Tensor, a_g: Tensor, generator: torch.Generator) -> Tensor:
        return self.env.local_step(s_g, s_l, a_g, generator)

    def reward(self, s_g: Tensor, s_l: Tensor, a_g: Tensor) -> Tensor:
        return self.env.reward(s_g, s_l, a_g)


def opaque_queue(**params: object) -> Opaque:
    """The queue env behind the protocol, for configs: ``env=queue env._target_=tests.helpers.opaque.opaque_queue``."""
    return Opaque(build_env("queue", **params))


def nan_reward_tcl(**params: object) -> Simulator:
    """A TCL simulator whose reward is NaN for one system: must be refused before training."""
    from sqtorch.envs import TCLSimulator

    class Broken(TCLSimulator):
        def reward(self, s_g: Tensor, s_l: Tensor, a_g: Tensor) -> Tensor:
            r = super().reward(s_g, s_l, a_g)
            r[0] = float("nan")
            return r

    return Broken(**params)  # type: ignore[arg-type]
