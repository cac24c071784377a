"""Exact values on the lumped n-agent count MDP (SPEC §2 exact variant, SPEC §5).

Agents are exchangeable, so the full n-agent system lumps losslessly onto states ``(g, C)`` with
``C`` the count vector of all n local states (``N_n = C(n+L-1, L-1)`` of them). On it:

- ``optimal_value(env, n)``: ``V*(g, C) = max_a Q*(g, C, a)``, the exact optimum of the full
  problem (exact-expectation value iteration at k = n).
- ``policy_value(env, n, greedy, k)``: the exact value of the subsampled policy of Algorithm 2.
  Given ``C``, the count ``c`` of a uniform k-subset is multivariate hypergeometric,
  ``P(c | C) = prod_x C(C_x, c_x) / C(n, k)``, so the policy is the randomized policy
  ``pi(a | g, C) = sum_c P(c | C) 1{a = greedy[g, c]}`` on the count MDP; it is evaluated by
  iterating its Bellman operator to ``tol`` (no sampling noise).
- ``value_at(V, s_g, s_l)``: lumps full states ``(s_g [B], s_l [B, n])`` to ``V[s_g, rank(C)]``.

The next-count kernel ``C' = sum_x Multinomial(C_x, P_l[g, a, x])`` is the exact count kernel of
the tabular learner at k = n (``sqtorch.tabular.exact.count_kernel``); build it once and pass it
as ``kernel=`` to evaluate several policies at the same n.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sqtorch.envs.base import GlobalLocalMDP
from sqtorch.tabular.bellman import subsampled_reward
from sqtorch.tabular.counts import all_counts, num_counts, rank_states
from sqtorch.tabular.exact import CountKernel, count_kernel, kernel_size_bound

DEFAULT_TOL = 1e-12
NOISE_FLOOR = 1e-13  # relative float64 noise of one Bellman sweep
DEFAULT_MAX_STATES = 200_000
DEFAULT_MAX_GIB = 4.0
CHUNK_ELEMS = 1 << 23  # elements of an intermediate [rows, N_k, L] tensor
GIB = float(1 << 30)


def count_mdp_size(env: GlobalLocalMDP, n: int) -> tuple[int, float]:
    """States ``G * C(n+L-1, L-1)`` of the n-count MDP and a bound on its kernel's GiB."""
    return env.G * num_counts(n, env.L), kernel_size_bound(env, n) * 24 / GIB


def check_tractable(
    env: GlobalLocalMDP,
    n: int,
    max_states: int = DEFAULT_MAX_STATES,
    max_gib: float = DEFAULT_MAX_GIB,
) -> None:
    """Raise ``ValueError`` with the size when the n-count MDP is too large to solve exactly."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n = {n!r} is outside the allowed range n >= 1 (number of local agents)")
    states, gib = count_mdp_size(env, n)
    if states > max_states or gib > max_gib:
        raise ValueError(
            f"the n-count MDP of env '{env.name}' at n = {n} is not tractable: "
            f"G * C(n+L-1, L-1) = {states:,} states, kernel up to {gib:.3g} GiB "
            f"(limits max_states = {max_states:,}, max_gib = {max_gib:g}); "
            f"use Monte Carlo (evaluate_mc) for this n"
        )


def n_kernel(env: GlobalLocalMDP, n: int, kernel: CountKernel | None, max_gib: float) -> CountKernel:
    """The exact next-count kernel at k = n (``sqtorch.tabular.exact.count_kernel``), checked."""
    if kernel is None:
        return count_kernel(env, n, max_memory_gib=max_gib)
    if kernel.k != n or kernel.N != num_counts(n, env.L):
        raise ValueError(f"kernel is for k = {kernel.k} agents, expected the n-count kernel (n = {n})")
    return kernel


def count_rewards(env: GlobalLocalMDP, n: int) -> Tensor:
    """``r(g, C, a) = r_g[g, a] + (1/n) sum_x C_x r_l[g, a, x]`` as ``[G, N, A]`` (SPEC §1)."""
    return subsampled_reward(env, n).permute(0, 2, 1)


def expected_next(K: CountKernel, V: Tensor) -> Tensor:
    """``E[V(g', C') | g, C, a]`` as ``[G, N, A]`` for ``V [G, N]``."""
    return K.expected_next(V).permute(0, 2, 1)


def _iterate(env: GlobalLocalMDP, K: CountKernel, backup, tol: float, max_iter: int) -> Tensor:
    """Fixed point of ``V <- backup(r + gamma E V)`` to ``||V - V_fix||_inf <= tol``.

    ``backup`` is monotone and commutes with adding constants, so with ``D = T V - V`` the
    MacQueen-Porteus bounds ``T V + gamma/(1-gamma) [min D, max D]`` bracket the fixed point;
    we stop when that bracket is narrower than ``2 tol`` and return its midpoint. The span of
    ``D`` contracts faster than its sup norm, so this needs far fewer sweeps than ``||D|| < tol``.
    A sweep has float64 rounding noise of about ``1e-14 ||V||``, so the tolerance actually used
    is ``max(tol, NOISE_FLOOR * ||V||_inf)`` (``1e-13 * ||V||``).
    """
    R = count_rewards(env, K.k)
    V = torch.zeros(env.G, K.N, dtype=torch.float64, device=env.device)
    c = env.gamma / (1 - env.gamma)
    for _ in range(max_iter):  # contraction iterations
        V_new = backup(R + env.gamma * expected_next(K, V))
        D = V_new - V
        lo, hi = float(D.min()), float(D.max())
        V = V_new
        if c * (hi - lo) <= 2 * max(tol, NOISE_FLOOR * float(V.abs().max())):
            return V + c * (hi + lo) / 2
    raise RuntimeError(f"value iteration did not reach tol = {tol:g} in {max_iter} iterations")


def _max_iter(gamma: float, tol: float) -> int:
    return int(math.log(tol * (1 - gamma) / 1e6) / math.log(gamma)) + 10


def optimal_q(
    env: GlobalLocalMDP,
    n: int,
    tol: float = DEFAULT_TOL,
    max_states: int = DEFAULT_MAX_STATES,
    max_gib: float = DEFAULT_MAX_GIB,
    kernel: CountKernel | None = None,
) -> Tensor:
    """Exact ``Q*(g, C, a)`` ``[G, N_n, A]`` of the full n-agent problem (SPEC §2, k = n)."""
    check_tractable(env, n, max_states, max_gib)
    K = n_kernel(env, n, kernel, max_gib)
    V = _iterate(env, K, lambda Q: Q.max(-1).values, tol, _max_iter(env.gamma, tol))
    return count_rewards(env, n) + env.gamma * expected_next(K, V)


def optimal_value(
    env: GlobalLocalMDP,
    n: int,
    tol: float = DEFAULT_TOL,
    max_states: int = DEFAULT_MAX_STATES,
    max_gib: float = DEFAULT_MAX_GIB,
    kernel: CountKernel | None = None,
) -> Tensor:
    """``V*(g, C) = max_a Q*(g, C, a)`` as ``[G, C(n+L-1, L-1)]`` (SPEC §5 optimality gap)."""
    return optimal_q(env, n, tol, max_states, max_gib, kernel).max(-1).values


def subsample_probs(n: int, k: int, L: int, device: torch.device | str = "cpu") -> Tensor:
    """Hypergeometric lumping ``P(c | C) = prod_x C(C_x, c_x) / C(n, k)`` as ``[N_n, N_k]``.

    Rows in rank order of the counts of n agents, columns of k agents (SPEC §5).
    """
    return torch.cat([blk for _, blk in _hypergeometric_blocks(n, k, L, device)])


def _hypergeometric_blocks(n: int, k: int, L: int, device: torch.device | str):
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
    """``pi(a | g, C) = sum_c P(c | C) 1{a = greedy[g, c]}`` as ``[G, N_n, A]`` (SPEC §5)."""
    onehot = torch.nn.functional.one_hot(greedy, A).to(torch.float64)  # [G, N_k, A]
    if k == n:  # the subset is every agent: P(c | C) = 1{c = C}
        return onehot
    N = num_counts(n, L)
    pi = torch.empty(greedy.shape[0], N, A, dtype=torch.float64, device=greedy.device)
    for rows, H in _hypergeometric_blocks(n, k, L, greedy.device):
        pi[:, rows] = torch.einsum("Nc,gca->gNa", H, onehot)
    return pi


def _check_greedy(env: GlobalLocalMDP, greedy: Tensor, n: int, k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k = {k!r} is outside the allowed range 1 <= k <= n = {n}")
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
    """Exact ``V^{pi_k}(g, C)`` ``[G, N_n]`` of the subsampled greedy policy (SPEC §2 Alg. 2, §5).

    ``greedy [G, C(k+L-1, k)]`` is the action table of a k-agent Q (``QTable.greedy()``); at
    every step the policy applies it to the counts of a fresh uniform k-subset of the n agents.
    """
    check_tractable(env, n, max_states, max_gib)
    greedy = torch.as_tensor(greedy, device=env.device)
    _check_greedy(env, greedy, n, k)
    K = n_kernel(env, n, kernel, max_gib)
    pi = subsampled_policy_probs(greedy, n, k, env.L, env.A)
    return _iterate(env, K, lambda Q: (pi * Q).sum(-1), tol, _max_iter(env.gamma, tol))


def _infer_L(N: int, n: int) -> int:
    L = 1
    while num_counts(n, L) < N:  # local-state alphabet sizes, not count vectors
        L += 1
    if num_counts(n, L) != N:
        raise ValueError(f"V has {N} count states, which is C(n+L-1, L-1) for no L at n = {n}")
    return L


def value_at(V: Tensor, s_g: Tensor, s_l: Tensor, L: int | None = None) -> Tensor:
    """``V[s_g, rank(counts(s_l))]`` for full states ``s_g [B]``, ``s_l [B, n]`` (SPEC §5)."""
    G, N = V.shape
    n = s_l.shape[-1]
    L = _infer_L(N, n) if L is None else L
    if num_counts(n, L) != N:
        raise ValueError(
            f"V has shape {tuple(V.shape)}, expected [G, C(n+L-1, L-1)] = [G, {num_counts(n, L)}]"
        )
    for name, s, size in (("s_g", s_g, G), ("s_l", s_l, L)):
        bad = (s < 0) | (s >= size)
        if bad.any():
            idx = tuple(torch.nonzero(bad)[0].tolist())
            raise ValueError(
                f"{name}{list(idx)} = {int(s[idx])} is outside the state space {{0..{size - 1}}}"
            )
    s_g, s_l = s_g.to(V.device), s_l.to(V.device)
    return V[s_g, rank_states(s_l, L)]
