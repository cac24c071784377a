"""The greedy policy of a SUBSAMPLE-MFQ table, split into its global and local parts (docs/model.md §7).

Algorithm 2 of arXiv 2412.00661: the global agent plays the ``a_g`` of the greedy joint action
at ``(s_g, s_Delta)``; a local agent plays its own component ``a_1`` of the greedy joint action at
``(s_g, s_self, s_others)`` with itself in the representative slot. Both depend only on the
global state, the state counts of the k agents and (local part) the agent's own state, so they
are two lookup tables:

- ``greedy_g[g, rank(c)]``: the global action;
- ``greedy_l[g, x, rank(c)]``: the local action of an agent in state x among the k agents of
  counts c (``c_x >= 1``; entries with ``c_x = 0`` are never read and hold 0).

**Tie rule.** The near-maximizers at ``(g, c)`` are the ``(a_g, z)`` with ``c(z) = c`` and
``Q_k(g, a_g, z) >= V_k(g, c) - tie_tol``. The greedy joint action is the lexicographically first
near-maximizer in the order ``(a_g, a_1, a_2, ..., a_k)`` of the standard form ``Q_k(s_g, s_Delta,
a_g, a_Delta)``: ``a_g`` is the smallest global action of a near-maximizer, and the representative
agent (state x) plays the smallest ``a_1`` such that some near-maximizer with that ``a_g`` gives an
agent in state x the action ``a_1`` (``z_{(x, a_1)} >= 1``). The global agent and every local
agent thus agree on ``a_g`` whenever they see the same counts. ``tie_tol`` defaults to
:func:`default_tie_tol`: ``TIE_FACTOR`` times the solver's error bound (its ``tol``, or its float64
noise floor if larger), at least ``TIE_TOL_MIN``: entries the solver cannot tell apart count as
ties, and the rule, not rounding noise, decides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from sqtorch import runtime
from sqtorch.checks import check_float
from sqtorch.envs.base import check_states
from sqtorch.tabular.bellman import NOISE_ULPS
from sqtorch.tabular.counts import num_counts, rank_states
from sqtorch.tabular.mfq import MFQTable, pair_index

TIE_FACTOR = 10.0
TIE_TOL_MIN = 1e-9


def default_tie_tol(tol: float, scale: float = 0.0) -> float:
    """The tie tolerance of a table solved to within ``tol`` whose values reach ``scale`` in absolute value.

    ``TIE_FACTOR`` times the larger of ``tol`` and the solver's float64 noise floor
    ``NOISE_ULPS * eps * scale`` (:func:`sqtorch.tabular.bellman.value_iteration`), at least ``TIE_TOL_MIN``.
    """
    floor = NOISE_ULPS * torch.finfo(torch.float64).eps * float(scale)
    return max(TIE_TOL_MIN, TIE_FACTOR * max(float(tol), floor))


def greedy_tables(q: Tensor, k: int, L: int, Al: int, tie_tol: float) -> tuple[Tensor, Tensor]:
    """``(greedy_g [G, N], greedy_l [G, L, N])`` of ``q [G, A, C(k + L Al - 1, k)]`` under the tie rule.

    Vectorized over the table: segment maxima over z with a given state count c (and, for the
    local part, holding pair p) via ``scatter_reduce`` on the precomputed :class:`PairIndex`.
    """
    check_float("tie_tol", tie_tol, 0.0, hi_open=True, what="a finite number >= 0")
    G, A, NZ = q.shape
    index = pair_index(k, L, Al, q.device)
    if NZ != index.NZ:
        raise ValueError(f"q has {NZ} pair-count tables, expected C(k + L Al - 1, k) = {index.NZ} at k = {k}")
    N, K = index.N, L * Al
    q = q.to(torch.float64)
    qmax = q.new_full((G, A, N), -math.inf).scatter_reduce_(2, index.state_of.expand(G, A, NZ), q, "amax")
    thr = qmax.amax(1) - tie_tol  # [G, N]
    greedy_g = (qmax >= thr[:, None, :]).to(torch.uint8).argmax(1)  # first (smallest) a_g
    q_sel = q.gather(1, greedy_g.index_select(1, index.state_of)[:, None, :]).squeeze(1)  # [G, NZ]
    h = q.new_full((G, N * K), -math.inf)
    cols = index.state_of.index_select(0, index.inc_z) * K + index.inc_p  # (c(z), p) of every held pair
    h.scatter_reduce_(1, cols.expand(G, -1), q_sel.index_select(1, index.inc_z), "amax")
    ok = h.view(G, N, L, Al) >= thr[:, :, None, None]
    greedy_l = ok.to(torch.uint8).argmax(-1).permute(0, 2, 1).contiguous()  # [G, L, N]: first a_1
    return greedy_g, greedy_l


@dataclass
class MFQPolicy:
    """Decentralized greedy policy of a SUBSAMPLE-MFQ table (Algorithm 2; tie rule in the module docstring).

    ``act_global(s_g [B], s_sub [B, k]) -> a_g [B]``: the global action from the states of k
    sampled agents. ``act_local(s_g [B], s_self [B], s_others [B, k - 1]) -> a_l [B]``: the action
    of an agent in state ``s_self`` that sampled k - 1 others. ``act`` is ``act_global`` (the
    :class:`sqtorch.evaluation.execution.SubsampledPolicy` interface of the global part).
    """

    greedy_g: Tensor  # [G, N]
    greedy_l: Tensor  # [G, L, N]
    k: int
    L: int
    Al: int
    A: int
    tie_tol: float

    @classmethod
    def from_table(cls, table: MFQTable, tie_tol: float | None = None) -> MFQPolicy:
        tie_tol = default_tie_tol(table.tol, float(table.v.abs().max())) if tie_tol is None else float(tie_tol)
        g, loc = greedy_tables(table.q, table.k, table.L, table.Al, tie_tol)
        return cls(g, loc, table.k, table.L, table.Al, table.A, tie_tol)

    @classmethod
    def with_local_rule(cls, greedy_g: Tensor, rule: Tensor, k: int, Al: int, A: int) -> MFQPolicy:
        """The global agent plays the greedy table ``greedy_g [G, N_k]`` (e.g. ``QTable.greedy()`` of
        SUBSAMPLE-Q on :meth:`LocalActionMDP.with_local_rule`), every local agent ``rule[own state]``."""
        rule = torch.as_tensor(rule, dtype=torch.int64, device=greedy_g.device).reshape(-1)
        G, N = greedy_g.shape
        return cls(greedy_g, rule[None, :, None].expand(G, len(rule), N).clone(), k, len(rule), Al, A, 0.0)

    @property
    def G(self) -> int:
        return self.greedy_g.shape[0]

    def to(self, device: torch.device | str) -> MFQPolicy:
        """Move the tables to ``device`` (in place); returns ``self``."""
        self.greedy_g, self.greedy_l = self.greedy_g.to(device), self.greedy_l.to(device)
        return self

    def on(self, device: torch.device | str) -> MFQPolicy:
        """A copy with its tables on ``device`` (``self`` is unchanged)."""
        return replace(self, greedy_g=self.greedy_g.to(device), greedy_l=self.greedy_l.to(device))

    def check_sizes(self, G: int, A: int, L: int, Al: int) -> None:
        """Raise ``ValueError`` unless the policy is for an env with these sizes."""
        mine = (self.G, self.A, self.L, self.Al)
        if mine != (G, A, L, Al):
            raise ValueError(f"policy is for (G, A, L, Al) = {mine}, the env has {(G, A, L, Al)}")
        if self.greedy_g.shape[1] != num_counts(self.k, L):
            raise ValueError(f"greedy_g has {self.greedy_g.shape[1]} columns, expected C(k + L - 1, k) at k = {self.k}")

    def act_global(self, s_g: Tensor, s_sub: Tensor) -> Tensor:
        """The global agent's action from ``s_g [B]`` and the k sampled local states ``s_sub [B, k]``."""
        if s_sub.shape[-1] != self.k:
            raise ValueError(f"s_sub has {s_sub.shape[-1]} agents per row, this policy has k = {self.k}")
        if not runtime.sync_free(s_g):
            check_states("s_g", s_g, self.G)
            check_states("s_sub", s_sub, self.L)
        return self.greedy_g[s_g, rank_states(s_sub, self.L)]

    act = act_global

    def act_local(self, s_g: Tensor, s_self: Tensor, s_others: Tensor) -> Tensor:
        """A local agent's action: own state ``s_self [B]``, k - 1 sampled others ``s_others [B, k - 1]``."""
        if s_others.shape[-1] != self.k - 1:
            raise ValueError(f"s_others has {s_others.shape[-1]} agents per row, expected k - 1 = {self.k - 1}")
        if not runtime.sync_free(s_g):
            check_states("s_g", s_g, self.G)
            check_states("s_self", s_self, self.L)
            check_states("s_others", s_others, self.L)
        c = rank_states(torch.cat([s_self[..., None], s_others], -1), self.L)
        return self.greedy_l[s_g, s_self, c]


__all__ = ["MFQPolicy", "TIE_FACTOR", "TIE_TOL_MIN", "default_tie_tol", "greedy_tables"]
