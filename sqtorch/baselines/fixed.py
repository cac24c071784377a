"""A fixed global policy ``a_g = actions[s_g]`` (``algo=fixed``): the heuristic every learner must beat.

It ignores the local agents (e.g. the always-offset-0 thermostat of the ``tcl`` env, or "price
level only" rules), so it is evaluated like any subsampled policy with ``k = 1`` and, on a
:class:`~sqtorch.envs.base.GlobalLocalMDP`, exactly (its greedy table is constant over counts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from sqtorch.checks import check_int
from sqtorch.runtime import write_text_atomic


@dataclass
class FixedConfig:
    """``algo=fixed``: ``actions`` holds one global action per global state, or one for all of them."""

    name: str = "fixed"
    actions: list[int] = field(default_factory=lambda: [0])

    def __post_init__(self) -> None:
        if self.name != "fixed":
            raise ValueError(f"algo.name = '{self.name}' does not match FixedConfig (expected 'fixed')")
        if len(self.actions) < 1:
            raise ValueError("algo.actions is empty: give one global action per global state, or one for all")
        self.actions = [check_int(f"algo.actions[{i}]", a, 0, "a global action") for i, a in enumerate(self.actions)]

    def check_env(self, G: int, A: int) -> None:
        """``ValueError`` naming ``algo.actions`` unless it has 1 or ``G`` entries, each in ``{0..A-1}``."""
        if len(self.actions) not in (1, G):
            raise ValueError(f"algo.actions has {len(self.actions)} entries; the env has G = {G} global states "
                             "(give G entries, or one for all)")
        for i, a in enumerate(self.actions):
            check_int(f"algo.actions[{i}]", a, 0, f"a global action of the env, in {{0..{A - 1}}}", hi=A - 1)


class FixedPolicy:
    """``act(s_g, s_sub) = actions[s_g]`` (``k = 1``: the sampled agent is not read)."""

    k = 1

    def __init__(self, actions: list[int], G: int, L: int | None = None) -> None:
        table = torch.tensor(actions, dtype=torch.int64)
        self.table, self.L = table.expand(G).clone() if len(actions) == 1 else table, L

    def act(self, s_g: Tensor, s_sub: Tensor) -> Tensor:
        """The global action of each row ``[B]``, on the device of ``s_g``."""
        return self.table.to(s_g.device)[s_g]

    def greedy(self) -> Tensor:
        """Action table ``[G, L]`` over (s_g, count vector of the one sampled agent), for exact evaluation."""
        if self.L is None:
            raise ValueError("greedy() needs finite local states (L)")
        return self.table[:, None].expand(-1, self.L).clone()

    def save(self, path: str | Path) -> None:
        """``{"actions": [...], "G": G, "L": L}`` as JSON, written whole or not at all."""
        write_text_atomic(path, json.dumps({"actions": self.table.tolist(), "G": len(self.table), "L": self.L}) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> FixedPolicy:
        """The policy :meth:`save` wrote."""
        d = json.loads(Path(path).read_text())
        return cls(d["actions"], int(d["G"]), d.get("L"))
