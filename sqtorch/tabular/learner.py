"""SUBSAMPLE-Q learning (Anand & Qu, Algorithm 1; docs/model.md §2): value iteration of the empirical
Bellman operator

    (T^ Q)(g, c, a) = r_Delta(g, c, a) + gamma * sum_g' P_g[g, a, g'] (1/m) sum_j max_a' Q(g', c'_j, a')

over count vectors c of k sampled agents, with ``r_Delta(g, c, a) = r_g[g, a] + (1/k) sum_x
c_x r_l[g, a, x]``. The m next count vectors ``c'_j`` of every ``(b, c)`` (b: a distinct local
kernel ``P_l[g, a]``) are drawn once from a seeded generator and reused every iteration and by
every ``(g, a)`` with that kernel, so ``T^`` is a gamma-contraction; its fixed point is
``Q^est_{k,m}``. The expectation over g' is exact (g' and c' are independent given ``(g, a)``): for
a deterministic ``P_g`` (both shipped environments) this is the paper's m-sample estimator;
otherwise it has the same mean and less variance. With ``m = "exact"`` the sample mean becomes
the exact expectation (:mod:`sqtorch.tabular.exact`); at k = n that is Q*.

Layout: samples ``G * rank(c')`` as int32 ``[B, N, m]`` (``B <= G * A``); a sweep gathers from
``V^T [N, G]`` so the values of every reachable g' of one sample share a cache line, in fixed
chunks on a persistent thread pool (torch releases the GIL): bitwise reproducible for any
thread count.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import TypeVar

import torch
from torch import Tensor

from sqtorch.envs.base import GlobalLocalMDP
from sqtorch.envs.simulator import LOOKUP_ENTRIES, LookupSampler
from sqtorch.runtime import GiB, check_int, derive_seed, torch_threads
from sqtorch.tabular.bellman import subsampled_reward, value_iteration
from sqtorch.tabular.config import DTYPES, TabularConfig
from sqtorch.tabular.counts import all_sorted_states, num_counts, rank_columns
from sqtorch.tabular.exact import CountKernel, count_kernel, local_kernels
from sqtorch.tabular.qtable import QTable

T_ = TypeVar("T_")
CHUNK_ROWS = 1 << 12  # count vectors per gather chunk on CPU: its m * |U| reads stay in L2
SMALL_TABLE = 1 << 18  # B * N * m at most: one chunk per block (small k: fewest ops per sweep)
SAMPLE_CHUNK_ROWS = 1 << 13  # (block, count vector) rows per sampling chunk on CPU (k uniform columns of m)
CUDA_CHUNK_ROWS = 1 << 17  # on CUDA one kernel launch must cover far more rows; one stream, no thread pool
CUDA_SAMPLE_CHUNK_ROWS = 1 << 17


def gather_chunk_rows(device: torch.device) -> int:
    """Count vectors per gather chunk of a sweep: L2-sized on CPU, launch-sized on CUDA."""
    return CUDA_CHUNK_ROWS if device.type == "cuda" else CHUNK_ROWS


def sample_chunk_rows(device: torch.device) -> int:
    """``(block, count vector)`` rows per sampling chunk (each has its own generator)."""
    return CUDA_SAMPLE_CHUNK_ROWS if device.type == "cuda" else SAMPLE_CHUNK_ROWS


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
    list(_pool(workers).map(fn, tasks))


@lru_cache(maxsize=4)
def _pool(workers: int) -> ThreadPoolExecutor:
    """A persistent pool (its threads keep their scratch buffers between sweeps)."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sqtorch-tabular")


def _chunks(n_rows: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, n_rows)) for s in range(0, n_rows, size)]


class _Buffers(threading.local):
    """Per-thread scratch of the gather (reused across chunks and sweeps: no allocation per chunk)."""

    def get(self, name: str, numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        buf = self.__dict__.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
            buf = self.__dict__[name] = torch.empty(numel, dtype=dtype, device=device)
        return buf[:numel]


@dataclass
class SampledKernel:
    """The m fixed next count vectors of every ``(b, c)``, shared by all ``(g, a)`` with local kernel b.

    ``nxt[b, c, j] = G * rank(c'_j)``: the offset of row ``c'_j`` of ``V^T [N, G]``, so the values
    ``V(g', c'_j)`` of every g' lie in one cache line, and ``V(g', c'_j)`` is element ``nxt`` of
    the view of ``V^T`` that starts at g' (no index arithmetic per read). With ``w = P_g[g, a]``,

        E^[V | g, c, a] = sum_g' w[g'] (1/m) sum_j V(g', c'_j)      (docs/model.md §2)

    i.e. the expectation over g' is exact (g' and c' are independent given ``(g, a)``) and the
    expectation over c' is the m-sample mean. For a deterministic ``P_g`` (both shipped
    environments) this is exactly the paper's estimator; otherwise it has the same mean and less
    variance. Samples shared across the actions (and global states) with the same local kernel
    are common random numbers: each entry's estimate keeps its law.
    """

    nxt: Tensor  # int32 [B, N, m]
    block_of: Tensor  # int64 [G, A]: index of the distinct local kernel of (g, a)
    P_g: Tensor  # [G, A, G]
    workers: int = 1  # threads for the gathers
    _support: list[list[int]] = field(default_factory=list, init=False, repr=False)  # g' reached from b
    _pairs: list[list[int]] = field(default_factory=list, init=False, repr=False)  # (g, a) rows using b
    _support_t: list[Tensor] = field(default_factory=list, init=False, repr=False)
    _weights: list[list[tuple[int, Tensor]]] = field(default_factory=list, init=False, repr=False)
    _buffers: _Buffers = field(default_factory=_Buffers, init=False, repr=False)

    def __post_init__(self) -> None:
        G, A = self.block_of.shape
        P_flat = self.P_g.reshape(G * A, G)
        for b in range(self.nxt.shape[0]):
            pairs = torch.nonzero(self.block_of.reshape(-1) == b).squeeze(1)
            self._pairs.append(pairs.tolist())
            support = torch.nonzero(P_flat[pairs].sum(0) > 0).squeeze(1)
            self._support.append(support.tolist())
            self._support_t.append(support.to(torch.int32)[:, None])
            w = P_flat[pairs][:, support]  # [P, U]
            cols = [int(torch.nonzero(row == 1.0)[0]) if (row == 1.0).any() else -1 for row in w]
            self._weights.append(list(zip(cols, w, strict=True)))

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(G, A, N, m)`` of the table the kernel serves."""
        G, A = self.block_of.shape
        return G, A, self.nxt.shape[1], self.nxt.shape[2]

    def next_ranks(self) -> Tensor:
        """``rank(c'_j)`` for every ``(g, a, c, j)``: int64 ``[G, A, N, m]`` (for tests; materializes)."""
        G = self.block_of.shape[0]
        return self.nxt[self.block_of].long() // G

    def expected_next(self, V: Tensor) -> Tensor:
        """``E^[V(g', c') | g, c, a]`` for ``V [G, N]`` -> ``[G, A, N]``.

        Per chunk of one block: for each reachable g' one gather of the m samples and one BLAS
        mat-vec (the mean); the P_g-weighted sum over g' is a copy when ``P_g`` is deterministic.
        Chunks are fixed, so the result is bitwise the same for any number of threads.
        """
        G, A, N, m = self.shape
        vt = V.T.contiguous().view(-1)  # [N * G]: c'-major
        out = torch.empty(G * A, N, dtype=V.dtype, device=V.device)
        nxt = self.nxt.view(self.nxt.shape[0], -1)
        chunk = N if self.nxt.numel() <= SMALL_TABLE else gather_chunk_rows(V.device)
        dev = V.device

        def work(task: tuple[int, int, int]) -> None:
            b, s, e = task
            buf, n = self._buffers, e - s
            support = self._support_t[b]  # int32 [U, 1]
            U = support.shape[0]
            ix = buf.get("ix", n * U * m, torch.int32, dev).view(n, U, m)
            torch.add(nxt[b, s * m : e * m].view(n, 1, m), support, out=ix)  # the U reads of a sample share a line
            vals = torch.index_select(vt, 0, ix.view(-1), out=buf.get("vals", n * U * m, V.dtype, dev))
            weights = buf.get("w", m, V.dtype, dev).fill_(1.0 / m)  # the mean as a BLAS mat-vec
            means = torch.mv(vals.view(n * U, m), weights, out=buf.get("means", n * U, V.dtype, dev)).view(n, U)
            for p, (col, w) in zip(self._pairs[b], self._weights[b], strict=True):  # (g, a) pairs of b
                if col >= 0:  # deterministic g': a copy
                    out[p, s:e].copy_(means[:, col])
                else:
                    torch.mv(means, w.to(V.dtype), out=out[p, s:e])

        tasks = [(b, s, e) for b in range(self.nxt.shape[0]) for s, e in _chunks(N, chunk)]
        reads = sum(len(u) for u in self._support) * N * m
        _run(work, tasks, work=reads, workers=self.workers)
        return out.view(G, A, N)


def sample_kernel(env: GlobalLocalMDP, k: int, m: int, seed: int, workers: int = 1) -> SampledKernel:
    """Draw the m next count vectors of every ``(b, c)`` once (docs/model.md §2), vectorized.

    b runs over the distinct local kernels ``P_l[g, a]``; every ``(g, a)`` with kernel b reuses
    its samples. Each of the k agents of c moves with one bucket-table draw from
    ``P_l[b, x_i]`` and the next count vector is ranked straight from the k next-state columns
    (:func:`rank_columns`, uint8). Row ``r = b * N + c``; every chunk of rows has its own
    generator, so the result does not depend on the number of threads.
    """
    G, L, N = env.G, env.L, num_counts(k, env.L)
    if N * G >= 2**31:
        raise ValueError(f"k = {k}: G * N = {G * N:,} next states overflow the int32 sample indices")
    dev = env.device
    kernels, block_of = local_kernels(env)
    B = kernels.shape[0]
    X = all_sorted_states(k, L, dev).T.contiguous()  # [k, N]: agent i's state in each c
    # rows (b, x); a bucket table no larger than the number of draws (building it costs more otherwise)
    local = LookupSampler.build(kernels, entries=min(LOOKUP_ENTRIES, B * N * m * k))
    nxt = torch.empty(B * N, m, dtype=torch.int32, device=dev)
    chunks = _chunks(B * N, sample_chunk_rows(dev))

    def work(chunk_id: int) -> None:
        s, e = chunks[chunk_id]
        gen = torch.Generator(device=dev).manual_seed(derive_seed(seed, chunk_id))
        rows = torch.arange(s, e, device=dev)
        base, c = (rows // N) * L, rows % N
        u = torch.rand(k, e - s, m, generator=gen, device=dev, dtype=torch.float64)
        x_next = [local.sample_uint8((base + X[i, c])[:, None].expand(-1, m), u[i]) for i in range(k)]
        nxt[s:e] = rank_columns(x_next, L).mul_(G)

    _run(work, list(range(len(chunks))), work=nxt.numel() * k, workers=workers)
    return SampledKernel(nxt.view(B, N, m), block_of, env.P_g, workers)


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
    ``G * A``); two ``[G, A, N]`` tables (r_Delta and the one Q a sweep of
    :func:`sqtorch.tabular.bellman.value_iteration` allocates; at the end the final Q and its
    ``[G, N, A]`` copy, after the samples and r_Delta are freed); four ``[G, N]`` arrays (V, the
    next V, their difference, V^T); per worker thread the larger of one gather chunk (int32 indices
    + values of ``rows * m * G``) and one sampling chunk (k float64 uniforms, k uint8 states and
    their sorting network, int64 ranks: ``(11 k + 40)`` bytes per row and sample); the sorted local
    states of every count vector (int64 ``[N, k]``, built for sampling and for r_Delta; below glibc's
    mmap threshold their pages stay resident). Chunk rows depend on the device
    (:func:`gather_chunk_rows`). For ``m = "exact"`` the count kernel is sized separately
    (:func:`sqtorch.tabular.exact.count_kernel`). Measured against the peak resident memory in
    tests/test_tabular.py and bench/tabular.py, and against ``torch.cuda.max_memory_allocated``
    in bench/gpu_check.sh.
    """
    s = torch.empty(0, dtype=dtype).element_size()
    tables = 2 * G * A * N * s + 4 * G * N * s + N * k * 8
    if m == "exact":
        return tables / GiB
    device = torch.device(device)
    B = G * A if blocks is None else blocks
    samples = B * N * int(m) * 4
    gather = min(N, gather_chunk_rows(device)) * int(m) * G * (4 + 2 * s)
    sampling = min(B * N, sample_chunk_rows(device)) * int(m) * (11 * k + 40)
    return (samples + tables + workers * max(gather, sampling)) / GiB


def distinct_local_kernels(env: GlobalLocalMDP) -> int:
    """Number B of distinct local kernels ``P_l[g, a]`` (the sample arrays are ``[B, N, m]``)."""
    return local_kernels(env)[0].shape[0]


def _validate(
    k: int, m: int | str, T: int, tol: float, seed: int, n: int | None, dtype: torch.dtype, max_memory_gib: float
) -> None:
    """Every argument of :func:`learn`, with a message naming it (numpy integers pass, bools do not)."""
    check_int("k", k, 1, "sampled local agents")
    if n is not None and k > check_int("n", n, 1, "local agents"):
        raise ValueError(f"k = {k} is outside the allowed range 1 <= k <= n = {n}")
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


def learn(
    env: GlobalLocalMDP,
    k: int,
    m: int | str = TabularConfig.m,
    T: int = TabularConfig.T,
    tol: float = TabularConfig.tol,
    seed: int = 0,
    n: int | None = None,
    dtype: torch.dtype = DTYPES[TabularConfig.dtype],
    max_memory_gib: float = TabularConfig.max_memory_gib,
    on_iteration: Callable[[int, float, float], None] | None = None,
) -> LearnResult:
    """Learn ``Q^est_{k,m}`` by iterating the empirical Bellman operator from Q = 0 (docs/model.md §2).

    Stops when the fixed point is known to within ``tol`` (MacQueen-Porteus bounds,
    :func:`sqtorch.tabular.bellman.value_iteration`) or after T iterations. ``on_iteration(t, residual,
    elapsed_seconds)`` is called after every iteration (for logging). The table size is checked
    against ``max_memory_gib`` before anything is allocated. Defaults: :class:`TabularConfig`.
    """
    _validate(k, m, T, tol, seed, n, dtype, max_memory_gib)
    k, m = int(k), m if m == "exact" else int(m)
    G, A, N = env.G, env.A, num_counts(k, env.L)
    B = distinct_local_kernels(env)
    cuda = env.device.type == "cuda"  # one stream: no thread pool there
    workers = 1 if cuda else torch.get_num_threads()
    need = table_memory_gib(G, A, N, m, dtype, blocks=B, workers=workers, k=k, device=env.device)
    if need > max_memory_gib:
        raise ValueError(
            f"the table at k = {k} has G*N*A = {G}*{N}*{A} = {G * N * A:,} entries and needs "
            f"{need:.2f} GiB with m = {m}, more than max_memory_gib = {max_memory_gib}; lower k or m, or use "
            f"the DeepSets network (algo=deepsets), whose size does not grow with k"
        )
    if cuda:  # the device's free memory is the real limit there
        free = torch.cuda.mem_get_info(env.device)[0] / GiB
        if need > free:
            raise ValueError(f"the table at k = {k} needs {need:.2f} GiB but {env.device} has {free:.2f} GiB free")
    t0 = time.perf_counter()
    with torch_threads(1):  # parallel over our own chunks only (see _run)
        kernel: SampledKernel | CountKernel
        if m == "exact":
            kernel = count_kernel(env, k, max_memory_gib=max_memory_gib)
        else:
            kernel = sample_kernel(env, k, m, seed, workers)
        r = subsampled_reward(env, k).to(dtype)
        build_seconds = time.perf_counter() - t0
        fp = value_iteration(kernel, r, env.gamma, T, tol, on_iteration=on_iteration)
        del kernel, r  # freed before the [G, N, A] copy (table_memory_gib counts on it)
        q = fp.q.permute(0, 2, 1).contiguous()
    residuals, converged = fp.residuals, fp.converged
    qtable = QTable(
        q=q,
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
