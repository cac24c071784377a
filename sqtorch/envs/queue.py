"""`queue`: capacity control of n parallel queues (docs/model.md §4.2).

Local state: queue length ``x in {0..Q}``. Global state: service level ``g in {0..G-1}`` with
service probability ``mu_g = mu_min + g (mu_max - mu_min) / (G - 1)``. Action
``a_g in {-1, 0, +1}`` moves the level: ``g' = clip(g + a_g, 0, G-1)``. Each queue gets an arrival
``A ~ Bernoulli(lam)`` and, if non-empty, a service ``S ~ Bernoulli(mu_g)``;
``x' = clip(x + A - S, 0, Q)``. Rewards: ``r_l[g, x] = -h x - b lam 1{x = Q}`` and
``r_g[g, a] = -c mu_g - s |a_g|``.
"""

from __future__ import annotations

import torch

from sqtorch.checks import check_float, check_int, check_unit
from sqtorch.envs.base import GlobalLocalMDP

ACTIONS = (-1, 0, 1)



def queue(
    Q: int = 4,
    G: int = 4,
    mu_min: float = 0.2,
    mu_max: float = 0.8,
    lam: float = 0.5,
    h: float = 1.0,
    b: float = 5.0,
    c: float = 2.0,
    s: float = 0.1,
    gamma: float = 0.9,
) -> GlobalLocalMDP:
    """Build the queueing MDP of docs/model.md §4.2 (defaults are the spec's)."""
    Q = check_int("Q", Q, 1, "queue capacity")
    G = check_int("G", G, 2, "service levels")
    for name, value in (("mu_min", mu_min), ("mu_max", mu_max), ("lam", lam)):
        check_unit(name, value)
    for name, value in (("h", h), ("b", b), ("c", c), ("s", s)):  # inf would make r_l NaN
        check_float(name, value, lo_open=True, hi_open=True, what="a finite cost")
    L = Q + 1
    a = torch.tensor(ACTIONS, dtype=torch.float64)
    g = torch.arange(G)
    mu = mu_min + g.double() * (mu_max - mu_min) / (G - 1)  # [G]

    g_next = (g[:, None] + torch.tensor(ACTIONS)[None, :]).clamp(0, G - 1)  # [G, A]
    P_g = torch.nn.functional.one_hot(g_next, G).double()

    # P(delta = +1, 0, -1 | g, x); service only happens in a non-empty queue.
    x = torch.arange(L)
    serve = mu[:, None] * (x[None, :] > 0)  # [G, L]
    p_up = lam * (1 - serve)
    p_down = (1 - lam) * serve
    p_stay = 1 - p_up - p_down
    P = torch.zeros(G, L, L, dtype=torch.float64)
    gi, xi = torch.meshgrid(g, x, indexing="ij")
    P.index_put_((gi, xi, (xi + 1).clamp(max=Q)), p_up, accumulate=True)
    P.index_put_((gi, xi, (xi - 1).clamp(min=0)), p_down, accumulate=True)
    P.index_put_((gi, xi, xi), p_stay, accumulate=True)
    P_l = P[:, None].expand(G, len(ACTIONS), L, L).clone()

    r_l_x = -h * x.double() - b * lam * (x == Q).double()  # [L]
    r_l = r_l_x.expand(G, len(ACTIONS), L).clone()
    r_g = -c * mu[:, None] - s * a.abs()[None, :]
    return GlobalLocalMDP(
        P_g=P_g,
        P_l=P_l,
        r_g=r_g,
        r_l=r_l,
        gamma=gamma,
        name="queue",
        global_state_names=tuple(f"mu={m:.2f}" for m in mu.tolist()),
        local_state_names=tuple(f"x={i}" for i in range(L)),
        action_names=("down", "stay", "up"),
        params=dict(Q=Q, G=G, mu_min=mu_min, mu_max=mu_max, lam=lam, h=h, b=b, c=c, s=s, gamma=gamma),
    )
