"""Exact next-count distributions and the exact-expectation Bellman operator (SPEC §2, m = exact).

Given ``(g, a)``, the k sampled agents move independently, so the next count vector is
``c' = sum_x Multinomial(c_x, P_l[g, a, x])``. We build its distribution exactly by adding the
agents one at a time (a sparse convolution over partial count vectors), vectorized over every
count vector at once, and store it as one sparse CSR matrix ``M_b[c, c']`` per distinct local
kernel ``b`` (``(g, a)`` pairs with identical ``P_l[g, a]`` share one matrix). Then

    E[V(g', c') | g, c, a] = sum_g' P_g[g, a, g'] (M_{b(g,a)} V[g', :]^T)[c]

At k = n this is the lumped n-agent MDP, so value iteration on it gives the exact optimum Q*.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from sqtorch.envs.base import GlobalLocalMDP
from sqtorch.tabular.bellman import subsampled_reward, value_iteration
from sqtorch.tabular.counts import all_counts, all_sorted_states, num_counts, rank
from sqtorch.tabular.qtable import QTable

GiB = 2**30
DENSE_COALESCE_MAX = 1 << 25  # keys (count vector, partial next count) summed in a dense buffer


@dataclass
class CountKernel:
    """Exact transition law of count vectors of k agents (SPEC §2)."""

    k: int
    N: int
    P_g: Tensor  # [G, A, G]
    block_of: Tensor  # [G, A] -> index of the distinct local kernel
    M: list[Tensor]  # per distinct local kernel: sparse CSR [N, N], rows sum to 1

    def expected_next(self, V: Tensor) -> Tensor:
        """``E[V(g', c') | g, c, a]`` for ``V [G, N]`` -> ``[G, A, N]``."""
        W = torch.stack([M @ V.T for M in self.M])  # [B, N, G']: sum_c' M[c, c'] V[g', c']
        W = W[self.block_of]  # [G, A, N, G']
        return torch.einsum("gah,ganh->gan", self.P_g.to(V.dtype), W)


def _successor(i: int, L: int) -> Tensor:
    """``succ[d, y] = rank(d + e_y)`` for every count vector ``d`` of i agents: ``[N_i, L]``."""
    d = all_counts(i, L)
    return rank(d[:, None, :] + torch.eye(L, dtype=torch.int64)[None])


def kernel_size_bound(env: GlobalLocalMDP, k: int) -> int:
    """Upper bound on the number of stored transitions (nonzeros) of :func:`count_kernel`."""
    N = num_counts(k, env.L)
    support = int((env.P_l > 0).sum(-1).max())
    blocks = len(torch.unique(env.P_l.reshape(env.G * env.A, -1), dim=0))
    return blocks * N * min(N, support**k)


def count_kernel(env: GlobalLocalMDP, k: int, max_memory_gib: float = 4.0) -> CountKernel:
    """Exact next-count distributions for every ``(g, c, a)`` (sparse, vectorized over c)."""
    if k < 1:
        raise ValueError(f"k = {k} is outside the allowed range k >= 1")
    need = kernel_size_bound(env, k) * 24 / GiB  # int64 key + float64 value + int64 index
    if need > max_memory_gib:
        raise ValueError(
            f"the exact count kernel at k = {k}, L = {env.L} may need up to {need:.1f} GiB, more "
            f"than max_memory_gib = {max_memory_gib}; use a sample size m instead of 'exact'"
        )
    L, N = env.L, num_counts(k, env.L)
    kernels, block_of = torch.unique(env.P_l.reshape(env.G * env.A, L, L), dim=0, return_inverse=True)
    X = all_sorted_states(k, L)  # [N, k]: agent states of every count vector
    M = [_kernel_block(P, X, k, L, N).to(env.device) for P in kernels.cpu()]
    return CountKernel(k, N, env.P_g, block_of.reshape(env.G, env.A).to(env.device), M)


def _coalesce(key: Tensor, value: Tensor, key_range: int) -> tuple[Tensor, Tensor]:
    """Sum values with equal keys; returns sorted unique keys and their sums."""
    if key_range <= DENSE_COALESCE_MAX:  # a dense accumulator beats sorting when it is small
        total = torch.zeros(key_range, dtype=value.dtype).index_add_(0, key, value)
        key = torch.nonzero(total).squeeze(1)  # zero-probability outcomes are never stored
        return key, total[key]
    key, inverse = torch.unique(key, return_inverse=True)
    return key, torch.zeros(len(key), dtype=value.dtype).index_add_(0, inverse, value)


def _kernel_block(P: Tensor, X: Tensor, k: int, L: int, N: int) -> Tensor:
    """Sparse ``[N, N]`` law of ``c'`` for one local kernel ``P [L, L]``, adding agents one by one."""
    row = torch.arange(N)  # which count vector each entry belongs to
    part = torch.zeros(N, dtype=torch.int64)  # rank of the partial next-count vector
    prob = torch.ones(N, dtype=torch.float64)
    for i in range(k):  # agents of one count vector, not of the system
        succ = _successor(i, L)  # [N_i, L]
        p = P[X[row, i]]  # [E, L]: where agent i of each entry may go
        keep = p > 0
        e, y = keep.nonzero(as_tuple=True)
        n_next = num_counts(i + 1, L)
        key, prob = _coalesce(row[e] * n_next + succ[part[e], y], prob[e] * p[e, y], N * n_next)
        row, part = key // n_next, key % n_next
    crow = torch.zeros(N + 1, dtype=torch.int64)
    crow[1:] = torch.bincount(row, minlength=N).cumsum(0)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": matmul is all we use
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, part, prob, size=(N, N), check_invariants=False)


def exact_q(env: GlobalLocalMDP, k: int, tol: float = 1e-12, T: int = 100_000) -> QTable:
    """Exact-expectation SUBSAMPLE-Q at k; at k = n it is the optimal Q* of the n-agent problem."""
    kernel = count_kernel(env, k)
    q, _, converged = value_iteration(kernel, subsampled_reward(env, k), env.gamma, T, tol)
    if not converged:
        raise RuntimeError(f"exact value iteration did not reach tol = {tol} in T = {T} iterations")
    return QTable(q=q.permute(0, 2, 1).contiguous(), k=k, L=env.L, env_name=env.name, meta=dict(m="exact"))
