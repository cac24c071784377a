"""The learned table ``Q[g, rank(c), a]`` and its greedy subsampled policy (docs/model.md §2, Algorithm 2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from sqtorch import runtime
from sqtorch.envs.base import GlobalLocalMDP, check_states
from sqtorch.runtime import load_state, save_state
from sqtorch.tabular.counts import num_counts, rank_states

FORMAT_KEYS = ("q", "k", "L", "env_name", "meta")


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
        if not runtime.sync_free(s_g):  # on CUDA the check would stall every step on a host sync
            check_states("s_g", s_g, self.G)
            check_states("s_sub", s_sub, self.L)
        if self.q.device != s_g.device:  # follow the caller's device once, not every step
            self.q = self.q.to(s_g.device)
        return self.q[s_g, rank_states(s_sub, self.L)].argmax(-1)

    def save(self, path: str | Path) -> None:
        """Write the table to ``path``, whole or not at all (a kill leaves the previous file)."""
        save_state(path, {"q": self.q.cpu(), "k": self.k, "L": self.L, "env_name": self.env_name, "meta": self.meta})

    @classmethod
    def load(cls, path: str | Path) -> QTable:
        """Read a table saved by :meth:`save` (``weights_only=True``: no code from the file runs).

        Checks that the stored k, L and shape agree; any problem is a ``ValueError`` naming the file.
        """
        d = load_state(path, FORMAT_KEYS, "Q-table")
        q, k, L = d["q"], d["k"], d["L"]
        sizes_ok = isinstance(k, int) and isinstance(L, int) and k >= 1 and L >= 1
        if not isinstance(q, Tensor) or q.dim() != 3 or not sizes_ok:
            raise ValueError(f"{path}: not a sqtorch Q-table (q must be [G, N, A], k and L positive integers)")
        if q.shape[1] != num_counts(k, L):
            raise ValueError(
                f"{path}: q has {q.shape[1]} count vectors but k = {k}, L = {L} needs C(k+L-1, k) = {num_counts(k, L)}"
            )
        return cls(q=q, k=k, L=L, env_name=str(d["env_name"]), meta=dict(d["meta"]))
