"""Constrained exploration: agents on a line move inside a box the global agent places (docs/model.md §7.10).

After the task of the SUBSAMPLE-MFQ paper's numerical section (arXiv 2412.00661, appendix: agents on
a grid explore inside a box placed by a global agent); the grid, the box, the dynamics and the constants
here are this environment's own, not the paper's.

``W`` cells ``{0..W-1}`` (local state ``x``, ``L = W``); each agent moves left, stays or moves right
(``a_i in {0, 1, 2}``: ``x' = clip(x + a_i - 1, 0, W - 1)``, and with probability ``slip`` it stays
whatever it chose). The box covers ``box`` consecutive cells starting at the global state ``s_g in
{0..W-box}``; the global action is the next start (``s_g' = a_g``, deterministic). Reward:
``r_g = value[s_g] - move_cost 1{a_g != s_g}`` (some regions are worth more to explore) and
``r_l = 1{x in box(s_g)} - step_cost 1{a_i != 1}`` (an agent counts only inside the box). Moving the
box to a better region strands the agents outside it for a while: the best ``a_g`` depends on where
the agents are, and the agents must follow the box.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sqtorch.checks import check_float, check_int, check_unit
from sqtorch.envs.local_actions import LocalActionMDP


def constrained_exploration(
    W: int = 5,
    box: int = 2,
    value: Sequence[float] | None = None,
    slip: float = 0.1,
    move_cost: float = 0.2,
    step_cost: float = 0.1,
    gamma: float = 0.9,
) -> LocalActionMDP:
    """The :class:`LocalActionMDP` of the module docstring: ``G = A = W - box + 1``, ``L = W``, ``Al = 3``.

    ``value`` (one per box start) defaults to ``0, 0.1, ..`` rising to the right end.
    """
    W = check_int("W", W, 2, "cells")
    box = check_int("box", box, 1, "cells the box covers", hi=W)
    G = W - box + 1
    vals = [0.1 * i for i in range(G)] if value is None else [float(v) for v in value]
    if len(vals) != G:
        raise ValueError(f"value has {len(vals)} entries, expected G = W - box + 1 = {G} (one per box start)")
    slip = check_unit("slip", slip, "probability that an agent stays whatever it chose")
    move_cost = check_float("move_cost", move_cost, 0.0, what="cost of moving the box")
    step_cost = check_float("step_cost", step_cost, 0.0, what="cost of an agent's move")
    x, a, g = torch.arange(W), torch.arange(3), torch.arange(G)
    target = (x[None, :] + a[:, None] - 1).clamp(0, W - 1)  # [Al, L]
    P = (1 - slip) * torch.nn.functional.one_hot(target, W).double() + slip * torch.eye(W, dtype=torch.float64)
    P_l = P.expand(G, G, 3, W, W).clone()  # [G, A, Al, L, L]
    inside = ((x[None, :] >= g[:, None]) & (x[None, :] < g[:, None] + box)).double()  # [G, L]
    r_l = inside[:, None, None, :] - step_cost * (a != 1).double()[None, None, :, None]  # [G, 1, Al, L]
    r_g = torch.tensor(vals, dtype=torch.float64)[:, None] - move_cost * (g[:, None] != g[None, :]).double()
    return LocalActionMDP(
        P_g=torch.nn.functional.one_hot(g, G).double()[None].expand(G, G, G).clone(),  # s_g' = a_g
        P_l=P_l, r_g=r_g, r_l=r_l.expand(G, G, 3, W).clone(), gamma=gamma, name="constrained_exploration",
        local_state_names=tuple(f"cell={v}" for v in range(W)),
        action_names=tuple(f"box@{v}" for v in range(G)), local_action_names=("left", "stay", "right"),
        params=dict(W=W, box=box, value=vals, slip=slip, move_cost=move_cost, step_cost=step_cost, gamma=gamma),
    )


__all__ = ["constrained_exploration"]
