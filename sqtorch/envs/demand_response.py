"""Demand response (docs/model.md §4.1): dynamics of the paper's public script.

Global state: capacity signal ``s_g in {1..5}`` (index ``s_g - 1``); action ``a_g in {-1, 0, +1}``
with ``s_g' = clip(s_g + a_g, 1, 5)``. Local state ``(x, y)``: current and desired consumption in
``{1..5}``, index ``(x-1)*5 + (y-1)`` (``L = 25``). If ``y <= s_g`` then ``x' = y``, else
``x' = clip(y + (s_g - x) B, 1, 5)`` with ``B ~ Bernoulli(1/2)``; ``y' ~ Uniform{1..5}``.
Rewards: ``r_g = alpha / s_g - beta 1{a_g = -1}`` and ``r_l = x - rho 1{x > s_g}``.

Two presets: ``demand_response_script`` (the script's ``alpha=15, beta=1, rho=0.5``, under which the
optimal policy ignores the local agents) and ``demand_response`` (``alpha=2, beta=0.1, rho=1``,
where the optimal action depends on the local distribution; see docs/results.md for the exact gaps).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from sqtorch.envs.base import GlobalLocalMDP

LEVELS = 5
ACTIONS = (-1, 0, 1)


def demand_response(
    alpha: float = 2.0, beta: float = 0.1, rho: float = 1.0, gamma: float = 0.9
) -> GlobalLocalMDP:
    """Demand response with constants that give the local agents a real say (docs/model.md §4.1)."""
    for name, value in (("alpha", alpha), ("beta", beta), ("rho", rho)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} = {value!r} is outside the allowed range: a finite number")
    K = LEVELS
    s = torch.arange(1, K + 1)  # s_g values
    a = torch.tensor(ACTIONS)
    g_next = (s[:, None] + a[None, :]).clamp(1, K) - 1  # [G, A] indices
    P_g = torch.nn.functional.one_hot(g_next, K).double()

    # Local kernel, depends on s_g only: P[g, (x, y), (x', y')] = P(x' | x, y, s_g) / K.
    sg, x, y = torch.meshgrid(s, s, s, indexing="ij")  # [G, K, K] over (s_g, x, y)
    follows = y <= sg
    x_moved = (y + (sg - x)).clamp(1, K)
    Px = torch.zeros(K, K, K, K, dtype=torch.float64)  # [G, x, y, x']
    half = torch.where(follows, 1.0, 0.5).double()
    Px.scatter_add_(-1, (y - 1)[..., None], half[..., None])
    Px.scatter_add_(-1, (x_moved - 1)[..., None], (1 - half)[..., None])
    P = (Px[..., :, None] / K).expand(K, K, K, K, K)  # [G, x, y, x', y']
    P_l = P.reshape(K, K * K, K * K)[:, None].expand(K, len(ACTIONS), K * K, K * K).clone()

    r_g = alpha / s[:, None].double() - beta * (a[None, :] == -1).double()
    xs = torch.arange(1, K + 1).repeat_interleave(K)  # x of each local index
    r_l = xs[None, :].double() - rho * (xs[None, :] > s[:, None]).double()  # [G, L]
    r_l = r_l[:, None, :].expand(K, len(ACTIONS), K * K).clone()
    return GlobalLocalMDP(
        P_g=P_g,
        P_l=P_l,
        r_g=r_g,
        r_l=r_l,
        gamma=gamma,
        name="demand_response",
        global_state_names=tuple(f"s_g={v}" for v in range(1, K + 1)),
        local_state_names=tuple(f"x={i},y={j}" for i in range(1, K + 1) for j in range(1, K + 1)),
        action_names=("-1", "0", "+1"),
        params=dict(alpha=alpha, beta=beta, rho=rho, gamma=gamma),
    )


def demand_response_script(
    alpha: float = 15.0, beta: float = 1.0, rho: float = 0.5, gamma: float = 0.9
) -> GlobalLocalMDP:
    """The public script's constants: the local agents cannot change the optimal action."""
    env = demand_response(alpha=alpha, beta=beta, rho=rho, gamma=gamma)
    return replace(env, name="demand_response_script")
