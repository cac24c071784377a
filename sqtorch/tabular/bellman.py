"""The SUBSAMPLE-Q Bellman operator on count vectors (SPEC §2), shared by the exact and m-sample learners.

    (T Q)(g, c, a) = r_Delta(g, c, a) + gamma * E[max_a' Q(g', c', a')]

where the expectation is exact (:class:`sqtorch.tabular.exact.CountKernel`) or the mean over m
fixed samples (:class:`sqtorch.tabular.learner.SampledKernel`). Both kernels expose
``expected_next(V [G, N]) -> [G, A, N]``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from sqtorch.envs.base import GlobalLocalMDP
from sqtorch.tabular.counts import all_counts


class NextStateKernel(Protocol):
    def expected_next(self, V: Tensor) -> Tensor: ...


def subsampled_reward(env: GlobalLocalMDP, k: int) -> Tensor:
    """``r_Delta[g, a, c] = r_g[g, a] + (1/k) sum_x c_x r_l[g, a, x]`` (SPEC §2), ``[G, A, N]``."""
    C = all_counts(k, env.L, env.device).to(torch.float64)  # [N, L]
    return env.r_g[:, :, None] + env.r_l @ C.T / k


def value_iteration(
    kernel: NextStateKernel,
    r: Tensor,
    gamma: float,
    T: int,
    tol: float,
    on_iteration: Callable[[int, float, float], None] | None = None,
) -> tuple[Tensor, list[float], bool]:
    """Iterate ``Q <- r + gamma * E[max_a' Q(next)]`` from 0; returns ``(Q [G, A, N], residuals, converged)``."""
    q = torch.zeros_like(r)
    residuals: list[float] = []
    t0 = time.perf_counter()
    for t in range(T):
        q_next = r + gamma * kernel.expected_next(q.amax(1))
        residual = float((q_next - q).abs().max())
        q = q_next
        residuals.append(residual)
        if on_iteration is not None:
            on_iteration(t, residual, time.perf_counter() - t0)
        if residual < tol:
            return q, residuals, True
    return q, residuals, False


