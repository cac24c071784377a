"""Training data for neural SUBSAMPLE-Q from any simulator (docs/model.md §1.1, §3).

:class:`SimulatorSource` draws the same :class:`~sqtorch.neural.data.Batch` es as
:class:`~sqtorch.neural.data.GenerativeSource`, but only through the protocol methods of a
:class:`~sqtorch.envs.protocol.Simulator` (``initial``, ``step``, ``local_step``,
``global_step``, ``reward``), so it serves a user's batched torch code and continuous local states.
Every random number comes from its one seeded generator (saved in its ``state_dict()``
with the pool), so a resumed run draws exactly the batches an uninterrupted one would.

Two ways to get items (``algo.data.state_dist``):

* ``visited`` (generative, Algorithm 1 of arXiv 2403.00222): a pool of ``pool_size`` n-agent systems
  moves one epsilon-greedy step of Algorithm 2 per batch; an item is a pool entry, a fresh uniform
  k-subset ``Delta`` of its agents and a uniform ``a_g``; its ``m`` successors are drawn by calling
  ``local_step`` on those k agents and ``global_step`` (the simulator is queried at the item's state).
  A fraction ``uniform_frac`` of the items starts elsewhere: from ``simplex`` for finite local
  states, from ``initial(k, .)`` for continuous ones. ``uniform`` and ``simplex`` alone need finite
  local states.
* ``trajectory`` (learning from rollouts only): the simulator is never set to a chosen state. The pool
  moves one epsilon-greedy step per batch; an item is a pool entry *before* that step, a uniform
  k-subset of its agents, the action the pool played, and, as its one successor (``m = 1``), the
  same k agents' observed next states and the observed next global state. ``r_Delta`` is
  ``reward`` on the k agents, i.e. the data must hold each agent's local reward (docs/model.md §3
  states the assumptions). A pooled system restarts (``initial``) with probability ``reset_prob``
  per step, like an episode.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sqtorch.checks import check_int, check_k
from sqtorch.envs.protocol import Simulator
from sqtorch.envs.simulator import gather_agents, make_generator, sample_subset
from sqtorch.neural.data import Batch, DataConfig, Policy, PooledSampler, simplex_states, uniform_states
from sqtorch.tabular.counts import counts_of

SCALE_SEED = 0  # seed of the short rollout that sets the reward and feature scales (never the training seed)


def _keep(mask: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """``new`` where ``mask [B]`` holds, else ``old`` (``[B]``, ``[B, n]`` or ``[B, n, d]``)."""
    return torch.where(mask.reshape(-1, *[1] * (new.dim() - 1)), new, old)


@torch.no_grad()
def simulator_scales(
    sim: Simulator, agents: int = 64, batch: int = 64, steps: int = 32
) -> tuple[float, Tensor, Tensor]:
    """``(r_max, loc [d], scale [d])`` from a short uniformly random rollout of ``sim`` (seed ``SCALE_SEED``).

    ``r_max`` is the largest ``|reward|`` of a single agent's subsystem (bounds ``|r_Delta|`` for
    every k, as ``max|r_g| + max|r_l|`` does for a tensor env); ``loc`` and ``scale`` are the mean
    and standard deviation of each coordinate of the visited continuous local states (``scale`` 1
    where a coordinate does not vary; empty for finite ones): DeepSets feeds ``(x - loc) / scale`` to
    ``phi``. Deterministic: the same simulator gives the same numbers on every call.
    """
    gen = make_generator(SCALE_SEED, sim.device)
    s_g, s_l = sim.initial(agents, batch, gen)
    r_max, seen = 0.0, []
    for _ in range(steps):
        a_g = torch.randint(sim.A, (batch,), generator=gen, device=sim.device)
        one = sim.reward(s_g.repeat_interleave(agents), s_l.reshape(batch * agents, 1, *s_l.shape[2:]),
                         a_g.repeat_interleave(agents))
        r_max = max(r_max, float(one.abs().max()))
        seen.append(s_l)
        s_g, s_l, _ = sim.step(s_g, s_l, a_g, gen)
    if sim.local.is_finite:
        empty = torch.zeros(0, dtype=torch.float32)
        return max(r_max, 1e-6), empty, empty
    x = torch.cat(seen).reshape(-1, sim.local.d).double()
    loc, scale = x.mean(0), x.std(0)
    scale = torch.where(scale > 1e-6 * (1 + loc.abs()), scale, torch.ones_like(scale))
    return max(r_max, 1e-6), loc.float().cpu(), scale.float().cpu()


def check_state_dist(state_dist: str, sim: Simulator) -> None:
    """``ValueError`` naming ``algo.data.state_dist`` if it needs finite local states and ``sim`` has none."""
    if state_dist in ("uniform", "simplex") and not sim.local.is_finite:
        raise ValueError(f"algo.data.state_dist = '{state_dist}' needs finite local states; env "
                         f"'{sim.name}' has {sim.local.describe()}: allowed ['visited', 'trajectory']")


class SimulatorSource(PooledSampler):
    """Seeded sampler of :class:`Batch` es from a :class:`Simulator` (module docstring)."""

    def __init__(
        self, sim: Simulator, n: int, k: int, m: int, data: DataConfig | None = None, seed: int = 0
    ) -> None:
        d = data if data is not None else DataConfig()
        check_k(k, n)
        self.sim, self.n, self.k, self.m = sim, n, k, check_int("m", m, 1, "next-state samples per item")
        self.finite = sim.local.is_finite
        self.state_dist, self.uniform_frac = d.state_dist, float(d.uniform_frac)
        check_state_dist(d.state_dist, sim)
        if d.state_dist == "trajectory" and m != 1:
            raise ValueError(f"algo.m = {m}: trajectory data holds one observed successor per item; set algo.m=1")
        self.epsilon, self.reset_prob = float(d.epsilon), float(d.reset_prob)
        self.device = sim.device
        self.gen = make_generator(seed, self.device)
        self.pool_g: Tensor | None = None
        self.pool_l: Tensor | None = None
        if d.state_dist in ("visited", "trajectory"):
            self.pool_g, self.pool_l = sim.initial(n, d.pool_size, self.gen)

    # ---- states --------------------------------------------------------------------------
    def _pool_items(self, B: int) -> tuple[Tensor, Tensor, Tensor]:
        """Rows ``[B]`` of the pool and a uniform k-subset of their agents ``[B, k]``."""
        assert self.pool_g is not None and self.pool_l is not None
        rows = torch.randint(len(self.pool_g), (B,), generator=self.gen, device=self.device)
        return rows, sample_subset(self.n, self.k, B, self.gen), self.pool_g[rows]

    def _elsewhere(self, B: int) -> tuple[Tensor, Tensor]:
        """The ``uniform_frac`` part of a ``visited`` batch: ``simplex`` (finite) or ``initial(k, B)``."""
        if self.finite:
            return simplex_states(self.sim.G, self.sim.L, self.k, B, self.gen)
        return self.sim.initial(self.k, B, self.gen)

    def sample_states(self, B: int) -> tuple[Tensor, Tensor]:
        """``(s_g [B], s_sub [B, k] | [B, k, d])`` from the configured generative state distribution."""
        if self.state_dist == "uniform":
            return uniform_states(self.sim.G, self.sim.L, self.k, B, self.gen)
        if self.state_dist == "simplex":
            return simplex_states(self.sim.G, self.sim.L, self.k, B, self.gen)
        n_else = int(round(self.uniform_frac * B))
        rows, idx, g1 = self._pool_items(B - n_else)
        assert self.pool_l is not None
        x1 = gather_agents(self.pool_l[rows], idx)
        g2, x2 = self._elsewhere(n_else)
        return torch.cat([g1, g2]), torch.cat([x1, x2])

    def _pool_step(self, policy: Policy | None) -> tuple[Tensor, Tensor, Tensor]:
        """One epsilon-greedy step of every pooled system: ``(a_g [R], s_g' [R], s_l' [R, n(, d)])``."""
        assert self.pool_g is not None and self.pool_l is not None
        R = len(self.pool_g)
        idx = sample_subset(self.n, self.k, R, self.gen)
        a = torch.randint(self.sim.A, (R,), generator=self.gen, device=self.device)
        if policy is not None:
            with torch.no_grad():
                greedy = policy(self.pool_g, gather_agents(self.pool_l, idx))
            explore = torch.rand(R, generator=self.gen, device=self.device) < self.epsilon
            a = torch.where(explore, a, greedy)
        g, s_l, _ = self.sim.step(self.pool_g, self.pool_l, a, self.gen)
        return a, g, s_l

    def _restart(self, g: Tensor, s_l: Tensor) -> None:
        """The pool becomes ``(g, s_l)``, each system restarted with probability ``reset_prob``."""
        R = len(g)
        reset = torch.rand(R, generator=self.gen, device=self.device) < self.reset_prob
        g0, l0 = self.sim.initial(self.n, R, self.gen)
        self.pool_g, self.pool_l = _keep(reset, g0, g), _keep(reset, l0, s_l)

    def advance_pool(self, policy: Policy) -> None:
        """One epsilon-greedy step of every pooled n-agent system (``visited``)."""
        if self.pool_g is None:
            return
        _, g, s_l = self._pool_step(policy)
        self._restart(g, s_l)

    # ---- batches -------------------------------------------------------------------------
    def _next_counts(self, x_next: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """``(c_next, None)`` for finite local states, ``(None, x_next)`` for continuous ones."""
        return (counts_of(x_next, self.sim.L), None) if self.finite else (None, x_next)

    def successors(self, s_g: Tensor, s_sub: Tensor, a_g: Tensor) -> tuple[Tensor, Tensor]:
        """``m`` successors per item from the simulator: ``g_next [B, m]``, ``x_next [B, m, k(, d)]``."""
        B, m = len(s_g), self.m
        g, a = s_g.repeat_interleave(m), a_g.repeat_interleave(m)
        x_next = self.sim.local_step(g, s_sub.repeat_interleave(m, 0), a, self.gen)
        g_next = self.sim.global_step(g, a, self.gen)
        return g_next.reshape(B, m), x_next.reshape(B, m, *s_sub.shape[1:])

    def _trajectory(self, B: int, policy: Policy | None) -> Batch:
        assert self.pool_l is not None
        rows, idx, s_g = self._pool_items(B)
        before = self.pool_l
        a, g, s_l = self._pool_step(policy)
        s_sub = gather_agents(before[rows], idx)
        x_next = gather_agents(s_l[rows], idx)[:, None]
        a_g = a[rows]
        r = self.sim.reward(s_g, s_sub, a_g)
        self._restart(g, s_l)
        return Batch(s_g, s_sub, a_g, r, g[rows][:, None], *self._next_counts(x_next))

    def sample(self, B: int, policy: Policy | None = None) -> Batch:
        """One batch; with a pool and a ``policy`` the pool first moves one step (``visited``)."""
        if self.state_dist == "trajectory":
            return self._trajectory(B, policy)
        return self.generative_batch(self.sim, B, policy)

    def successor_fields(self, s_g: Tensor, s_sub: Tensor, a_g: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``(g_next, c_next, None)`` for finite local states, ``(g_next, None, x_next)`` for continuous ones."""
        g_next, x_next = self.successors(s_g, s_sub, a_g)
        return (g_next, *self._next_counts(x_next))


def q_scale_of_simulator(sim: Simulator) -> float:
    """``max |r| / (1 - gamma)`` with ``max |r|`` from :func:`simulator_scales`."""
    return simulator_scales(sim)[0] / (1.0 - float(sim.gamma))


__all__ = ["SimulatorSource", "check_state_dist", "q_scale_of_simulator", "simulator_scales"]
