"""Exact next-count distributions, the exact-expectation Bellman operator and Q* (docs/model.md §2).

Given ``(g, a)``, the k sampled agents move independently, so the next count vector is
``c' = sum_x Multinomial(c_x, P_l[g, a, x])``. We build its distribution exactly by adding the
agents one at a time (a sparse convolution over partial count vectors), vectorized over every
count vector at once, and store it as one sparse CSR matrix ``M_b[c, c']`` per distinct local
kernel ``b`` (``(g, a)`` pairs with identical ``P_l[g, a]`` share one matrix). Then

    E[V(g', c') | g, c, a] = sum_g' P_g[g, a, g'] (M_{b(g,a)} V[g', :]^T)[c]

At k = n this is the lumped n-agent MDP, so value iteration on it gives the exact optimum Q*
(:func:`optimal_q`); :func:`check_tractable` is the one size rule for every exact computation.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from sqtorch.envs.base import GlobalLocalMDP
from sqtorch.runtime import GiB
from sqtorch.tabular.bellman import BellmanKernel, FixedPoint, greedy_backup, subsampled_reward, value_iteration
from sqtorch.tabular.counts import all_counts, all_sorted_states, num_counts, rank
from sqtorch.tabular.qtable import QTable

DEFAULT_TOL = 1e-12
DEFAULT_MAX_STATES = 200_000  # G * C(n+L-1, L-1) lumped states
DEFAULT_MAX_GIB = 4.0  # bound on the exact kernel's memory
KERNEL_BYTES = 24  # per stored transition: int64 key + float64 value + int64 index
DENSE_COALESCE_MAX = 1 << 25  # keys (count vector, partial next count) summed in a dense buffer


@dataclass
class CountKernel(BellmanKernel):
    """Exact transition law of count vectors of k agents (docs/model.md §2); greedy sweeps hold one Q."""

    k: int
    N: int
    P_g: Tensor  # [G, A, G]
    block_of: Tensor  # [G, A] -> index of the distinct local kernel
    M: list[Tensor]  # per distinct local kernel: sparse CSR [N, N], rows sum to 1

    def expected_next(self, V: Tensor) -> Tensor:
        """``E[V(g', c') | g, c, a]`` for ``V [G, N]`` -> ``[G, A, N]`` (float64 sums, V's dtype out)."""
        Vt = V.T.to(torch.float64)
        W = torch.stack([M @ Vt for M in self.M])  # [B, N, G']: sum_c' M[c, c'] V[g', c']
        W = W[self.block_of]  # [G, A, N, G']
        return torch.einsum("gah,ganh->gan", self.P_g, W).to(V.dtype)


def _successor(i: int, L: int, device: torch.device) -> Tensor:
    """``succ[d, y] = rank(d + e_y)`` for every count vector ``d`` of i agents: ``[N_i, L]``."""
    d = all_counts(i, L, device)
    return rank(d[:, None, :] + torch.eye(L, dtype=torch.int64, device=device)[None])


def local_kernels(env: GlobalLocalMDP) -> tuple[Tensor, Tensor]:
    """The distinct local kernels ``P_l[g, a]`` as ``[B, L, L]`` and the index of each ``(g, a)``'s, ``[G, A]``.

    Pairs with the same local kernel share the exact count kernel and the m-sample draws.
    """
    kernels, block_of = torch.unique(env.P_l.reshape(env.G * env.A, env.L, env.L), dim=0, return_inverse=True)
    return kernels, block_of.reshape(env.G, env.A)


def kernel_size_bound(env: GlobalLocalMDP, k: int) -> int:
    """Upper bound on the number of stored transitions (nonzeros) of :func:`count_kernel`."""
    N = num_counts(k, env.L)
    support = int((env.P_l > 0).sum(-1).max())
    return local_kernels(env)[0].shape[0] * N * min(N, support**k)


def kernel_gib(env: GlobalLocalMDP, k: int) -> float:
    """Upper bound on the GiB that :func:`count_kernel` allocates at k agents."""
    return kernel_size_bound(env, k) * KERNEL_BYTES / GiB


def check_tractable(
    env: GlobalLocalMDP, n: int, max_states: int = DEFAULT_MAX_STATES, max_gib: float = DEFAULT_MAX_GIB
) -> None:
    """The size rule of every exact computation: ``G * C(n+L-1, L-1) <= max_states`` and kernel ``<= max_gib``.

    Raises ``ValueError`` with the sizes otherwise.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n = {n!r} is outside the allowed range n >= 1 (number of local agents)")
    if not 0 < max_gib < math.inf or isinstance(max_states, bool) or not isinstance(max_states, int) or max_states < 1:
        raise ValueError(f"max_states = {max_states!r}, max_gib = {max_gib}: need an integer >= 1 and a number > 0")
    states, gib = env.G * num_counts(n, env.L), kernel_gib(env, n)
    if states > max_states or gib > max_gib:
        raise ValueError(
            f"the n-count MDP of env '{env.name}' at n = {n} is not tractable: G * C(n+L-1, L-1) = {states:,} "
            f"states, kernel up to {gib:.3g} GiB (limits max_states = {max_states:,}, max_gib = {max_gib:g}); "
            f"use Monte Carlo (evaluate_mc) or the sampled learner (m = an integer) instead"
        )


def is_tractable(env: GlobalLocalMDP, n: int, max_states: int = DEFAULT_MAX_STATES) -> bool:
    """Whether :func:`check_tractable` passes."""
    try:
        check_tractable(env, n, max_states)
    except ValueError:
        return False
    return True


def count_kernel(env: GlobalLocalMDP, k: int, max_memory_gib: float = DEFAULT_MAX_GIB) -> CountKernel:
    """Exact next-count distributions for every ``(g, c, a)`` (sparse, vectorized over c)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k = {k!r} is outside the allowed range k >= 1")
    if not 0 < max_memory_gib < math.inf:  # NaN would switch the guard off
        raise ValueError(f"max_memory_gib = {max_memory_gib} is outside the allowed range: a finite number > 0")
    need = kernel_gib(env, k)
    if need > max_memory_gib:
        raise ValueError(
            f"the exact count kernel at k = {k}, L = {env.L} may need up to {need:.1f} GiB, more "
            f"than max_memory_gib = {max_memory_gib}; use a sample size m instead of 'exact'"
        )
    L, N = env.L, num_counts(k, env.L)
    kernels, block_of = local_kernels(env)
    X = all_sorted_states(k, L, env.device)  # [N, k]: agent states of every count vector
    M = [_kernel_block(P, X, k, L, N) for P in kernels]  # built on the env's device
    return CountKernel(k, N, env.P_g, block_of.to(env.device), M)


def _coalesce(key: Tensor, value: Tensor, rows: int, cols: int) -> tuple[Tensor, Tensor, Tensor]:
    """Sum values with equal keys ``key = row * cols + col``; returns the distinct ``(row, col)`` in key order
    and their sums (the dense path drops zero sums: zero-probability outcomes are never stored)."""
    if rows * cols <= DENSE_COALESCE_MAX:  # a dense accumulator beats sorting when it is small
        total = torch.zeros(rows * cols, dtype=value.dtype, device=key.device).index_add_(0, key, value)
        row, col = total.view(rows, cols).nonzero(as_tuple=True)  # both coordinates, no integer division
        return row, col, total.index_select(0, row * cols + col)
    key, inverse = torch.unique(key, return_inverse=True)
    total = torch.zeros(len(key), dtype=value.dtype, device=key.device).index_add_(0, inverse, value)
    return key // cols, key % cols, total


def _kernel_block(P: Tensor, X: Tensor, k: int, L: int, N: int) -> Tensor:
    """Sparse ``[N, N]`` law of ``c'`` for one local kernel ``P [L, L]``, adding agents one by one (on X's device)."""
    dev = X.device
    row = torch.arange(N, device=dev)  # which count vector each entry belongs to
    part = torch.zeros(N, dtype=torch.int64, device=dev)  # rank of the partial next-count vector
    prob = torch.ones(N, dtype=P.dtype, device=dev)
    for i in range(k):  # agents of one count vector, not of the system
        succ = _successor(i, L, dev).reshape(-1)  # rank(d + e_y) at d * L + y
        p = P.index_select(0, X[:, i].index_select(0, row))  # [E, L]: where agent i of each entry may go
        e, y = (p > 0).nonzero(as_tuple=True)
        n_next = num_counts(i + 1, L)
        key = row.index_select(0, e).mul_(n_next).add_(succ.index_select(0, part.index_select(0, e).mul_(L).add_(y)))
        value = prob.index_select(0, e).mul_(p.view(-1).index_select(0, e.mul(L).add_(y)))  # prob[e] * p[e, y]
        row, part, prob = _coalesce(key, value, N, n_next)
    crow = torch.zeros(N + 1, dtype=torch.int64, device=dev)
    crow[1:] = torch.bincount(row, minlength=N).cumsum(0)
    if dev.type == "cpu" and len(part) < 2**31:  # MKL's 32-bit indices: no index copy per product, same sums
        crow, part = crow.to(torch.int32), part.to(torch.int32)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": matmul is all we use
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, part, prob, size=(N, N), check_invariants=False)


def max_sweeps(gamma: float, tol: float) -> int:
    """Sweeps after which ``gamma^t`` times a generous value scale (1e6) is below ``tol``."""
    return int(math.log(tol * (1 - gamma) / 1e6) / math.log(gamma)) + 10


def kernel_at(env: GlobalLocalMDP, n: int, kernel: CountKernel | None, max_gib: float) -> CountKernel:
    """``kernel`` if it is the n-count kernel of ``env``, else a new one (``ValueError`` if it is for another n)."""
    if kernel is None:
        return count_kernel(env, n, max_memory_gib=max_gib)
    if kernel.k != n or kernel.N != num_counts(n, env.L):
        raise ValueError(f"kernel is for k = {kernel.k} agents, expected the n-count kernel (n = {n})")
    return kernel


def solve_optimal(
    env: GlobalLocalMDP,
    n: int,
    tol: float = DEFAULT_TOL,
    max_states: int = DEFAULT_MAX_STATES,
    max_gib: float = DEFAULT_MAX_GIB,
    kernel: CountKernel | None = None,
) -> FixedPoint:
    """Exact value iteration on the n-count MDP: ``Q*`` as ``[G, A, N]`` and ``V*`` as ``[G, N]``."""
    check_tractable(env, n, max_states, max_gib)
    K = kernel_at(env, n, kernel, max_gib)
    fp = value_iteration(K, subsampled_reward(env, n), env.gamma, max_sweeps(env.gamma, tol), tol, greedy_backup)
    if not fp.converged:
        raise RuntimeError(f"value iteration did not reach tol = {tol:g} in {len(fp.residuals)} sweeps")
    return fp


def optimal_q(
    env: GlobalLocalMDP,
    n: int,
    tol: float = DEFAULT_TOL,
    max_states: int = DEFAULT_MAX_STATES,
    max_gib: float = DEFAULT_MAX_GIB,
    kernel: CountKernel | None = None,
) -> QTable:
    """The exact optimal ``Q*(g, C, a)`` of the n-agent problem, lumped on count vectors (docs/model.md §2).

    Also the exact-expectation SUBSAMPLE-Q table at k = n agents: ``optimal_q(env, k)`` is ``Q_k``
    of the paper with ``m = infinity``, a policy for any system of ``>= k`` agents.
    """
    fp = solve_optimal(env, n, tol, max_states, max_gib, kernel)
    meta = dict(m="exact", gamma=env.gamma, env_params=dict(env.params))
    return QTable(q=fp.q.permute(0, 2, 1).contiguous(), k=n, L=env.L, env_name=env.name, meta=meta)
