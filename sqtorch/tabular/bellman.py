"""The one fixed-point solver of the count-vector Bellman operators (docs/model.md §2, §5).

Every exact or learned value in sqtorch is the fixed point of

    V <- backup(r + gamma * E[V(g', c')])        Q = r + gamma * E[V(g', c')]   (layout [G, A, N])

with ``backup(Q) = max_a Q`` for the optimal / SUBSAMPLE-Q operator (paper, Algorithm 1) and
``backup(Q) = sum_a pi(a | g, c) Q`` for the value of a fixed policy. The expectation comes from
a :class:`BellmanKernel`: exact (:class:`sqtorch.tabular.exact.CountKernel`) or the mean over m
fixed samples (:class:`sqtorch.tabular.sampled_kernel.SampledKernel`).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from sqtorch.envs.base import GlobalLocalMDP
from sqtorch.tabular.counts import state_columns

REWARD_CHUNK = 1 << 14  # count vectors per gather of subsampled_reward (k * G * A * 2^14 values)
NOISE_ULPS = 450  # one sweep's relative rounding noise, in units of the dtype's eps (1e-13 in float64)


class BellmanKernel(ABC):
    """The next-state expectation of a count-vector Bellman operator, and its greedy sweep."""

    @abstractmethod
    def expected_next(self, V: Tensor) -> Tensor:
        """``E[V(g', c') | g, c, a]`` for ``V [G, N]`` -> ``[G, A, N]``."""

    def greedy_sweep(self, V: Tensor, r: Tensor, gamma: float, out: Tensor | None = None) -> Tensor:
        """``max_a (r + gamma E[V])`` -> ``[G, N]`` (the greedy backup; into ``out`` if given).

        This default holds one Q ``[G, A, N]``; a kernel may override it with a fused sweep that
        never holds a whole Q and returns the same values.
        """
        return torch.amax(_sweep(self, r, gamma, V), 1, out=out)


Backup = Callable[[Tensor], Tensor]  # Q [G, A, N] -> V [G, N]


def greedy_backup(Q: Tensor) -> Tensor:
    """``V(g, c) = max_a Q(g, a, c)``: the optimal (SUBSAMPLE-Q) backup."""
    return Q.amax(1)


@dataclass
class FixedPoint:
    """Result of :func:`value_iteration`: ``q [G, A, N]``, ``v [G, N]`` and the error bounds per sweep."""

    q: Tensor
    v: Tensor
    residuals: list[float]
    converged: bool


def subsampled_reward(env: GlobalLocalMDP, k: int, X: Tensor | None = None) -> Tensor:
    """``r_Delta[g, a, c] = r_g[g, a] + (1/k) sum_x c_x r_l[g, a, x]`` (docs/model.md §2), ``[G, A, N]``.

    Summed over the k sorted local states of each count vector (``X = state_columns(k, L)``,
    int32 ``[k, N]``; pass it to reuse it) in position order, by chunks of ``REWARD_CHUNK``
    count vectors: one gather of ``r_l[g, a, x_i]`` for every ``(i, g, a)`` per chunk, so nothing
    of size ``N * L`` (or ``k * N * G * A``) is allocated.
    """
    X = state_columns(k, env.L, env.device) if X is None else X
    G, A, L, N = env.G, env.A, env.L, X.shape[1]
    r_l = env.r_l.reshape(-1)
    rows = torch.arange(0, G * A * L, L, dtype=torch.int32, device=r_l.device)[None, :, None]  # (g, a) offsets
    total = torch.empty(G * A, N, dtype=r_l.dtype, device=r_l.device)
    for s in range(0, N, REWARD_CHUNK):
        e = min(s + REWARD_CHUNK, N)
        vals = r_l.index_select(0, (X[:, None, s:e] + rows).view(-1)).view(k, G * A, e - s)
        acc = total[:, s:e]
        acc.copy_(vals[0])
        for i in range(1, k):  # positions within one count vector, in order: the same sums as ever
            acc += vals[i]
    return total.div_(k).add_(env.r_g.reshape(G * A, 1)).view(G, A, N)


def _sweep(kernel: BellmanKernel, r: Tensor, gamma: float, V: Tensor) -> Tensor:
    """``Q = r + gamma E[V(next)]`` with one table-sized allocation (the kernel's output)."""
    return kernel.expected_next(V).mul_(gamma).add_(r)


def _backup_sweep(kernel: BellmanKernel, r: Tensor, gamma: float, V: Tensor, backup: Backup, spare: Tensor) -> Tensor:
    """``backup(r + gamma E[V(next)])``; the greedy backup is the kernel's :meth:`BellmanKernel.greedy_sweep`,
    written into ``spare`` (a free ``[G, N]`` buffer)."""
    if backup is greedy_backup:
        return kernel.greedy_sweep(V, r, gamma, out=spare)
    return backup(_sweep(kernel, r, gamma, V))


def value_iteration(
    kernel: BellmanKernel,
    r: Tensor,
    gamma: float,
    T: int,
    tol: float,
    backup: Backup = greedy_backup,
    on_iteration: Callable[[int, float, float], None] | None = None,
    stop_early: bool = True,
) -> FixedPoint:
    """Iterate ``V <- backup(r + gamma E V)`` from 0 until ``||V - V_fix||_inf <= tol`` or T sweeps.

    ``backup`` is monotone and commutes with adding constants, so with ``D = V_{t+1} - V_t`` the
    MacQueen-Porteus bounds ``V_{t+1} + gamma/(1-gamma) [min D, max D]`` bracket the fixed point.
    The residual of sweep t is half that bracket's width, the error bound of its midpoint; we stop
    when it is ``<= tol`` and return the midpoint and ``Q = r + gamma E[V]`` from it (one more
    sweep, so ``||Q - Q_fix||_inf <= gamma tol``). The span of D contracts faster than its sup norm,
    so this needs far fewer sweeps than stopping on ``||D||_inf``. Rounding makes a sweep noisy at
    about ``NOISE_ULPS * eps * ||V||_inf``: ``tol`` is raised to that floor. ``on_iteration(t,
    residual, elapsed_seconds)`` is called after every sweep. Only ``r``, one Q and two V are alive
    (no Q during greedy sweeps of a kernel that fuses :meth:`BellmanKernel.greedy_sweep`).
    ``stop_early=False`` runs all T sweeps (benchmarks of a fixed workload); ``converged`` then says
    whether the last one met the bound.
    """
    V = torch.zeros(r.shape[0], r.shape[2], dtype=r.dtype, device=r.device)
    spare, D = torch.empty_like(V), torch.empty_like(V)  # V and spare alternate: no [G, N] allocation per sweep
    c = gamma / (1.0 - gamma)
    eps = NOISE_ULPS * torch.finfo(r.dtype).eps
    residuals: list[float] = []
    converged = False
    t0 = time.perf_counter()
    for t in range(T):
        V_new = _backup_sweep(kernel, r, gamma, V, backup, spare)
        lo, hi, v_lo, v_hi = torch.stack([*torch.sub(V_new, V, out=D).aminmax(), *V_new.aminmax()]).tolist()  # 1 sync
        shift = c * (hi + lo) / 2
        V, spare = V_new.add_(shift), V  # midpoint of the bracket
        residuals.append(c * (hi - lo) / 2)
        if on_iteration is not None:
            on_iteration(t, residuals[-1], time.perf_counter() - t0)
        converged = residuals[-1] <= max(tol, eps * max(abs(v_lo + shift), abs(v_hi + shift)))  # eps * ||V||_inf
        if converged and stop_early:
            break
    return FixedPoint(_sweep(kernel, r, gamma, V), V, residuals, converged)
