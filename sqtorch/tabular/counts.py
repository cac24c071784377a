"""Count vectors of k local states over L values, and their combinatorial ranking (docs/model.md §2).

A count vector ``c in {0..k}^L`` with ``sum(c) = k`` is the empirical distribution ``F = c / k`` of
k sampled local states. There are ``C(k + L - 1, k)`` of them. We rank a count vector through its
sorted multiset ``x_0 <= x_1 <= ... <= x_{k-1}``: with ``y_i = x_i + i`` (strictly increasing),

    rank(c) = sum_i C(y_i, i + 1)            (combinatorial number system, colex order)

which is a bijection onto ``{0 .. C(k + L - 1, k) - 1}``. Every function here is vectorized over
leading batch dimensions; none loops over count vectors.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor


def num_counts(k: int, L: int) -> int:
    """Number of count vectors of k agents over L local states: ``C(k + L - 1, k)``."""
    return math.comb(k + L - 1, k)


@lru_cache(maxsize=64)
def _binomial_cpu(k: int, L: int) -> Tensor:
    """``B[y, j] = C(y, j)`` for ``y < k + L``, ``j <= k`` (int64, CPU)."""
    y = torch.arange(k + L)
    return torch.tensor([[math.comb(int(a), j) for j in range(k + 1)] for a in y], dtype=torch.int64)


@lru_cache(maxsize=64)
def _binomial_on(k: int, L: int, device: torch.device) -> Tensor:
    return _binomial_cpu(k, L).to(device)


def binomial_table(k: int, L: int, device: torch.device | str = "cpu") -> Tensor:
    """``B[y, j] = C(y, j)`` for ``y < k + L`` and ``j <= k``, on ``device`` (cached per device: no copy per call)."""
    return _binomial_on(k, L, torch.device(device))


def rank_sorted(x: Tensor, L: int) -> Tensor:
    """Rank of the count vector whose sorted local states are ``x [..., k]`` (non-decreasing)."""
    k = x.shape[-1]
    binom = binomial_table(k, L, x.device)
    i = torch.arange(k, device=x.device)
    return binom[x + i, i + 1].sum(-1)


def rank_states(x: Tensor, L: int) -> Tensor:
    """Rank of the count vector of the (unsorted) local states ``x [..., k]``."""
    return rank_sorted(x.sort(-1).values, L)


def sorted_states(c: Tensor) -> Tensor:
    """Count vectors ``c [..., L]`` -> their sorted local states ``[..., k]``.

    ``x_i`` is the number of states ``v`` whose cumulative count ``c_0 + .. + c_v`` is ``<= i``.
    """
    totals = c.sum(-1)
    k = int(totals.max()) if totals.numel() else 0
    if (totals != k).any():
        raise ValueError("count vectors c must all have the same total k = sum(c)")
    cum = c.cumsum(-1)
    i = torch.arange(k, device=c.device)
    return (cum[..., None, :] <= i[:, None]).sum(-1)


def counts_of(x: Tensor, L: int) -> Tensor:
    """Local states ``x [..., k]`` -> count vectors ``[..., L]`` (int64)."""
    c = torch.zeros(*x.shape[:-1], L, dtype=torch.int64, device=x.device)
    return c.scatter_add_(-1, x, torch.ones_like(x))


def rank(c: Tensor) -> Tensor:
    """Rank of count vectors ``c [..., L]`` (all with the same total k)."""
    return rank_sorted(sorted_states(c), c.shape[-1])


def unrank_sorted(r: Tensor, k: int, L: int) -> Tensor:
    """Inverse of :func:`rank_sorted`: ranks ``r [...]`` -> sorted local states ``[..., k]``.

    Greedy decoding of the combinatorial number system: for ``i = k-1 .. 0`` take the largest
    ``y`` with ``C(y, i + 1) <= r`` and subtract it.
    """
    binom = binomial_table(k, L, r.device)
    rest = r.clone()
    x = torch.empty(*r.shape, k, dtype=torch.int64, device=r.device)
    for i in range(k - 1, -1, -1):  # k positions of one multiset, not agents of the system
        col = binom[:, i + 1].contiguous()
        y = torch.searchsorted(col, rest, right=True) - 1
        rest -= col[y]
        x[..., i] = y - i
    return x


def unrank(r: Tensor, k: int, L: int) -> Tensor:
    """Inverse of :func:`rank`: ranks ``r [...]`` -> count vectors ``[..., L]``."""
    return counts_of(unrank_sorted(r, k, L), L)


def all_sorted_states(k: int, L: int, device: torch.device | str = "cpu") -> Tensor:
    """Sorted local states of every count vector, in rank order: ``[C(k+L-1, k), k]``."""
    return unrank_sorted(torch.arange(num_counts(k, L), device=device), k, L)


STATE_COLUMNS_CACHE_MAX = 1 << 21  # k * N entries (8 MiB of int32) at most in the cache of state_columns


@lru_cache(maxsize=32)
def _state_columns_cached(k: int, L: int, device: torch.device) -> Tensor:
    return all_sorted_states(k, L, device).T.to(torch.int32).contiguous()


def state_columns(k: int, L: int, device: torch.device | str = "cpu") -> Tensor:
    """``X[i, rank(c)] = x_i``, the i-th sorted local state of every count vector: int32 ``[k, N]``.

    A pure function of ``(k, L)`` (the combinatorial number system), so small tables are cached
    (``k * N <= STATE_COLUMNS_CACHE_MAX``; callers must not modify the result); large ones are
    built anew (at k = 8, L = 25 they are 0.3 GiB).
    """
    device = torch.device(device)
    if k * num_counts(k, L) <= STATE_COLUMNS_CACHE_MAX:
        return _state_columns_cached(k, L, device)
    return all_sorted_states(k, L, device).T.to(torch.int32).contiguous()


def all_counts(k: int, L: int, device: torch.device | str = "cpu") -> Tensor:
    """Every count vector of k agents over L states, in rank order: ``[C(k+L-1, k), L]``."""
    return counts_of(all_sorted_states(k, L, device), L)


def rank_columns(x: list[Tensor], L: int, dtype: torch.dtype = torch.int64) -> Tensor:
    """Rank of the count vectors of k unsorted state columns ``x[i] [...]`` (agent-major layout).

    Sorts with an odd-even transposition network (k rounds of elementwise min/max on whole
    columns, so every op is a contiguous vector op) and sums ``C(x_i + i, i + 1)`` from a
    ``[k, L]`` lookup table. Same result as :func:`rank_states` on the stacked columns. Any
    integer dtype works (uint8 columns make the sorting network lighter); returns ``dtype``
    (int32 halves the traffic of the lookups; ranks are exact integers either way).
    """
    k = len(x)
    x = list(x)
    for r in range(k):
        for i in range(r % 2, k - 1, 2):
            x[i], x[i + 1] = torch.minimum(x[i], x[i + 1]), torch.maximum(x[i], x[i + 1])
    binom = binomial_table(k, L, x[0].device)
    i = torch.arange(k, device=x[0].device)
    table = binom[torch.arange(L, device=x[0].device)[None, :] + i[:, None], i[:, None] + 1].to(dtype)  # [k, L]
    out = table[0].index_select(0, x[0].reshape(-1).int()).view(x[0].shape)  # int32 indices: no int64 copy
    for i in range(1, k):
        out += table[i].index_select(0, x[i].reshape(-1).int()).view(x[0].shape)
    return out


def count_features(s_g: Tensor, counts: Tensor, G: int) -> Tensor:
    """``[onehot(s_g), counts / sum(counts)]`` as float32 ``[B, G + L]`` (the ``counts`` encoding).

    ``s_g [B]``, ``counts [B, L]`` (count vectors of n agents, or of a k-subset). Shared by the
    Gymnasium envs and by :class:`sqtorch.baselines.sb3.SB3Policy`, so a policy sees the same features.
    """
    B, L = counts.shape
    out = torch.zeros(B, G + L, dtype=torch.float32, device=counts.device)
    out[torch.arange(B, device=counts.device), s_g] = 1.0
    out[:, G:] = counts / counts.sum(-1, keepdim=True)
    return out
