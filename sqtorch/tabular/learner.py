"""SUBSAMPLE-Q learning (docs/model.md §2, Algorithm 1): value iteration of the empirical Bellman operator

    (T^ Q)(g, c, a) = r_Delta(g, c, a) + (gamma / m) sum_j max_a' Q(g'_j, c'_j, a')

over count vectors c of k sampled agents, with ``r_Delta(g, c, a) = r_g[g, a] + (1/k) sum_x
c_x r_l[g, a, x]``. The m next states of every ``(g, c, a)`` are drawn once from a seeded
generator (``g'_j ~ P_g[g, a]``, every agent of c moves with ``P_l``) and reused every iteration,
so ``T^`` is a gamma-contraction; its fixed point is ``Q^est_{k,m}``. With ``m = "exact"`` the
sample mean becomes the exact expectation (:mod:`sqtorch.tabular.exact`); at k = n that is Q*.

Layout: next-state indices ``g' * N + rank(c')`` as int32 ``[G, A, N, m]``; an iteration is one
gather ``V[idx]`` per chunk, run on a thread pool (torch releases the GIL), chunks fixed so the
result is bitwise reproducible whatever the thread count.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from sqtorch.envs.base import GlobalLocalMDP
from sqtorch.envs.simulator import LookupSampler
from sqtorch.runtime import GiB
from sqtorch.tabular.bellman import subsampled_reward, value_iteration
from sqtorch.tabular.counts import all_sorted_states, num_counts, rank_columns
from sqtorch.tabular.exact import CountKernel, count_kernel
from sqtorch.tabular.qtable import QTable

T_ = TypeVar("T_")
CHUNK_ROWS = 1 << 15  # table rows per gather chunk (fits L2 with m = 10)
SAMPLE_CHUNK_ROWS = 1 << 13  # table rows per sampling chunk (k + 1 uniform columns of m)


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


PARALLEL_MIN_WORK = 1 << 22  # below this many element-ops a thread pool costs more than it saves


def _run(fn: Callable[[T_], None], tasks: list[T_], work: int, workers: int) -> None:
    """``fn(task)`` for every task, on ``workers`` threads when the work is large (torch releases the GIL)."""
    if work < PARALLEL_MIN_WORK or workers < 2:
        for task in tasks:
            fn(task)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(fn, tasks))


@contextmanager
def single_threaded_ops() -> Iterator[int]:
    """Run torch ops on one thread and yield the previous thread count for our own pool.

    Parallelism then comes only from :func:`_run` over independent chunks; torch's intra-op
    threads on top of it oversubscribe the cores, and on a machine shared with other busy
    processes they made small tables up to ~70x slower (bench/RESULTS.md).
    """
    workers = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield workers
    finally:
        torch.set_num_threads(workers)


def _chunks(n_rows: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, n_rows)) for s in range(0, n_rows, size)]


def _chunk_seed(seed: int, chunk: int) -> int:
    """Independent, reproducible seed for the samples of one chunk of rows."""
    return int(np.random.SeedSequence([seed, chunk]).generate_state(1, dtype=np.uint64)[0] >> 1)


@dataclass
class SampledKernel:
    """The m fixed next states of every ``(g, a, c)``: ``idx[g, a, c, j] = g'_j * N + rank(c'_j)``."""

    idx: Tensor  # int32 [G, A, N, m]
    workers: int = 1  # threads for the gathers

    def expected_next(self, V: Tensor) -> Tensor:
        """``(1/m) sum_j V(g'_j, c'_j)`` for ``V [G, N]`` -> ``[G, A, N]``."""
        G, A, N, m = self.idx.shape
        v, idx = V.reshape(-1), self.idx.view(-1, m)
        out = torch.empty(G * A * N, dtype=V.dtype, device=V.device)
        weights = torch.full((m,), 1.0 / m, dtype=V.dtype, device=V.device)  # mean as a mat-vec (BLAS)

        def work(chunk: tuple[int, int]) -> None:
            s, e = chunk
            out[s:e] = torch.mv(v.index_select(0, idx[s:e].reshape(-1)).view(e - s, m), weights)

        _run(work, _chunks(G * A * N, CHUNK_ROWS), work=self.idx.numel(), workers=self.workers)
        return out.view(G, A, N)


def sample_kernel(env: GlobalLocalMDP, k: int, m: int, seed: int, workers: int = 1) -> SampledKernel:
    """Draw the m next states of every ``(g, a, c)`` once (docs/model.md §2), vectorized over c and agents.

    Row ``r = (g * A + a) * N + c`` of the table; each of the k agents of c moves with one
    bucket-table draw from ``P_l[g, a, x_i]`` and the next count vector is ranked straight from
    the k next-state columns (:func:`rank_columns`). Every chunk of rows has its own generator,
    so the result does not depend on the number of threads.
    """
    G, A, L, N = env.G, env.A, env.L, num_counts(k, env.L)
    dev = env.device
    X = all_sorted_states(k, L, dev).T.contiguous()  # [k, N]: agent i's state in each c
    local, glob = LookupSampler.build(env.P_l), LookupSampler.build(env.P_g)  # rows (g, a, x), (g, a)
    idx = torch.empty(G * A * N, m, dtype=torch.int32, device=dev)
    chunks = _chunks(G * A * N, SAMPLE_CHUNK_ROWS)

    def work(chunk_id: int) -> None:
        s, e = chunks[chunk_id]
        gen = torch.Generator(device=dev).manual_seed(_chunk_seed(seed, chunk_id))
        rows = torch.arange(s, e, device=dev)
        ga, c = (rows // N)[:, None].expand(-1, m), rows % N
        u = torch.rand(k + 1, e - s, m, generator=gen, device=dev, dtype=torch.float64)
        x_next = [local.sample(ga * L + X[i, c][:, None], u[i]) for i in range(k)]
        g_next = glob.sample(ga, u[k])
        idx[s:e] = (g_next * N + rank_columns(x_next, L)).to(torch.int32)

    _run(work, list(range(len(chunks))), work=idx.numel() * (k + 1), workers=workers)
    return SampledKernel(idx.view(G, A, N, m), workers)


def table_memory_gib(G: int, A: int, N: int, m: int | str, dtype: torch.dtype) -> float:
    """Memory the m-sample learner allocates: indices, Q, Q_next, r_Delta and V."""
    itemsize = torch.empty(0, dtype=dtype).element_size()
    samples = 0 if m == "exact" else G * A * N * int(m) * 4
    return (samples + 3 * G * A * N * itemsize + G * N * itemsize) / GiB


def _validate(env: GlobalLocalMDP, k: int, m: int | str, T: int, tol: float, n: int | None) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k = {k} is outside the allowed range k >= 1")
    if n is not None and k > n:
        raise ValueError(f"k = {k} is outside the allowed range 1 <= k <= n = {n}")
    if m != "exact" and (not isinstance(m, int) or m < 1):
        raise ValueError(f"m = {m!r} is outside the allowed range: an integer m >= 1 or 'exact'")
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"T = {T} is outside the allowed range T >= 1 (maximum iterations)")
    if not tol > 0:
        raise ValueError(f"tol = {tol} is outside the allowed range tol > 0")


def learn(
    env: GlobalLocalMDP,
    k: int,
    m: int | str = 10,
    T: int = 1000,
    tol: float = 1e-8,
    seed: int = 0,
    n: int | None = None,
    dtype: torch.dtype = torch.float64,
    max_memory_gib: float = 8.0,
    on_iteration: Callable[[int, float, float], None] | None = None,
) -> LearnResult:
    """Learn ``Q^est_{k,m}`` by iterating the empirical Bellman operator from Q = 0 (docs/model.md §2).

    Stops when the fixed point is known to within ``tol`` (MacQueen-Porteus bounds,
    :func:`sqtorch.tabular.bellman.value_iteration`) or after T iterations. ``on_iteration(t, residual,
    elapsed_seconds)`` is called after every iteration (for logging). The table size is checked
    against ``max_memory_gib`` before anything is allocated.
    """
    _validate(env, k, m, T, tol, n)
    G, A, N = env.G, env.A, num_counts(k, env.L)
    need = table_memory_gib(G, A, N, m, dtype)
    if need > max_memory_gib:
        raise ValueError(
            f"the table at k = {k} has G*N*A = {G}*{N}*{A} = {G * N * A:,} entries and needs "
            f"{need:.2f} GiB with m = {m}, more than max_memory_gib = {max_memory_gib}; lower k or m"
        )
    t0 = time.perf_counter()
    with single_threaded_ops() as workers:
        kernel: SampledKernel | CountKernel
        if m == "exact":
            kernel = count_kernel(env, k, max_memory_gib=max_memory_gib)
        else:
            kernel = sample_kernel(env, k, m, seed, workers)
        r = subsampled_reward(env, k).to(dtype)
        build_seconds = time.perf_counter() - t0
        fp = value_iteration(kernel, r, env.gamma, T, tol, on_iteration=on_iteration)
    q, residuals, converged = fp.q, fp.residuals, fp.converged
    qtable = QTable(
        q=q.permute(0, 2, 1).contiguous(),
        k=k,
        L=env.L,
        env_name=env.name,
        meta=dict(m=m, seed=seed, gamma=env.gamma, env_params=dict(env.params)),
    )
    return LearnResult(
        qtable=qtable,
        residuals=residuals,
        iterations=len(residuals),
        converged=converged,
        build_seconds=build_seconds,
        learn_seconds=time.perf_counter() - t0 - build_seconds,
        table_entries=G * N * A,
    )


__all__ = [
    "LearnResult",
    "SampledKernel",
    "learn",
    "sample_kernel",
    "table_memory_gib",
]
