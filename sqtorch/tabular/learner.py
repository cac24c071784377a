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

Layout: samples ``G * rank(c')`` as int32 ``[B, N, m]`` (``B <= G * A``). A small table's sweep is
one gather from ``V`` (at m = 1 the whole ``E^``; :class:`_FlatGather`); a large table's sweep
gathers from ``V^T [N, G]`` (on transparent huge pages) so the values of every reachable g' of one
sample share a cache line, in fixed chunks of count vectors on a persistent thread pool (torch
releases the GIL), each chunk finishing its own ``max_a`` (no Q table per sweep): bitwise
reproducible for any thread count, and bitwise the tables of sqtorch 0.2.
"""

from __future__ import annotations

import math
import mmap
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import TypeVar

import numpy.random  # noqa: F401  (derive_seed's SeedSequence: imported with the module, not in the first learn)
import torch
from torch import Tensor

from sqtorch.envs.base import GlobalLocalMDP
from sqtorch.envs.simulator import IMPURE, LOOKUP_ENTRIES, LookupSampler
from sqtorch.runtime import GiB, check_int, derive_seed, torch_threads
from sqtorch.tabular.bellman import subsampled_reward, value_iteration
from sqtorch.tabular.config import DTYPES, TabularConfig
from sqtorch.tabular.counts import num_counts, rank_columns, state_columns
from sqtorch.tabular.exact import CountKernel, count_kernel, local_kernels
from sqtorch.tabular.qtable import QTable

T_ = TypeVar("T_")
CHUNK_ROWS = 1 << 12  # count vectors per gather chunk on CPU: its m * |U| reads stay in L2
SMALL_TABLE = 1 << 18  # B * N * m at most: one chunk per block (fixed: it decides which rows a mat-vec sums)
ALIGN_ELEMENTS = 16  # 64 bytes of float32 values (and so of float64)
FLAT_READS = 1 << 20  # sum_b |U_b| * N * m at most: one precomputed gather, a handful of ops per sweep
SAMPLE_CHUNK_ROWS = 1 << 13  # (block, count vector) rows per sampling chunk on CPU (k uniform columns of m)
CUDA_CHUNK_ROWS = 1 << 17  # on CUDA one kernel launch must cover far more rows; one stream, no thread pool
CUDA_SAMPLE_CHUNK_ROWS = 1 << 17
SAMPLE_TASK_DRAWS = 1 << 20  # k * m * rows at most drawn in one task (else one chunk per task)
HUGE_PAGE_MIN_BYTES = 1 << 24  # V^T from this size on lives on transparent huge pages
PARALLEL_MIN_WORK = 1 << 22  # below this many element-ops a thread pool costs more than it saves


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


def _run(fn: Callable[[T_], None], tasks: list[T_], work: int, workers: int) -> None:
    """``fn(task)`` for every task, on ``workers`` threads when the work is large (torch releases the GIL)."""
    if work < PARALLEL_MIN_WORK or workers < 2 or len(tasks) < 2:
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


def huge_page_tensor(numel: int, dtype: torch.dtype) -> Tensor:
    """An uninitialized 1-D CPU tensor in anonymous memory advised ``MADV_HUGEPAGE`` (plain memory elsewhere).

    Linux backs it with 2 MiB pages when transparent huge pages are ``always`` or ``madvise``;
    the mapping lives as long as the tensor (``torch.frombuffer`` keeps it referenced).
    """
    nbytes = numel * torch.empty(0, dtype=dtype).element_size()
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is None:
        return torch.empty(numel, dtype=dtype)
    mem = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # private: shared memory gets no THP
    try:
        mem.madvise(advice)
    except OSError:
        pass  # THP disabled: still an ordinary buffer
    with warnings.catch_warnings():  # "non-writable buffer": an anonymous mmap is writable
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(mem, dtype=dtype, count=numel)


@dataclass(frozen=True)
class _Plan:
    """How block b's samples are read and turned into rows of E^[V] (docs/model.md §2).

    ``support[b]``: the g' reachable from some ``(g, a)`` with local kernel b (ascending);
    ``pairs[b]``: those ``(g, a)`` as rows ``g * A + a``; ``cols[b][i]``: the column in
    ``support[b]`` of pair i's deterministic g', or -1 with its ``P_g`` row ``weights[b][i]``
    over ``support[b]`` (a weighted mean then). Lists over blocks and pairs, never entries.
    """

    support: list[list[int]]
    pairs: list[list[int]]
    cols: list[list[int]]
    weights: list[list[Tensor | None]]

    @classmethod
    def build(cls, block_of: Tensor, P_g: Tensor, B: int) -> _Plan:
        G, A = block_of.shape
        P = P_g.reshape(G * A, G)
        blocks = block_of.reshape(-1).tolist()
        hits = (P > 0).to(P.dtype)
        reach = torch.zeros(B, G, dtype=P.dtype, device=P.device).index_add_(0, block_of.reshape(-1), hits)
        support = [[g for g, hit in enumerate(row) if hit] for row in reach.tolist()]
        pairs: list[list[int]] = [[] for _ in range(B)]
        cols: list[list[int]] = [[] for _ in range(B)]
        weights: list[list[Tensor | None]] = [[] for _ in range(B)]
        for p, (b, row) in enumerate(zip(blocks, P.tolist(), strict=True)):
            pairs[b].append(p)
            sure = [i for i, g in enumerate(support[b]) if row[g] == 1.0]
            cols[b].append(sure[0] if sure else -1)
            weights[b].append(None if sure else P[p, support[b]])
        return cls(support, pairs, cols, weights)


@dataclass
class _FlatGather:
    """The whole sweep of a small table as one gather from ``V [G, N]`` (no chunks, no transpose).

    ``direct`` (m = 1 and a deterministic ``P_g``): ``ix[g, a, c] = g' N + rank(c')``, so
    ``E^ = V.view(-1)[ix]`` (the mean of one sample is the sample: ``x * 1.0 == x``). Otherwise
    ``ix`` holds the reads of rows ``(b, c, u)`` of m samples, block by block as the chunked
    path's one chunk per block (same rows per mat-vec, each block starting 64-byte aligned:
    MKL's mat-vec rounds differently at other row counts and alignments), ``sel[g, a, c]`` the
    row ``(b(g, a), c, col)`` of a deterministic g', and ``mixed`` ``(pair, first row of its
    block, |U_b|, P_g weights)`` for the other pairs.
    """

    ix: Tensor
    direct: bool
    sel: Tensor | None = None
    mixed: list[tuple[int, int, int, Tensor]] = field(default_factory=list)
    blocks: list[tuple[int, int]] = field(default_factory=list)  # rows of each block

    @classmethod
    def build(cls, nxt: Tensor, plan: _Plan, G: int) -> _FlatGather:
        B, N, m = nxt.shape
        rank = nxt.div(G, rounding_mode="floor")
        if m == 1 and all(w is None for ws in plan.weights for w in ws):
            block, g_next = cls._direct_rows(plan, B)
            index = torch.tensor(block, device=nxt.device)
            shift = torch.tensor(g_next, dtype=torch.int32, device=nxt.device) * N
            return cls(rank.view(B, N).index_select(0, index).add_(shift[:, None]).view(-1), direct=True)
        return cls._general(rank, plan)

    @staticmethod
    def _direct_rows(plan: _Plan, B: int) -> tuple[list[int], list[int]]:
        """Block and deterministic g' of every ``(g, a)`` row, in row order."""
        rows = sorted(
            (p, b, plan.support[b][col]) for b in range(B) for p, col in zip(plan.pairs[b], plan.cols[b], strict=True)
        )
        return [b for _, b, _ in rows], [g for _, _, g in rows]

    @classmethod
    def _general(cls, rank: Tensor, plan: _Plan) -> _FlatGather:
        B, N, m = rank.shape
        dev = rank.device
        ix, first, mixed, blocks = [], 0, [], []
        off = torch.zeros(sum(map(len, plan.pairs)), dtype=torch.int64)
        width = torch.zeros_like(off)
        align = ALIGN_ELEMENTS // math.gcd(m, ALIGN_ELEMENTS)  # rows per aligned block start
        for b in range(B):  # blocks (distinct local kernels), not entries
            sup = torch.tensor(plan.support[b], dtype=torch.int32, device=dev)
            pad = -first % align  # padding rows read V[0, 0]
            ix.append(torch.zeros(pad * m, dtype=torch.int32, device=dev))
            first += pad
            ix.append((rank[b].view(N, 1, m) + sup[:, None] * N).view(-1))
            for p, col, w in zip(plan.pairs[b], plan.cols[b], plan.weights[b], strict=True):
                off[p], width[p] = first + max(col, 0), len(sup)
                if w is not None:
                    mixed.append((p, first, len(sup), w))
            blocks.append((first, first + N * len(sup)))
            first += N * len(sup)
        sel = off.to(dev)[:, None] + torch.arange(N, device=dev)[None, :] * width.to(dev)[:, None]
        return cls(torch.cat(ix), False, sel.view(-1), mixed, blocks)

    def expected(self, V: Tensor, weights: Tensor) -> Tensor:
        """``E^[V]`` as ``[G * A, N]`` for ``V [G, N]`` (contiguous)."""
        G, N = V.shape
        vals = V.view(-1).index_select(0, self.ix)
        if self.direct:
            return vals.view(-1, N)
        vals = vals.view(-1, weights.shape[0])
        means = torch.empty(vals.shape[0], dtype=V.dtype, device=V.device)
        for s, e in self.blocks:  # one mat-vec per block, as in the chunked path: the same sums
            torch.mv(vals[s:e], weights, out=means[s:e])
        out = means.index_select(0, self.sel).view(-1, N)
        for p, first, U, w in self.mixed:  # stochastic P_g rows only (none in the shipped environments)
            torch.mv(means[first : first + N * U].view(N, U), w.to(V.dtype), out=out[p])
        return out


@dataclass
class SampledKernel:
    """The m fixed next count vectors of every ``(b, c)``, shared by all ``(g, a)`` with local kernel b.

    ``nxt[b, c, j] = G * rank(c'_j)``: the offset of row ``c'_j`` of ``V^T [N, G]``, so the values
    ``V(g', c'_j)`` of every g' lie in one cache line, and ``V(g', c'_j)`` is element ``nxt + g'``
    of ``V^T``. With ``w = P_g[g, a]``,

        E^[V | g, c, a] = sum_g' w[g'] (1/m) sum_j V(g', c'_j)      (docs/model.md §2)

    i.e. the expectation over g' is exact (g' and c' are independent given ``(g, a)``) and the
    expectation over c' is the m-sample mean. For a deterministic ``P_g`` (both shipped
    environments) this is exactly the paper's estimator; otherwise it has the same mean and less
    variance. Samples shared across the actions (and global states) with the same local kernel
    are common random numbers: each entry's estimate keeps its law.

    Small tables gather everything at once (:class:`_FlatGather`); large ones in fixed chunks of
    count vectors on a thread pool, each chunk finishing its own rows (bitwise the same for any
    thread count). The mean over the m samples is one BLAS mat-vec over rows of m values either way.
    """

    nxt: Tensor  # int32 [B, N, m]
    block_of: Tensor  # int64 [G, A]: index of the distinct local kernel of (g, a)
    P_g: Tensor  # [G, A, G]
    workers: int = 1  # threads for the gathers
    _plan: _Plan = field(init=False, repr=False)
    _flat: _FlatGather | None = field(default=None, init=False, repr=False)
    _buffers: _Buffers = field(default_factory=_Buffers, init=False, repr=False)
    _mean_w: dict = field(default_factory=dict, init=False, repr=False)
    _chunk: int = field(default=CHUNK_ROWS, init=False, repr=False)
    _vt_buf: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        B, N, m = self.nxt.shape
        self._plan = _Plan.build(self.block_of, self.P_g, B)
        self._chunk = N if self.nxt.numel() <= SMALL_TABLE else gather_chunk_rows(self.nxt.device)  # per chunk
        if self._chunk >= N and sum(map(len, self._plan.support)) * N * m <= FLAT_READS:
            self._flat = _FlatGather.build(self.nxt, self._plan, self.block_of.shape[0])

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(G, A, N, m)`` of the table the kernel serves."""
        G, A = self.block_of.shape
        return G, A, self.nxt.shape[1], self.nxt.shape[2]

    def next_ranks(self) -> Tensor:
        """``rank(c'_j)`` for every ``(g, a, c, j)``: int64 ``[G, A, N, m]`` (for tests; materializes)."""
        G = self.block_of.shape[0]
        return self.nxt[self.block_of].long() // G

    def _weights(self, dtype: torch.dtype) -> Tensor:
        """``1/m`` repeated m times: the sample mean as a BLAS mat-vec."""
        w = self._mean_w.get(dtype)
        if w is None:
            m = self.nxt.shape[2]
            w = self._mean_w[dtype] = torch.full((m,), 1.0 / m, dtype=dtype, device=self.nxt.device)
        return w

    def expected_next(self, V: Tensor) -> Tensor:
        """``E^[V(g', c') | g, c, a]`` for ``V [G, N]`` -> ``[G, A, N]``."""
        G, A, N, _ = self.shape
        if self._flat is not None:
            return self._flat.expected(V.contiguous(), self._weights(V.dtype)).view(G, A, N)
        vt = self._vt(V)
        out = torch.empty(G * A, N, dtype=V.dtype, device=V.device)
        self._run_chunks(lambda s, e: self._chunk_expected(vt, s, e, out[:, s:e]))
        return out.view(G, A, N)

    def greedy_sweep(self, V: Tensor, r: Tensor, gamma: float, out: Tensor | None = None) -> Tensor:
        """``max_a (r + gamma E^[V])`` -> ``[G, N]`` (SUBSAMPLE-Q's backup; into ``out`` if given).

        Each chunk of count vectors computes its ``[G, A, n]`` slice of Q with the same ops as
        ``expected_next(V).mul_(gamma).add_(r).amax(1)``, so the values are identical; Q is never
        whole in memory.
        """
        G, A, N, _ = self.shape
        V_new = torch.empty_like(V) if out is None else out
        if self._flat is not None:
            return torch.amax(self.expected_next(V).mul_(gamma).add_(r), 1, out=V_new)
        vt = self._vt(V)

        def chunk(s: int, e: int) -> None:
            q = self._buffers.get("q", G * A * (e - s), V.dtype, V.device).view(G * A, e - s)
            self._chunk_expected(vt, s, e, q)
            V_new[:, s:e] = q.view(G, A, e - s).mul_(gamma).add_(r[:, :, s:e]).amax(1)

        self._run_chunks(chunk)
        return V_new

    def _vt(self, V: Tensor) -> Tensor:
        """``V^T`` flattened, ``[N * G]`` (c'-major: the g' of one sample share a cache line).

        Large ones go to one persistent buffer on transparent huge pages where the OS allows it:
        the sweep's random reads then miss the TLB far less (bench/RESULTS.md).
        """
        if V.device.type != "cpu" or V.numel() * V.element_size() < HUGE_PAGE_MIN_BYTES:
            return V.T.contiguous().view(-1)
        buf = self._vt_buf.get(V.dtype)
        if buf is None or buf.numel() != V.numel():
            buf = self._vt_buf[V.dtype] = huge_page_tensor(V.numel(), V.dtype)
        buf.view(V.shape[1], V.shape[0]).copy_(V.T)
        return buf

    def _run_chunks(self, fn: Callable[[int, int], None]) -> None:
        """``fn(s, e)`` on fixed chunks of count vectors, in parallel when the sweep is large."""
        N, m = self.nxt.shape[1], self.nxt.shape[2]
        reads = sum(map(len, self._plan.support)) * N * m
        _run(lambda se: fn(*se), _chunks(N, self._chunk), work=reads, workers=self.workers)

    def _chunk_expected(self, vt: Tensor, s: int, e: int, out: Tensor) -> None:
        """Rows ``[s, e)`` of ``E^`` into ``out [G * A, e - s]``: per block one gather of the m samples
        of every reachable g' (adjacent in ``V^T``) and one mat-vec (the mean); per ``(g, a)`` a copy
        of its g' column, or a ``P_g``-weighted mat-vec."""
        buf, n, m, plan = self._buffers, e - s, self.nxt.shape[2], self._plan
        for b, support in enumerate(plan.support):
            U = len(support)
            ix = buf.get("ix", n * U * m, torch.int32, vt.device).view(n, U, m)
            for u, g_next in enumerate(support):  # U strided adds: faster than one broadcast add
                torch.add(self.nxt[b, s:e], g_next, out=ix[:, u])
            vals = torch.index_select(vt, 0, ix.view(-1), out=buf.get("vals", n * U * m, vt.dtype, vt.device))
            mean_out = buf.get("means", n * U, vt.dtype, vt.device)
            means = torch.mv(vals.view(n * U, m), self._weights(vt.dtype), out=mean_out)
            means = means.view(n, U)
            for p, col, w in zip(plan.pairs[b], plan.cols[b], plan.weights[b], strict=True):
                if w is None:  # deterministic g': a copy
                    out[p].copy_(means[:, col])
                else:
                    torch.mv(means, w.to(vt.dtype), out=out[p])


def _lookup_draw(local: LookupSampler, rows: Tensor, u: Tensor) -> Tensor:
    """Next local states (uint8 ``[k, n, m]``) of bucket-table rows ``rows`` (int32 ``[k, n]``) for uniforms ``u``.

    The draws of :meth:`LookupSampler.sample_uint8` (bucket ``floor(u 2^bits)``, impure buckets
    resolved by the exact CDF as :func:`sqtorch.envs.simulator.sample_categorical` does), for all
    k agents in one pass and with int32 indices.
    """
    bits = local.bits
    idx = u.mul(1 << bits).to(torch.int32).add_(rows.mul(1 << bits)[:, :, None])
    out = local.table.index_select(0, idx.view(-1))
    # nonzero reads the count on the host: once per sampling chunk of the build (set-up, not the sweep loop);
    # resolving every draw exactly instead (as the Monte Carlo step loop does on CUDA) costs ~40 bytes a draw
    bad = torch.nonzero(out == IMPURE).squeeze(1)
    if bad.numel():  # sample_categorical's count of CDF values <= u, over all outcomes in one compare
        row = idx.view(-1)[bad].bitwise_right_shift(bits)
        cdf = local.cdf_cols[:-1].index_select(1, row)  # [K - 1, bad]
        out[bad] = (cdf <= u.view(-1)[bad]).sum(0, dtype=torch.uint8)
    return out.view(u.shape)


def sample_kernel(
    env: GlobalLocalMDP, k: int, m: int, seed: int, workers: int = 1, X: Tensor | None = None
) -> SampledKernel:
    """Draw the m next count vectors of every ``(b, c)`` once (docs/model.md §2), vectorized.

    b runs over the distinct local kernels ``P_l[g, a]``; every ``(g, a)`` with kernel b reuses
    its samples. Each of the k agents of c moves with one bucket-table draw from
    ``P_l[b, x_i]`` and the next count vector is ranked straight from the k next-state columns
    (:func:`rank_columns`, uint8 states, int32 ranks). Row ``r = b * N + c``; every chunk of
    ``SAMPLE_CHUNK_ROWS`` rows draws its uniforms from its own generator, so the result does not
    depend on the number of threads (or on how chunks are grouped into tasks). ``X``:
    :func:`state_columns` of ``(k, L)``, if the caller has it.
    """
    G, L, N = env.G, env.L, num_counts(k, env.L)
    if N * G >= 2**31:
        raise ValueError(f"k = {k}: G * N = {G * N:,} next states overflow the int32 sample indices")
    dev = env.device
    kernels, block_of = local_kernels(env)
    B = kernels.shape[0]
    X = state_columns(k, L, dev) if X is None else X  # [k, N]: agent i's state in each c
    # rows (b, x); a bucket table no larger than the number of draws (building it costs more otherwise)
    local = LookupSampler.build(kernels, entries=min(LOOKUP_ENTRIES, B * N * m * k))
    nxt = torch.empty(B * N, m, dtype=torch.int32, device=dev)
    chunks = _chunks(B * N, sample_chunk_rows(dev))
    per_task = len(chunks) if nxt.numel() * k <= SAMPLE_TASK_DRAWS else 1  # a small table: one task
    tasks = [list(range(i, min(i + per_task, len(chunks)))) for i in range(0, len(chunks), per_task)]

    def uniforms(chunk_id: int) -> Tensor:
        s, e = chunks[chunk_id]
        gen = torch.Generator(device=dev).manual_seed(derive_seed(seed, chunk_id))
        return torch.rand(k, e - s, m, generator=gen, device=dev, dtype=torch.float64)

    def work(ids: list[int]) -> None:
        s, e = chunks[ids[0]][0], chunks[ids[-1]][1]
        u = torch.cat([uniforms(i) for i in ids], 1) if len(ids) > 1 else uniforms(ids[0])
        rows = torch.arange(s, e, dtype=torch.int32, device=dev)
        b = rows.div(N, rounding_mode="floor")
        x_next = _lookup_draw(local, X.index_select(1, rows - b * N).add_(b * L), u)
        torch.mul(rank_columns(list(x_next), L, dtype=torch.int32), G, out=nxt[s:e])

    _run(work, tasks, work=nxt.numel() * k, workers=workers)
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
    separately (:func:`sqtorch.tabular.exact.count_kernel`).
    Measured against the peak resident memory in tests/test_tabular.py and bench/tabular.py, and
    against ``torch.cuda.max_memory_allocated`` in bench/gpu_check.sh.
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


def check_memory(
    env: GlobalLocalMDP, k: int, m: int | str, dtype: torch.dtype, max_memory_gib: float, workers: int
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
    k, m = int(k), m if m == "exact" else int(m)
    cuda = env.device.type == "cuda"  # one stream: no thread pool there
    workers = 1 if cuda else torch.get_num_threads()
    need = check_memory(env, k, m, dtype, max_memory_gib, workers)
    if cuda:  # the device's free memory is the real limit there
        free = torch.cuda.mem_get_info(env.device)[0] / GiB
        if need > free:
            raise ValueError(f"the table at k = {k} needs {need:.2f} GiB but {env.device} has {free:.2f} GiB free")
    t0 = time.perf_counter()
    with torch_threads(1):  # parallel over our own chunks only (see _run)
        kernel: SampledKernel | CountKernel
        X = state_columns(k, env.L, env.device)  # for the draws and for r_Delta
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
        meta=dict(m=m, seed=seed, gamma=env.gamma, env_params=dict(env.params)),
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
    "check_memory",
    "huge_page_tensor",
    "learn",
    "sample_kernel",
    "table_memory_gib",
]
