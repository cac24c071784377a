"""The learned table ``Q[g, rank(c), a]`` and its greedy subsampled policy (docs/model.md §2, Algorithm 2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from sqtorch.envs.base import GlobalLocalMDP
from sqtorch.tabular.counts import num_counts, rank_states


@dataclass
class QTable:
    """``q [G, C(k+L-1, k), A]``: Q over (global state, count vector of k local states, action)."""

    q: Tensor
    k: int
    L: int
    env_name: str = "custom"
    meta: dict = field(default_factory=dict)

    @property
    def G(self) -> int:
        return self.q.shape[0]

    @property
    def A(self) -> int:
        return self.q.shape[2]

    def check_env(self, env: GlobalLocalMDP) -> None:
        """Raise ``ValueError`` unless this table's shape matches ``env`` at this k."""
        expected = (env.G, num_counts(self.k, env.L), env.A)
        if tuple(self.q.shape) != expected:
            raise ValueError(
                f"q has shape {tuple(self.q.shape)} but env '{env.name}' at k = {self.k} needs "
                f"{expected} = [G, C(k+L-1, k), A]"
            )

    def greedy(self) -> Tensor:
        """Greedy action table ``[G, N]`` (ties: lowest action index)."""
        return self.q.argmax(-1)

    def act(self, s_g: Tensor, s_sub: Tensor) -> Tensor:
        """``argmax_a Q(s_g, c(s_sub), a)`` for ``s_g [B]`` and sampled local states ``s_sub [B, k]``."""
        if s_sub.shape[-1] != self.k:
            raise ValueError(f"s_sub has {s_sub.shape[-1]} agents per row, this Q-table has k = {self.k}")
        if self.q.device != s_g.device:  # follow the caller's device once, not every step
            self.q = self.q.to(s_g.device)
        return self.q[s_g, rank_states(s_sub, self.L)].argmax(-1)

    def save(self, path: str | Path) -> None:
        torch.save({"q": self.q.cpu(), "k": self.k, "L": self.L, "env_name": self.env_name, "meta": self.meta}, path)

    @classmethod
    def load(cls, path: str | Path) -> QTable:
        d = torch.load(path, map_location="cpu", weights_only=False)
        return cls(q=d["q"], k=d["k"], L=d["L"], env_name=d["env_name"], meta=d["meta"])
