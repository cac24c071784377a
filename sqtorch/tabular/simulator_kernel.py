"""The m-sample Bellman kernel of SUBSAMPLE-Q drawn from a finite simulator (docs/model.md §2, §1.1).

When an env is a :class:`~sqtorch.envs.protocol.Simulator` with finite local states but no kernel
tensors (a user's code, a discretized continuous system), :func:`simulator_kernel` asks the
simulator itself, as Algorithm 1 of arXiv 2403.00222 queries its generative model: for every
``(g, a, c)`` entry the k agents of the count vector c (sorted local states) move ``m`` times by
``local_step`` and ``g`` moves ``m`` times by ``global_step``. The draws come from one generator
seeded with ``seed``, in fixed chunks of rows, so a seed fixes the table.

The next count vectors enter the :class:`~sqtorch.tabular.sampled_kernel.SampledKernel` (one block
per ``(g, a)``), and the ``N m`` global draws of each ``(g, a)`` become its empirical global kernel
``P^_g[g, a, .]``: the operator is ``r + gamma sum_g' P^_g(g'|g, a) (1/m) sum_j max_a' Q(g', c'_j, a')``.
As g' and c' are independent given ``(g, a)`` (the model), it has the mean of the paper's joint
``(g'_j, c'_j)`` estimator; for a deterministic global kernel it is that estimator.
``r[g, a, c]`` is the simulator's ``reward`` on the k agents of c.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sqtorch.envs.protocol import Simulator
from sqtorch.envs.simulator import make_generator
from sqtorch.tabular.counts import rank_columns
from sqtorch.tabular.sampled_kernel import SampledKernel

SIM_CHUNK_AGENTS = 1 << 21  # agent moves per simulator call (bounds the memory of one chunk)


def simulator_kernel(
    sim: Simulator, k: int, m: int, seed: int, X: Tensor, workers: int = 1
) -> tuple[SampledKernel, Tensor]:
    """``(kernel, r [G, A, N] float64)`` of the m-sample operator from ``sim``'s protocol methods (module doc).

    ``X``: :func:`~sqtorch.tabular.counts.state_columns` of ``(k, L)`` (int32 ``[k, N]``). Rows
    ``(g, a, c)`` are taken in chunks of at most ``SIM_CHUNK_AGENTS / (k m)`` rows, each one call of
    ``local_step``, ``global_step`` and ``reward`` batched over its rows.
    """
    G, A, L, N = sim.G, sim.A, sim.L, X.shape[1]
    dev = sim.device
    gen = make_generator(seed, dev)
    states = X.T.to(torch.int64).to(dev)  # [N, k] sorted local states of each count vector
    rows_total = G * A * N
    nxt = torch.empty(rows_total, m, dtype=torch.int32, device=dev)
    g_hits = torch.zeros(G * A, G, dtype=torch.float64, device=dev)
    r = torch.empty(rows_total, dtype=torch.float64, device=dev)
    chunk = max(1, SIM_CHUNK_AGENTS // (k * m))
    for s in range(0, rows_total, chunk):  # chunks of table rows: memory, not a loop over entries
        row = torch.arange(s, min(s + chunk, rows_total), device=dev)
        ga, c = row.div(N, rounding_mode="floor"), row % N
        g, a, x = ga.div(A, rounding_mode="floor"), ga % A, states[c]
        r[row] = sim.reward(g, x, a)
        g_m, a_m = g.repeat_interleave(m), a.repeat_interleave(m)
        x_next = sim.local_step(g_m, x.repeat_interleave(m, 0), a_m, gen)  # [rows m, k]
        nxt[row] = rank_columns(list(x_next.T), L, dtype=torch.int32).view(-1, m) * G
        g_next = sim.global_step(g_m, a_m, gen)
        g_hits.index_put_((ga.repeat_interleave(m), g_next), torch.ones_like(g_next, dtype=torch.float64),
                          accumulate=True)
    P_hat = (g_hits / (N * m)).view(G, A, G)
    block_of = torch.arange(G * A, device=dev).view(G, A)
    return SampledKernel(nxt.view(G * A, N, m), block_of, P_hat, workers), r.view(G, A, N)


__all__ = ["simulator_kernel"]
