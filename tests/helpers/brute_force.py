"""Brute-force references built from the definitions, independent of sqtorch's count machinery."""

import itertools

import torch

from sqtorch.envs.base import GlobalLocalMDP


def joint_value_iteration(env: GlobalLocalMDP, n: int, tol: float = 1e-13) -> tuple[torch.Tensor, torch.Tensor]:
    """Q*(g, x_1..x_n, a) on the full joint MDP with L^n * G states (docs/model.md §1), by value iteration.

    Returns ``(Q [G, L^n, A], tuples [L^n, n])`` with tuples in ``itertools.product`` order.
    """
    G, A, L = env.G, env.A, env.L
    tuples = torch.tensor(list(itertools.product(range(L), repeat=n)))  # [L^n, n]
    P_local = torch.ones(G, A, 1, 1, dtype=torch.float64)
    for _ in range(n):  # joint local kernel = Kronecker product of the agents' kernels
        P_local = torch.einsum("gaij,gakl->gaikjl", P_local, env.P_l).reshape(
            G, A, P_local.shape[2] * L, P_local.shape[3] * L
        )
    r = env.r_g[:, None, :] + env.r_l[:, :, tuples].mean(-1).permute(0, 2, 1)  # [G, L^n, A]
    q = torch.zeros_like(r)
    while True:
        v = q.amax(-1)  # [G, L^n]
        w = torch.einsum("gah,hj->gaj", env.P_g, v)  # E over g' of V(g', x')
        ev = (P_local @ w[..., None])[..., 0]  # [G, A, L^n]: E over x' given x
        q_next = r + env.gamma * ev.permute(0, 2, 1)
        if (q_next - q).abs().max() < tol:
            return q_next, tuples
        q = q_next
