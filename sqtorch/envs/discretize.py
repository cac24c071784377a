"""A continuous simulator seen through a histogram: the finite model tabular SUBSAMPLE-Q learns on.

The follow-ups of SUBSAMPLE-Q that run continuous local states (e.g. ALTERNATING-MARL) bin each
agent's state and act on the histogram of the sampled agents. :class:`Discretized` makes that a
finite :class:`~sqtorch.envs.protocol.Simulator` (docs/model.md §1.1), so the tabular learner can
query it (:mod:`sqtorch.tabular.simulator_kernel`), and :class:`DiscretizedPolicy` runs the learned
table on the continuous system.

Bins come from a short seeded rollout of ``sim`` under uniformly random global actions:
a coordinate that takes at most ``bins`` distinct values there (a mode flag) keeps them as
categories; any other gets ``bins`` equal-width bins between the 1% and 99% quantiles of its visited values (the
outermost two open).
The local state is the flat bin index over the coordinates (``L`` = product of the bin counts).
Each bin keeps up to ``members`` visited states: a bin's agent moves by drawing one of them
(one uniform per agent, so the number of draws depends only on the shapes) and calling
``sim.local_step`` on it, then re-binning; a bin's local reward is the mean over its members. The
global state, action and kernel are ``sim``'s. This is state aggregation, an approximation of the
continuous system whose error the study measures (the policy is always evaluated on ``sim``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sqtorch.checks import check_int
from sqtorch.envs.protocol import LocalSpace, Simulator
from sqtorch.envs.simulator import make_generator


class Discretized(Simulator):
    """``sim`` (continuous local states ``[..., d]``) on ``bins`` bins per coordinate (module docstring)."""

    def __init__(
        self, sim: Simulator, bins: int, seed: int = 0, agents: int = 64, batch: int = 64, steps: int = 64,
        members: int = 256,
    ) -> None:
        if sim.local.is_finite:
            raise ValueError(f"env '{sim.name}' has finite local states already: discretize only continuous ones")
        self.sim, self.bins = sim, check_int("bins", bins, 2, "bins per local-state coordinate")
        self.G, self.A, self.gamma, self.name = sim.G, sim.A, sim.gamma, f"{sim.name}_b{bins}"
        visited = self._rollout(seed, agents, batch, steps)  # [M, d] float64
        self.edges = [self._edges(visited[:, j]) for j in range(visited.shape[1])]
        sizes = [len(e) + 1 for e in self.edges]
        self.L_total = math.prod(sizes)
        self.strides = torch.tensor([math.prod(sizes[j + 1 :]) for j in range(len(sizes))], dtype=torch.int64)
        self.local = LocalSpace.finite(self.L_total)
        self._members(visited.to(torch.float32), members)
        self._bin_rewards()

    # ---- construction --------------------------------------------------------------------
    @torch.no_grad()
    def _rollout(self, seed: int, agents: int, batch: int, steps: int) -> Tensor:
        sim, gen = self.sim, make_generator(seed, self.sim.device)
        s_g, s_l = sim.initial(agents, batch, gen)
        seen = []
        for _ in range(steps):
            seen.append(s_l.reshape(-1, s_l.shape[-1]))
            a_g = torch.randint(sim.A, (batch,), generator=gen, device=sim.device)
            s_g, s_l, _ = sim.step(s_g, s_l, a_g, gen)
        return torch.cat(seen).double().cpu()

    def _edges(self, x: Tensor) -> Tensor:
        """Inner bin edges of one coordinate: midpoints of its few values, else equal widths over its 1-99% range."""
        values = torch.unique(x)
        if len(values) <= self.bins:
            return (values[1:] + values[:-1]) / 2
        lo, hi = torch.quantile(x, torch.tensor([0.01, 0.99], dtype=torch.float64)).tolist()
        return torch.linspace(lo, hi, self.bins + 1, dtype=torch.float64)[1:-1]

    def _members(self, visited: Tensor, members: int) -> None:
        """``self.table [L, members, d]``: each bin's first visited states, repeated to fill; ``self.count [L]``."""
        L = self.L_total
        idx = self.bin_of(visited)
        order = torch.argsort(idx, stable=True)
        count = torch.bincount(idx, minlength=L)
        start = count.cumsum(0) - count
        pos = torch.arange(members)[None, :] % count.clamp(min=1)[:, None]  # [L, members]
        table = visited[order[(start[:, None] + pos).clamp(max=len(order) - 1)]]
        empty = count == 0  # never visited: a point inside the bin (_centres)
        if empty.any():
            centre = self._centres()
            table[empty] = centre[empty][:, None, :]
        self.table = table
        self.count = count.clamp(min=1, max=members)

    def _centres(self) -> Tensor:
        """A point inside each bin: per coordinate, the midpoint of its edges (outer bins: one width out)."""
        cols = []
        for e in self.edges:
            if len(e) == 0:
                mids = torch.zeros(1, dtype=torch.float64)
            else:
                w = (e[-1] - e[0]) / max(len(e) - 1, 1) if len(e) > 1 else torch.tensor(1.0, dtype=torch.float64)
                bounds = torch.cat([e[:1] - w, e, e[-1:] + w])
                mids = (bounds[1:] + bounds[:-1]) / 2
            cols.append(mids)
        grid = torch.cartesian_prod(*cols) if len(cols) > 1 else cols[0][:, None]
        return grid.to(torch.float32).reshape(self.L_total, len(cols))

    @torch.no_grad()
    def _bin_rewards(self) -> None:
        """``self.r_bin [G, A, L]``: the mean one-agent reward of each bin's members (``r_g + r_l``)."""
        G, A, L, M = self.G, self.A, self.L_total, self.table.shape[1]
        g = torch.arange(G).repeat_interleave(A * L * M)
        a = torch.arange(A).repeat_interleave(L * M).repeat(G)
        x = self.table.reshape(L * M, 1, -1).repeat(G * A, 1, 1)
        r = self.sim.reward(g.to(self.sim.device), x.to(self.sim.device), a.to(self.sim.device)).cpu()
        mask = (torch.arange(M)[None, :] < self.count[:, None]).double()  # only the distinct members
        self.r_bin = (r.view(G, A, L, M) * mask).sum(-1) / mask.sum(-1)

    # ---- the finite simulator ------------------------------------------------------------
    def bin_of(self, x: Tensor) -> Tensor:
        """Flat bin index ``[...]`` (int64) of continuous states ``x [..., d]``."""
        out = torch.zeros(x.shape[:-1], dtype=torch.int64, device=x.device)
        for j, e in enumerate(self.edges):  # coordinates (d of them), never agents
            out += torch.bucketize(x[..., j].contiguous(), e.to(x.device, x.dtype), right=True) * int(self.strides[j])
        return out

    def initial(self, n: int, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        s_g, s_l = self.sim.initial(n, batch, generator)
        return s_g, self.bin_of(s_l)

    def global_step(self, s_g: Tensor, a_g: Tensor, generator: torch.Generator) -> Tensor:
        return self.sim.global_step(s_g, a_g, generator)

    def local_step(self, s_g: Tensor, s_l: Tensor, a_g: Tensor, generator: torch.Generator) -> Tensor:
        """Each agent: one uniform picks a member of its bin, ``sim.local_step`` moves it, then re-binned."""
        u = torch.rand(s_l.shape, generator=generator, device=s_l.device)
        pick = (u * self.count.to(s_l.device)[s_l]).long()
        rep = self.table.to(s_l.device)[s_l, pick]  # [B, m, d]
        return self.bin_of(self.sim.local_step(s_g, rep, a_g, generator))

    def reward(self, s_g: Tensor, s_l: Tensor, a_g: Tensor) -> Tensor:
        r = self.r_bin.to(s_l.device)
        return r[s_g[:, None], a_g[:, None], s_l].mean(-1)


class DiscretizedPolicy:
    """Runs a policy of the binned model (``policy.act(s_g, bins [B, k])``) on continuous states ``[B, k, d]``."""

    def __init__(self, policy: object, disc: Discretized) -> None:
        self.policy, self.disc, self.k = policy, disc, int(policy.k)  # type: ignore[attr-defined]

    def act(self, s_g: Tensor, s_sub: Tensor) -> Tensor:
        return self.policy.act(s_g, self.disc.bin_of(s_sub))  # type: ignore[attr-defined]


__all__ = ["Discretized", "DiscretizedPolicy"]
