"""The m next count vectors of every ``(b, c)`` of SUBSAMPLE-Q (docs/model.md §2), drawn once.

b runs over the distinct local kernels ``P_l[g, a]``; each of the k agents of a count vector c
moves with one draw from the bucket table of :class:`sqtorch.envs.simulator.LookupSampler`, and
the next count vector is ranked straight from the k next-state columns. The draws come from one
seeded generator per fixed chunk of rows, so they do not depend on the number of threads.
"""

from __future__ import annotations

import numpy.random  # noqa: F401  (derive_seed's SeedSequence: imported with the module, not in the first learn)
import torch
from torch import Tensor

from sqtorch.envs.base import GlobalLocalMDP
from sqtorch.envs.simulator import IMPURE, LOOKUP_ENTRIES, LookupSampler
from sqtorch.runtime import derive_seed
from sqtorch.tabular.buffers import chunks, run_tasks
from sqtorch.tabular.counts import num_counts, rank_columns, state_columns
from sqtorch.tabular.exact import local_kernels
from sqtorch.tabular.sampled_kernel import SampledKernel

SAMPLE_CHUNK_ROWS = 1 << 13  # (block, count vector) rows per sampling chunk on CPU (k uniform columns of m)
CUDA_SAMPLE_CHUNK_ROWS = 1 << 17  # on CUDA one kernel launch must cover far more rows; one stream, no thread pool
SAMPLE_TASK_DRAWS = 1 << 20  # k * m * rows at most drawn in one task (else one chunk per task)


def sample_chunk_rows(device: torch.device) -> int:
    """``(block, count vector)`` rows per sampling chunk (each has its own generator)."""
    return CUDA_SAMPLE_CHUNK_ROWS if device.type == "cuda" else SAMPLE_CHUNK_ROWS


def _lookup_draw(local: LookupSampler, rows: Tensor, u: Tensor) -> Tensor:
    """Next local states (uint8 ``[k, n, m]``) of bucket-table rows ``rows`` (int32 ``[k, n]``) for uniforms ``u``.

    The draws of :meth:`LookupSampler.sample_uint8` (bucket ``floor(u 2^bits)``, impure buckets
    resolved by the exact CDF as :func:`sqtorch.envs.simulator.sample_categorical` does), for all
    k agents in one pass and with int32 indices.
    """
    bits = local.bits
    idx = u.mul(1 << bits).to(torch.int32).add_(rows.mul(1 << bits)[:, :, None])
    out = local.table.index_select(0, idx.view(-1))
    # nonzero reads the count on the host: once per sampling chunk of the build (set-up, not the sweep loop),
    # so that only the draws in impure buckets pay for the exact CDF
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
    row_chunks = chunks(B * N, sample_chunk_rows(dev))
    per_task = len(row_chunks) if nxt.numel() * k <= SAMPLE_TASK_DRAWS else 1  # a small table: one task
    tasks = [list(range(i, min(i + per_task, len(row_chunks)))) for i in range(0, len(row_chunks), per_task)]

    def uniforms(chunk_id: int) -> Tensor:
        s, e = row_chunks[chunk_id]
        gen = torch.Generator(device=dev).manual_seed(derive_seed(seed, chunk_id))
        return torch.rand(k, e - s, m, generator=gen, device=dev, dtype=torch.float64)

    def work(ids: list[int]) -> None:
        s, e = row_chunks[ids[0]][0], row_chunks[ids[-1]][1]
        u = torch.cat([uniforms(i) for i in ids], 1) if len(ids) > 1 else uniforms(ids[0])
        rows = torch.arange(s, e, dtype=torch.int32, device=dev)
        b = rows.div(N, rounding_mode="floor")
        x_next = _lookup_draw(local, X.index_select(1, rows - b * N).add_(b * L), u)
        torch.mul(rank_columns(list(x_next), L, dtype=torch.int32), G, out=nxt[s:e])

    run_tasks(work, tasks, work=nxt.numel() * k, workers=workers)
    return SampledKernel(nxt.view(B, N, m), block_of, env.P_g, workers)


__all__ = ["sample_chunk_rows", "sample_kernel"]
