"""Exact values on the lumped n-agent count MDP (docs/model.md §2 exact variant, §5).

Agents are exchangeable, so the full n-agent system lumps losslessly onto states ``(g, C)`` with
``C`` the count vector of all n local states (``N_n = C(n+L-1, L-1)`` of them). On it:

- ``optimal_value(env, n)``: ``V*(g, C) = max_a Q*(g, C, a)``, the exact optimum of the full
  problem (:func:`sqtorch.tabular.exact.optimal_q` is ``Q*``).
- ``policy_value(env, n, greedy, k)``: the exact value of the subsampled policy of Algorithm 2.
  Given ``C``, the count ``c`` of a uniform k-subset is multivariate hypergeometric,
  ``P(c | C) = prod_x C(C_x, c_x) / C(n, k)``, so the policy is the randomized policy
  ``pi(a | g, C) = sum_c P(c | C) 1{a = greedy[g, c]}`` on the count MDP; it is evaluated with
  the one fixed-point solver (:func:`sqtorch.tabular.bellman.value_iteration`), no sampling noise.
- ``value_at(V, s_g, s_l)``: lumps full states ``(s_g [B], s_l [B, n])`` to ``V[s_g, rank(C)]``.

Every function takes ``kernel=`` (the exact n-count kernel, :func:`sqtorch.tabular.exact.
count_kernel`) so that several policies at the same n share one kernel.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from sqtorch.checks import check_k
from sqtorch.envs.base import GlobalLocalMDP, check_states
from sqtorch.tabular.bellman import subsampled_reward, value_iteration
from sqtorch.tabular.counts import all_counts, num_counts, rank_states
from sqtorch.tabular.exact import (
    DEFAULT_MAX_GIB,
    DEFAULT_MAX_STATES,
    DEFAULT_TOL,
    CountKernel,
    check_tractable,
    kernel_at,
    max_sweeps,
    solve_optimal,
)

CHUNK_ELEMS = 1 << 23  # elements of an intermediate [rows, N_k, L] tensor


def optimal_value(
    env: GlobalLocalMDP,
    n: int,
    tol: float = DEFAULT_TOL,
    max_states: int = DEFAULT_MAX_STATES,
    max_gib: float = DEFAULT_MAX_GIB,
    kernel: CountKernel | None = None,
) -> Tensor:
    """``V*(g, C) = max_a Q*(g, C, a)`` as ``[G, C(n+L-1, L-1)]`` (docs/model.md §5 optimality gap)."""
    return solve_optimal(env, n, tol, max_states, max_gib, kernel).v


def subsample_probs(n: int, k: int, L: int, device: torch.device | str = "cpu") -> Tensor:
    """Hypergeometric lumping ``P(c | C) = prod_x C(C_x, c_x) / C(n, k)`` as ``[N_n, N_k]``.

    Rows in rank order of the counts of n agents, columns of k agents (docs/model.md §5).
    """
    return torch.cat([blk for _, blk in _hypergeometric_blocks(n, k, L, device)])


def _hypergeometric_blocks(n: int, k: int, L: int, device: torch.device | str) -> Iterator[tuple[slice, Tensor]]:
    """Yield ``(row_slice, P(c | C)[rows])`` blocks of the ``[N_n, N_k]`` lumping matrix."""
    binom = torch.tensor(
        [[math.comb(a, b) for b in range(k + 1)] for a in range(n + 1)],
        dtype=torch.float64,
        device=device,
    )  # [n+1, k+1] exact integers, C(a, b) = 0 for b > a
    C, c = all_counts(n, L, device), all_counts(k, L, device)
    rows = max(1, CHUNK_ELEMS // (c.shape[0] * L))
    for start in range(0, C.shape[0], rows):  # memory chunks of count vectors
        blk = binom[C[start : start + rows, None, :], c[None, :, :]].prod(-1) / math.comb(n, k)
        yield slice(start, start + blk.shape[0]), blk


def subsampled_policy_probs(greedy: Tensor, n: int, k: int, L: int, A: int) -> Tensor:
    """``pi(a | g, C) = sum_c P(c | C) 1{a = greedy[g, c]}`` as ``[G, A, N_n]`` (docs/model.md §5)."""
    onehot = torch.nn.functional.one_hot(greedy, A).to(torch.float64)  # [G, N_k, A]
    if k == n:  # the subset is every agent: P(c | C) = 1{c = C}
        return onehot.permute(0, 2, 1).contiguous()
    pi = torch.empty(greedy.shape[0], A, num_counts(n, L), dtype=torch.float64, device=greedy.device)
    for rows, H in _hypergeometric_blocks(n, k, L, greedy.device):
        pi[:, :, rows] = torch.einsum("Nc,gca->gaN", H, onehot)
    return pi


def _check_greedy(env: GlobalLocalMDP, greedy: Tensor, n: int, k: int) -> None:
    check_k(k, n)
    expected = (env.G, num_counts(k, env.L))
    if tuple(greedy.shape) != expected:
        raise ValueError(
            f"greedy has shape {tuple(greedy.shape)} but env '{env.name}' at k = {k} needs "
            f"{expected} = [G, C(k+L-1, k)]"
        )
    if greedy.dtype.is_floating_point or greedy.min() < 0 or greedy.max() >= env.A:
        raise ValueError(f"greedy must hold integer actions in {{0..{env.A - 1}}}")


def policy_value(
    env: GlobalLocalMDP,
    n: int,
    greedy: Tensor,
    k: int,
    tol: float = DEFAULT_TOL,
    max_states: int = DEFAULT_MAX_STATES,
    max_gib: float = DEFAULT_MAX_GIB,
    kernel: CountKernel | None = None,
) -> Tensor:
    """Exact ``V^{pi_k}(g, C)`` ``[G, N_n]`` of the subsampled greedy policy (Algorithm 2, docs/model.md §5).

    ``greedy [G, C(k+L-1, k)]`` is the action table of a k-agent Q (``QTable.greedy()``); at
    every step the policy applies it to the counts of a fresh uniform k-subset of the n agents.
    """
    check_tractable(env, n, max_states, max_gib)
    greedy = torch.as_tensor(greedy, device=env.device)
    _check_greedy(env, greedy, n, k)
    K = kernel_at(env, n, kernel, max_gib)
    pi = subsampled_policy_probs(greedy, n, k, env.L, env.A)
    fp = value_iteration(
        K, subsampled_reward(env, n), env.gamma, max_sweeps(env.gamma, tol), tol, lambda Q: (pi * Q).sum(1)
    )
    if not fp.converged:
        raise RuntimeError(f"policy evaluation did not reach tol = {tol:g} in {len(fp.residuals)} sweeps")
    return fp.v


def _infer_L(N: int, n: int) -> int:
    L = 1
    while num_counts(n, L) < N:  # local-state alphabet sizes, not count vectors
        L += 1
    if num_counts(n, L) != N:
        raise ValueError(f"V has {N} count states, which is C(n+L-1, L-1) for no L at n = {n}")
    return L


def value_at(V: Tensor, s_g: Tensor, s_l: Tensor, L: int | None = None) -> Tensor:
    """``V[s_g, rank(counts(s_l))]`` for full states ``s_g [B]``, ``s_l [B, n]`` (docs/model.md §5)."""
    G, N = V.shape
    n = s_l.shape[-1]
    L = _infer_L(N, n) if L is None else L
    if num_counts(n, L) != N:
        raise ValueError(f"V has shape {tuple(V.shape)}, expected [G, C(n+L-1, L-1)] = [G, {num_counts(n, L)}]")
    check_states("s_g", s_g, G)
    check_states("s_l", s_l, L)
    s_g, s_l = s_g.to(V.device), s_l.to(V.device)
    return V[s_g, rank_states(s_l, L)]
