"""Brute force on the joint n-agent MDP with local actions, from the definitions (docs/model.md §7).

States ``(g, x_1..x_n)``, actions ``(a_g, a_1..a_n)``, both in ``itertools.product`` order; no
count vectors, no symmetry: the oracle for sqtorch's lumped SUBSAMPLE-MFQ computations.
"""

import itertools

import torch

from sqtorch.envs.local_actions import LocalActionMDP


def joint_model(env: LocalActionMDP, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(P [G, A, Al^n, L^n, L^n], r [G, L^n, A, Al^n], xs [L^n, n], acts [Al^n, n])`` of the joint MDP."""
    G, A, Al, L = env.G, env.A, env.Al, env.L
    xs = torch.tensor(list(itertools.product(range(L), repeat=n)), dtype=torch.int64).view(-1, n)
    acts = torch.tensor(list(itertools.product(range(Al), repeat=n)), dtype=torch.int64).view(-1, n)
    P = torch.ones(G, A, 1, 1, 1, dtype=torch.float64)
    for _ in range(n):  # joint local kernel: Kronecker product over agents (and their actions)
        P = torch.einsum("gaUij,gaVkl->gaUVikjl", P, env.P_l)
        s = P.shape
        P = P.reshape(G, A, s[2] * s[3], s[4] * s[5], s[6] * s[7])
    # r[g, xs, a_g, as] = r_g[g, a_g] + (1/n) sum_i r_l[g, a_g, as_i, xs_i]
    rl = env.r_l[:, :, acts[None, :, :], xs[:, None, :]]  # [G, A, L^n, Al^n, n]
    r = env.r_g[:, None, :, None] + rl.mean(-1).permute(0, 2, 1, 3)
    return P, r, xs, acts


def _expected(env: LocalActionMDP, P: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """``E[V(g', xs') | g, xs, a_g, as]`` as ``[G, L^n, A, Al^n]``."""
    w = torch.einsum("gah,hj->gaj", env.P_g, V)  # [G, A, L^n']
    ev = torch.einsum("gaUij,gaj->gaUi", P, w)  # [G, A, Al^n, L^n]
    return ev.permute(0, 3, 1, 2)


def joint_optimal_q(env: LocalActionMDP, n: int, tol: float = 1e-13) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``Q*(g, xs, a_g, as)`` ``[G, L^n, A, Al^n]`` by value iteration on the joint MDP, with ``xs`` and ``acts``."""
    P, r, xs, acts = joint_model(env, n)
    q = torch.zeros_like(r)
    while True:
        q_next = r + env.gamma * _expected(env, P, q.flatten(2).amax(-1))
        if (q_next - q).abs().max() < tol:
            return q_next, xs, acts
        q = q_next


def joint_policy_value(env: LocalActionMDP, n: int, pi: torch.Tensor, tol: float = 1e-13) -> torch.Tensor:
    """``V^pi(g, xs)`` ``[G, L^n]`` of a joint policy ``pi [G, L^n, A, Al^n]`` (probabilities)."""
    P, r, _, _ = joint_model(env, n)
    V = torch.zeros(env.G, env.L**n, dtype=torch.float64)
    while True:
        V_next = (pi * (r + env.gamma * _expected(env, P, V))).flatten(2).sum(-1)
        if (V_next - V).abs().max() < tol:
            return V_next
        V = V_next


def decentralized_joint_policy(policy, env: LocalActionMDP, n: int) -> torch.Tensor:
    """``pi(a_g, as | g, xs)`` of Algorithm 2 by enumerating every subset each agent may draw.

    The global agent draws each k-subset of ``[n]`` with probability ``1 / C(n, k)``; agent i each
    (k-1)-subset of ``[n] \\ {i}`` with probability ``1 / C(n-1, k-1)``; all independently.
    """
    G, A, Al, L, k = env.G, env.A, env.Al, env.L, policy.k
    xs = torch.tensor(list(itertools.product(range(L), repeat=n)), dtype=torch.int64).view(-1, n)
    acts = torch.tensor(list(itertools.product(range(Al), repeat=n)), dtype=torch.int64).view(-1, n)
    S = xs.shape[0]
    g = torch.arange(G).repeat_interleave(S)  # rows (g, xs)
    x = xs.repeat(G, 1)
    subsets = list(itertools.combinations(range(n), k))
    p_g = torch.zeros(G * S, A, dtype=torch.float64)
    for sub in subsets:
        a = policy.act_global(g, x[:, list(sub)])
        p_g[torch.arange(G * S), a] += 1.0 / len(subsets)
    p_l = torch.zeros(G * S, n, Al, dtype=torch.float64)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        subs = list(itertools.combinations(others, k - 1))
        for sub in subs:
            a = policy.act_local(g, x[:, i], x[:, list(sub)])
            p_l[torch.arange(G * S), i, a] += 1.0 / len(subs)
    p_as = torch.ones(G * S, acts.shape[0], dtype=torch.float64)
    for i in range(n):
        p_as = p_as * p_l[:, i, :][:, acts[:, i]]
    return (p_g[:, :, None] * p_as[:, None, :]).view(G, S, A, -1)
