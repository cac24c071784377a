"""Exact values of the n-agent system with local actions, lumped on counts (docs/model.md §7.5).

- :func:`optimal_value_mfq`: ``V*(g, C)`` of the n-agent system, the SUBSAMPLE-MFQ fixed point
  with the exact operator at ``k = n`` (its reward ``r_Delta`` is then the full reward).
- :func:`policy_value_mfq`: the exact value of the randomized decentralized policy of Algorithm 2
  (arXiv 2412.00661). Given ``(g, C)`` (C the state counts of all n agents) the global agent's
  k-subset has hypergeometric counts, so ``a_g ~ pi_g(. | g, C) = sum_c P(c | C) 1{greedy_g[g, c]}``;
  an agent in state x draws k - 1 of the other n - 1 agents (counts ``c'`` hypergeometric given
  ``C - e_x``) and plays ``a ~ rho(. | g, x, C) = sum_c' P(c' | C - e_x) 1{greedy_l[g, x, c' + e_x]}``.
  All draws are independent, so the pair counts ``Z`` of all n agents given ``(g, C)`` are a
  product of multinomials, ``Z_x ~ Mult(C_x, rho(. | g, x, C))``, independent of ``a_g``; the
  count process stays Markov, and ``V^pi`` is the fixed point of

      V(g, C) = sum_{a_g} pi_g(a_g | g, C) sum_{Z : c(Z) = C} P(Z | g, C) Q(g, a_g, Z),
      Q(g, a_g, Z) = r_n(g, a_g, Z) + gamma E[V(g', C') | g, a_g, Z]

  on the n-agent pair-count table, solved by the one solver
  (:func:`sqtorch.tabular.bellman.value_iteration`) with the exact kernel of the pair MDP.

Both are exact up to the solver's tolerance; their size rule is
:func:`sqtorch.tabular.exact.check_tractable` of the pair MDP (``G * C(n + L Al - 1, n)`` states).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sqtorch.checks import check_k
from sqtorch.envs.base import GlobalLocalMDP
from sqtorch.envs.local_actions import LocalActionMDP, as_local_action_mdp
from sqtorch.evaluation.exact import subsample_probs, subsampled_policy_probs
from sqtorch.tabular.bellman import subsampled_reward, value_iteration
from sqtorch.tabular.counts import all_counts, num_counts, rank
from sqtorch.tabular.exact import (
    DEFAULT_MAX_GIB,
    DEFAULT_MAX_STATES,
    DEFAULT_TOL,
    check_tractable,
    count_kernel,
    max_sweeps,
)
from sqtorch.tabular.mfq import pair_env, pair_index, solve_mfq
from sqtorch.tabular.mfq_policy import MFQPolicy


def check_tractable_mfq(
    env: LocalActionMDP | GlobalLocalMDP, n: int, max_states: int = DEFAULT_MAX_STATES, max_gib: float = DEFAULT_MAX_GIB
) -> None:
    """The size rule of the exact values: :func:`sqtorch.tabular.exact.check_tractable` of the pair MDP.

    ``G * C(n + L Al - 1, n)`` pair-count states at most ``max_states`` and the exact kernel at most
    ``max_gib``; otherwise ``ValueError`` with the sizes.
    """
    env = as_local_action_mdp(env)
    try:
        check_tractable(pair_env(env), n, max_states, max_gib)
    except ValueError as e:
        raise ValueError(
            f"exact values with local actions count (state, action) pairs: L * Al = {env.L} * {env.Al} = "
            f"{env.L * env.Al} values below; {e}"
        ) from e


def optimal_value_mfq(
    env: LocalActionMDP | GlobalLocalMDP,
    n: int,
    tol: float = DEFAULT_TOL,
    max_states: int = DEFAULT_MAX_STATES,
    max_gib: float = DEFAULT_MAX_GIB,
) -> Tensor:
    """``V*(g, C)`` of the n-agent system with local actions, ``[G, C(n + L - 1, n)]``."""
    env = as_local_action_mdp(env)
    check_tractable_mfq(env, n, max_states, max_gib)
    fp = solve_mfq(env, n, "exact", max_sweeps(env.gamma, tol), tol, max_memory_gib=max_gib)
    if not fp.converged:
        raise RuntimeError(f"value iteration did not reach tol = {tol:g} in {len(fp.residuals)} sweeps")
    return fp.v.index_select(1, pair_index(n, env.L, env.Al, env.device).rep)


def local_action_probs(policy: MFQPolicy, n: int) -> Tensor:
    """``rho[g, x, a, rank(C)]``: the probability that an agent in state x plays a (``[G, L, Al, N_n]``).

    Rows with ``C_x = 0`` hold the action of ``c' = 0`` (never used: no agent is in state x).
    """
    G, L, Al, k = policy.G, policy.L, policy.Al, policy.k
    dev = policy.greedy_l.device
    C = all_counts(n, L, dev)  # [N_n, L]
    H = subsample_probs(n - 1, k - 1, L, dev)  # [N_{n-1}, N_{k-1}]: counts of k-1 of the other n-1
    c_others = all_counts(k - 1, L, dev)  # [N_{k-1}, L]
    eye = torch.eye(L, dtype=torch.int64, device=dev)
    rho = torch.empty(G, L, Al, C.shape[0], dtype=torch.float64, device=dev)
    for x in range(L):  # local states, not agents
        valid = C[:, x] >= 1
        rows = torch.zeros(C.shape[0], dtype=torch.int64, device=dev)
        rows[valid] = rank(C[valid] - eye[x])
        act = policy.greedy_l[:, x, rank(c_others + eye[x])]  # [G, N_{k-1}]
        onehot = torch.nn.functional.one_hot(act, Al).to(torch.float64)  # [G, N_{k-1}, Al]
        rho[:, x] = torch.einsum("Nc,gca->gaN", H[rows], onehot)
    return rho


def pair_count_probs(rho: Tensor, n: int) -> Tensor:
    """``P(Z | g, c(Z)) = prod_x C_x! prod_a rho[g, x, a, C]^{Z_{x,a}} / Z_{x,a}!``: ``[G, C(n + L Al - 1, n)]``."""
    G, L, Al, _ = rho.shape
    dev = rho.device
    index = pair_index(n, L, Al, dev)
    Z = all_counts(n, L * Al, dev).view(-1, L, Al)
    fact = torch.tensor([float(math.factorial(i)) for i in range(n + 1)], dtype=torch.float64, device=dev)
    coef = fact[Z.sum(-1)].prod(-1) / fact[Z].prod(-1).prod(-1)  # exact integers (n small)
    per = rho[..., index.state_of].permute(0, 3, 1, 2).pow(Z.to(torch.float64))  # [G, NZ, L, Al]; 0^0 = 1
    return coef * per.flatten(2).prod(-1)


def policy_value_mfq(
    env: LocalActionMDP | GlobalLocalMDP,
    n: int,
    policy: MFQPolicy,
    tol: float = DEFAULT_TOL,
    max_states: int = DEFAULT_MAX_STATES,
    max_gib: float = DEFAULT_MAX_GIB,
) -> Tensor:
    """Exact ``V^pi(g, C)`` ``[G, C(n + L - 1, n)]`` of the decentralized policy of Algorithm 2 (module docstring)."""
    env = as_local_action_mdp(env)
    check_k(policy.k, n, "policy.k, agents the policy sees")
    policy.check_sizes(env.G, env.A, env.L, env.Al)
    check_tractable_mfq(env, n, max_states, max_gib)
    penv = pair_env(env)
    policy = policy.on(env.device)
    index = pair_index(n, env.L, env.Al, env.device)
    pi_g = subsampled_policy_probs(policy.greedy_g, n, policy.k, env.L, env.A)  # [G, A, N_n]
    w = pi_g.index_select(2, index.state_of) * pair_count_probs(local_action_probs(policy, n), n)[:, None, :]

    def backup(Q: Tensor) -> Tensor:
        Vc = Q.new_zeros(Q.shape[0], index.N).index_add_(1, index.state_of, (w * Q).sum(1))
        return Vc.index_select(1, index.state_of)

    kernel = count_kernel(penv, n, max_memory_gib=max_gib)
    fp = value_iteration(kernel, subsampled_reward(penv, n), env.gamma, max_sweeps(env.gamma, tol), tol, backup)
    if not fp.converged:
        raise RuntimeError(f"policy evaluation did not reach tol = {tol:g} in {len(fp.residuals)} sweeps")
    return fp.v.index_select(1, index.rep)


def num_lumped_states(env: LocalActionMDP | GlobalLocalMDP, n: int) -> int:
    """``G * C(n + L Al - 1, n)``: the rows of the n-agent pair-count table (the tractability measure)."""
    env = as_local_action_mdp(env)
    return env.G * num_counts(n, env.L * env.Al)


__all__ = [
    "check_tractable_mfq",
    "local_action_probs",
    "num_lumped_states",
    "optimal_value_mfq",
    "pair_count_probs",
    "policy_value_mfq",
]
