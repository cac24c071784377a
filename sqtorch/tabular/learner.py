"""SUBSAMPLE-Q learning (Anand & Qu, Algorithm 1; docs/model.md §2): value iteration of the empirical
Bellman operator

    (T^ Q)(g, c, a) = r_Delta(g, c, a) + gamma * sum_g' P_g[g, a, g'] (1/m) sum_j max_a' Q(g', c'_j, a')

over count vectors c of k sampled agents, with ``r_Delta(g, c, a) = r_g[g, a] + (1/k) sum_x
c_x r_l[g, a, x]``. The m next count vectors ``c'_j`` of every ``(b, c)`` (b: a distinct local
kernel ``P_l[g, a]``) are drawn once from a seeded generator (:mod:`sqtorch.tabular.sampling`) and
reused every iteration and by every ``(g, a)`` with that kernel, so ``T^`` is a gamma-contraction;
its fixed point is ``Q^est_{k,m}``. The expectation over g' is exact (g' and c' are independent
given ``(g, a)``; :mod:`sqtorch.tabular.sampled_kernel`): for a deterministic ``P_g`` (both
shipped environments) this is the paper's m-sample estimator; otherwise it has the same mean and
less variance. With ``m = "exact"`` the sample mean becomes the exact expectation
(:mod:`sqtorch.tabular.exact`); at k = n that is Q*. The tables are bitwise reproducible for any
thread count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from sqtorch.checks import check_int, check_k
from sqtorch.envs.base import GlobalLocalMDP
from sqtorch.envs.protocol import Simulator
from sqtorch.runtime import GiB, torch_threads
from sqtorch.tabular.bellman import BellmanKernel, subsampled_reward, value_iteration
from sqtorch.tabular.config import DTYPES, TabularConfig
from sqtorch.tabular.counts import num_counts, state_columns
from sqtorch.tabular.exact import count_kernel, local_kernels
from sqtorch.tabular.qtable import QTable
from sqtorch.tabular.sampled_kernel import SampledKernel, gather_chunk_rows
from sqtorch.tabular.sampling import sample_chunk_rows, sample_kernel
from sqtorch.tabular.simulator_kernel import simulator_kernel


@dataclass
class LearnResult:
    """Output of :func:`learn`: the table plus what it cost."""

    qtable: QTable
    residuals: list[float]
    iterations: int
    converged: bool
    build_seconds: float
    learn_seconds: float
    table_entries: int = field(default=0)

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("qtable")
        d["final_residual"] = self.residuals[-1] if self.residuals else float("nan")
        return d


def table_memory_gib(
    G: int,
    A: int,
    N: int,
    m: int | str,
    dtype: torch.dtype,
    blocks: int | None = None,
    workers: int = 2,
    k: int = 0,
    device: torch.device | str = "cpu",
) -> float:
    """Peak memory of the arrays :func:`learn` keeps live on ``device`` (not the interpreter and torch themselves).

    Counts: the samples (int32 ``[B, N, m]``, ``B = blocks`` distinct local kernels, at most
    ``G * A``); two ``[G, A, N]`` tables (r_Delta and the final Q of
    :func:`sqtorch.tabular.bellman.value_iteration`; its sweeps never hold a whole Q, and after
    the samples and r_Delta are freed the final Q and its ``[G, N, A]`` copy); four ``[G, N]``
    arrays (V and the buffer the next V is written into, their difference, V^T); per worker
    thread the larger of one gather chunk (int32 indices + values of ``rows * m * G``) and one
    sampling chunk (k float64 uniforms, k int32 bucket indices, k uint8 states and their
    impurity mask, then the sorting network and int32 ranks: ``(14 k + 16)`` bytes per row and
    sample); ``8 N k`` bytes for the sorted local states of the build (int32 ``[k, N]``) and the
    sampling threads' scratch, which the C allocator keeps resident after it is freed. Chunk rows
    depend on the device (:func:`gather_chunk_rows`). For ``m = "exact"`` the count kernel is sized
    separately (:func:`sqtorch.tabular.exact.count_kernel`). Checked against the peak resident
    memory in tests/test_tabular.py and bench/tabular.py, and against
    ``torch.cuda.max_memory_allocated`` in bench/gpu_check.sh.
    """
    s = torch.empty(0, dtype=dtype).element_size()
    tables = 2 * G * A * N * s + 4 * G * N * s + N * k * 8
    if m == "exact":
        return tables / GiB
    device = torch.device(device)
    B = G * A if blocks is None else blocks
    samples = B * N * int(m) * 4
    gather = min(N, gather_chunk_rows(device)) * int(m) * G * (4 + 2 * s)
    sampling = min(B * N, sample_chunk_rows(device)) * int(m) * (14 * k + 16)
    return (samples + tables + workers * max(gather, sampling)) / GiB


def distinct_local_kernels(env: Simulator) -> int:
    """Number B of distinct local kernels ``P_l[g, a]`` (the sample arrays are ``[B, N, m]``);
    ``G * A`` for a simulator without kernel tensors (one block per ``(g, a)``)."""
    if not isinstance(env, GlobalLocalMDP):
        return env.G * env.A
    return local_kernels(env)[0].shape[0]


def check_learnable(env: Simulator, m: int | str) -> None:
    """``ValueError`` in one line unless the tabular learner can run on ``env`` with ``m``.

    A :class:`GlobalLocalMDP` takes any ``m``; another simulator needs finite local states and an
    integer ``m`` (its samples are all there is: the exact operator needs the kernel tensors).
    """
    if isinstance(env, GlobalLocalMDP):
        return
    if not env.local.is_finite:
        raise ValueError(f"the tabular learner needs finite local states; env '{env.name}' has "
                         f"{env.local.describe()}: set algo.bins (the histogram discretization) or use algo=deepsets")
    if m == "exact":
        raise ValueError(f"algo.m = 'exact' needs the kernel tensors of a GlobalLocalMDP; env '{env.name}' is a "
                         "simulator (samples only): set algo.m=<next-state samples per entry>, e.g. 20")


def _validate(
    k: int, m: int | str, T: int, tol: float, seed: int, n: int | None, dtype: torch.dtype, max_memory_gib: float
) -> None:
    """Every argument of :func:`learn`, with a message naming it (numpy integers pass, bools do not)."""
    check_int("k", k, 1, "sampled local agents") if n is None else check_k(k, n)
    if m != "exact":
        check_int("m", m, 1, "next-state samples per entry, or 'exact'")
    check_int("T", T, 1, "maximum iterations")
    check_int("seed", seed, 0, "a seed")
    if not 0 < tol < math.inf:
        raise ValueError(f"tol = {tol} is outside the allowed range: a finite number > 0")
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype = {dtype} is not supported; allowed: {list(DTYPES.values())}")
    if not 0 < max_memory_gib < math.inf:  # NaN would switch the memory guard off
        raise ValueError(f"max_memory_gib = {max_memory_gib} is outside the allowed range: a finite number > 0")


def check_memory(
    env: Simulator, k: int, m: int | str, dtype: torch.dtype, max_memory_gib: float, workers: int
) -> float:
    """The GiB :func:`learn` needs at ``(k, m)`` with ``workers`` threads (:func:`table_memory_gib`).

    Raises ``ValueError`` naming the table size when that exceeds ``max_memory_gib``: the check
    :func:`learn` makes before it allocates anything (callers use it to record a refusal).
    """
    G, A, N = env.G, env.A, num_counts(k, env.L)
    B = distinct_local_kernels(env)
    need = table_memory_gib(G, A, N, m, dtype, blocks=B, workers=workers, k=k, device=env.device)
    if need > max_memory_gib:
        raise ValueError(
            f"the table at k = {k} has G*N*A = {G}*{N}*{A} = {G * N * A:,} entries and needs "
            f"{need:.2f} GiB with m = {m}, more than max_memory_gib = {max_memory_gib}; lower k or m, or use "
            f"the DeepSets network (algo=deepsets), whose size does not grow with k"
        )
    return need


def learn(
    env: Simulator,
    k: int,
    m: int | str = TabularConfig.m,
    T: int = TabularConfig.T,
    tol: float = TabularConfig.tol,
    seed: int = 0,
    n: int | None = None,
    dtype: torch.dtype = DTYPES[TabularConfig.dtype],
    max_memory_gib: float = TabularConfig.max_memory_gib,
    on_iteration: Callable[[int, float, float], None] | None = None,
    *,
    stop_early: bool = True,
) -> LearnResult:
    """Learn ``Q^est_{k,m}`` by iterating the empirical Bellman operator from Q = 0 (docs/model.md §2).

    Stops when the fixed point is known to within ``tol`` (MacQueen-Porteus bounds,
    :func:`sqtorch.tabular.bellman.value_iteration`) or after T iterations. ``on_iteration(t, residual,
    elapsed_seconds)`` is called after every iteration (for logging). The table size is checked
    against ``max_memory_gib`` before anything is allocated. Defaults: :class:`TabularConfig`.
    ``stop_early=False`` runs exactly T iterations (a fixed workload for benchmarks); the result
    is then the T-th iterate, not the midpoint of the first bracket within ``tol``.
    """
    _validate(k, m, T, tol, seed, n, dtype, max_memory_gib)
    check_learnable(env, m)
    k, m = int(k), m if m == "exact" else int(m)
    cuda = env.device.type == "cuda"  # one stream: no thread pool there
    workers = 1 if cuda else torch.get_num_threads()
    need = check_memory(env, k, m, dtype, max_memory_gib, workers)
    if cuda:  # the device's free memory is the real limit there
        free = torch.cuda.mem_get_info(env.device)[0] / GiB
        if need > free:
            raise ValueError(f"the table at k = {k} needs {need:.2f} GiB but {env.device} has {free:.2f} GiB free")
    t0 = time.perf_counter()
    with torch_threads(1):  # parallel over our own chunks only (sqtorch.tabular.buffers.run_tasks)
        kernel: BellmanKernel
        X = state_columns(k, env.L, env.device)  # for the draws and for r_Delta
        if not isinstance(env, GlobalLocalMDP):  # samples from the simulator's own methods
            kernel, r = simulator_kernel(env, k, int(m), seed, X, workers)
            r = r.to(dtype)
        else:
            if m == "exact":
                kernel = count_kernel(env, k, max_memory_gib=max_memory_gib)
            else:
                kernel = sample_kernel(env, k, m, seed, workers, X=X)
            r = subsampled_reward(env, k, X).to(dtype)
        del X
        build_seconds = time.perf_counter() - t0
        fp = value_iteration(kernel, r, env.gamma, T, tol, on_iteration=on_iteration, stop_early=stop_early)
        del kernel, r  # freed before the [G, N, A] copy (table_memory_gib counts on it)
        q = fp.q.permute(0, 2, 1).contiguous()
    residuals, converged = fp.residuals, fp.converged
    qtable = QTable(
        q=q,
        k=k,
        L=env.L,
        env_name=env.name,
        meta=dict(m=m, seed=seed, gamma=env.gamma, env_params=dict(getattr(env, "params", {}))),
    )
    return LearnResult(
        qtable=qtable,
        residuals=residuals,
        iterations=len(residuals),
        converged=converged,
        build_seconds=build_seconds,
        learn_seconds=time.perf_counter() - t0 - build_seconds,
        table_entries=qtable.q.numel(),
    )


__all__ = [
    "LearnResult",
    "SampledKernel",
    "distinct_local_kernels",
    "gather_chunk_rows",
    "learn",
    "sample_chunk_rows",
    "sample_kernel",
    "table_memory_gib",
]
