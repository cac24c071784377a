"""The sampled Bellman operator of SUBSAMPLE-Q (docs/model.md §2): with m fixed next count vectors
``c'_j`` of every ``(b, c)`` (b: a distinct local kernel ``P_l[g, a]``, see
:mod:`sqtorch.tabular.sampling`) and ``w = P_g[g, a]``,

    E^[V | g, c, a] = sum_g' w[g'] (1/m) sum_j V(g', c'_j)

Layout: samples ``G * rank(c')`` as int32 ``[B, N, m]`` (``B <= G * A``). A small table's sweep is
one gather from ``V`` (at m = 1 the whole ``E^``; :class:`_FlatGather`); a large table's sweep
gathers from ``V^T [N, G]`` (on transparent huge pages) so the values of every reachable g' of one
sample share a cache line, in fixed chunks of count vectors on the persistent thread pool of
:mod:`sqtorch.tabular.buffers`, each chunk finishing its own ``max_a`` (no Q table per sweep). Both
paths compute every mean with the same mat-vecs, so the tables are bitwise the same, for any
thread count.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from sqtorch.tabular.bellman import BellmanKernel
from sqtorch.tabular.buffers import ScratchBuffers, chunks, huge_page_tensor, run_tasks

CHUNK_ROWS = 1 << 12  # count vectors per gather chunk on CPU: its m * |U| reads stay in L2
CUDA_CHUNK_ROWS = 1 << 17  # on CUDA one kernel launch must cover far more rows; one stream, no thread pool
SMALL_TABLE = 1 << 18  # B * N * m at most: one chunk per block (fixed: it decides which rows a mat-vec sums)
ALIGN_ELEMENTS = 16  # 64 bytes of float32 values (and so of float64)
FLAT_READS = 1 << 20  # sum_b |U_b| * N * m at most: one precomputed gather, a handful of ops per sweep
HUGE_PAGE_MIN_BYTES = 1 << 24  # V^T from this size on lives on transparent huge pages


def gather_chunk_rows(device: torch.device) -> int:
    """Count vectors per gather chunk of a sweep: L2-sized on CPU, launch-sized on CUDA."""
    return CUDA_CHUNK_ROWS if device.type == "cuda" else CHUNK_ROWS


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
    path's one chunk per block (each block starting 64-byte aligned, so every mat-vec sums the
    same rows at the same alignment: a BLAS result may depend on both), ``sel[g, a, c]`` the
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
class SampledKernel(BellmanKernel):
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
    _buffers: ScratchBuffers = field(default_factory=ScratchBuffers, init=False, repr=False)
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

        Fused on the chunked path: each chunk of count vectors computes its ``[G, A, n]`` slice of
        Q with the same ops as ``expected_next(V).mul_(gamma).add_(r).amax(1)``, so the values are
        identical and Q is never whole in memory. A small table takes the default (one Q).
        """
        G, A, N, _ = self.shape
        if self._flat is not None:
            return super().greedy_sweep(V, r, gamma, out)
        V_new = torch.empty_like(V) if out is None else out
        vt = self._vt(V)

        def chunk(s: int, e: int) -> None:
            q = self._buffers.get("q", G * A * (e - s), V.dtype, V.device).view(G * A, e - s)
            self._chunk_expected(vt, s, e, q)
            V_new[:, s:e] = q.view(G, A, e - s).mul_(gamma).add_(r[:, :, s:e]).amax(1)

        self._run_chunks(chunk)
        return V_new

    def _vt(self, V: Tensor) -> Tensor:
        """``V^T`` flattened, ``[N * G]`` (c'-major: the g' of one sample share a cache line).

        Large ones go to one persistent buffer on transparent huge pages where the OS allows it, for
        fewer TLB misses on the sweep's random reads.
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
        run_tasks(lambda se: fn(*se), chunks(N, self._chunk), work=reads, workers=self.workers)

    def _chunk_expected(self, vt: Tensor, s: int, e: int, out: Tensor) -> None:
        """Rows ``[s, e)`` of ``E^`` into ``out [G * A, e - s]``: per block one gather of the m samples
        of every reachable g' (adjacent in ``V^T``) and one mat-vec (the mean); per ``(g, a)`` a copy
        of its g' column, or a ``P_g``-weighted mat-vec."""
        buf, n, m, plan = self._buffers, e - s, self.nxt.shape[2], self._plan
        for b, support in enumerate(plan.support):
            U = len(support)
            ix = buf.get("ix", n * U * m, torch.int32, vt.device).view(n, U, m)
            for u, g_next in enumerate(support):  # U strided adds (no broadcast temporary)
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


__all__ = ["SampledKernel", "gather_chunk_rows"]
