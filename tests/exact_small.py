"""Small exact count-MDP Q (SPEC §2, ``m = exact``) by brute-force enumeration of L^k successors.

Test-only ground truth for the neural tests: used when ``sqtorch.tabular.exact.exact_q`` is not
available, and cross-checked against it when it is.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from sqtorch.envs.base import GlobalLocalMDP
from sqtorch.tabular.counts import all_sorted_states, rank_states


def count_kernel_small(env: GlobalLocalMDP, k: int) -> Tensor:
    """``T[g, a, c, c']``: next-count distribution of k agents (enumerates L^k tuples)."""
    X = all_sorted_states(k, env.L)
    N = X.shape[0]
    Y = torch.tensor(list(itertools.product(range(env.L), repeat=k)))
    rY = rank_states(Y, env.L)
    T = torch.zeros(env.G, env.A, N, N, dtype=torch.float64)
    for g in range(env.G):
        for a in range(env.A):
            p = env.P_l[g, a][X[:, None, :], Y[None, :, :]].prod(-1)  # [N, L^k]
            T[g, a].index_add_(1, rY, p)
    return T


def exact_q_small(env: GlobalLocalMDP, k: int, tol: float = 1e-10) -> Tensor:
    """``Q[g, rank(c), a]`` of the exact Bellman operator at k, by value iteration."""
    X = all_sorted_states(k, env.L)
    T = count_kernel_small(env, k)
    r = (env.r_g[:, :, None] + env.r_l[:, :, X].mean(-1)).permute(0, 2, 1)  # [G, N, A]
    Q = torch.zeros_like(r)
    for _ in range(100_000):
        EV = torch.einsum("gah,hm->gam", env.P_g, Q.max(-1).values)
        Q_next = r + env.gamma * torch.einsum("gacm,gam->gca", T, EV)
        if (Q_next - Q).abs().max() < tol:
            return Q_next
        Q = Q_next
    return Q


def exact_q_reference(env: GlobalLocalMDP, k: int) -> Tensor:
    """The library's ``exact_q`` when it exists, else :func:`exact_q_small`."""
    try:
        from sqtorch.tabular.exact import exact_q
    except ImportError:
        return exact_q_small(env, k)
    return exact_q(env, k).q.double()
