"""Training data for neural SUBSAMPLE-Q: sampled Bellman targets from the generative model (§3).

:class:`GenerativeSource` draws batches of ``(s_g, s_Delta, a_g)`` from a configurable state
distribution and, for each item, ``m`` next states from the env kernels ``P_g`` and ``P_l``
(every sampled agent moves independently). All tensors live on the device of the env it is given
and come from one seeded ``torch.Generator`` there; its state (and the visited-state pool) is part
of its ``state_dict()``, so a resumed run draws exactly the batches an
uninterrupted one would.

State distributions (``state_dist``):

* ``uniform``: ``s_g`` and every sampled ``s_i`` i.i.d. uniform.
* ``simplex``: ``F ~ Dirichlet(1, .., 1)`` over local states, then ``s_i ~ F`` i.i.d. (covers
  every empirical distribution, also concentrated ones that ``uniform`` never reaches for large k).
* ``visited``: a pool of ``pool_size`` full n-agent systems is advanced one step per batch with the
  current epsilon-greedy subsampled policy (Algorithm 2); items are a pool entry and a fresh uniform
  k-subset of its agents. A fraction ``uniform_frac`` of each batch is drawn from ``simplex``.
* ``trajectory``: learning from n-agent rollouts alone, for any simulator
  (:class:`sqtorch.neural.sim_data.SimulatorSource`, docs/model.md §3).

A :class:`~sqtorch.envs.protocol.Simulator` that is not a :class:`GlobalLocalMDP` (continuous
local states, a user's own code) is sampled through its protocol methods by
:class:`~sqtorch.neural.sim_data.SimulatorSource`; this module's :class:`GenerativeSource` is the
tensor path of a :class:`GlobalLocalMDP`.

Lightning gets only :class:`StepDataset` (an infinite iterable of step indices, read in the
main process): the batch itself is drawn inside ``training_step``. Drawing it in the data
loader would let Lightning's one-batch prefetch advance the generator past the checkpoint, and a
``visited`` batch must see the network of the current step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import IterableDataset

from sqtorch.checks import check_int, check_k, check_unit
from sqtorch.envs.base import GlobalLocalMDP
from sqtorch.envs.protocol import Simulator
from sqtorch.envs.simulator import (
    IMPURE,
    cdf_columns,
    lookup_sampler,
    make_generator,
    sample_categorical,
    sample_initial_state,
    sample_subset,
    step,
)
from sqtorch.runtime import no_autograd_dispatch
from sqtorch.tabular.counts import counts_of

GENERATIVE_DISTS = ("uniform", "simplex", "visited")  # the env is queried at chosen states
STATE_DISTS = (*GENERATIVE_DISTS, "trajectory")  # trajectory: observed rollouts only (sim_data.py)
Policy = Callable[[Tensor, Tensor], Tensor]


def uniform_states(G: int, L: int, k: int, B: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """``state_dist = uniform``: ``s_g [B]`` and every one of the k local states ``[B, k]`` i.i.d. uniform."""
    s_g = torch.randint(G, (B,), generator=gen, device=gen.device)
    return s_g, torch.randint(L, (B, k), generator=gen, device=gen.device)


def simplex_states(G: int, L: int, k: int, B: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """``state_dist = simplex``: uniform ``s_g``, ``F ~ Dirichlet(1, .., 1)`` per row, then ``s_i ~ F`` i.i.d."""
    dev = gen.device
    s_g = torch.randint(G, (B,), generator=gen, device=dev)
    e = -torch.rand(B, L, generator=gen, device=dev).clamp_min(1e-12).log()
    F = e / e.sum(-1, keepdim=True)  # F ~ Dirichlet(1)
    # CUDA's cumsum has no deterministic kernel (trainer.deterministic=true): a triangular matmul does
    upper = torch.ones(L, L, dtype=F.dtype, device=F.device).triu()
    cdf = F @ upper if F.is_cuda else F.cumsum(-1)
    u = torch.rand(B, k, generator=gen, device=dev)
    return s_g, (u[..., None] >= cdf[:, None, :-1]).sum(-1)


@dataclass
class DataConfig:
    """Where training items come from (``algo.data.*``; see the module docstring)."""

    state_dist: str = "visited"  # uniform | simplex | visited | trajectory (sqtorch/neural/sim_data.py)
    uniform_frac: float = 0.5  # visited: fraction of each batch drawn from `simplex`
    pool_size: int = 256  # visited: parallel n-agent systems
    epsilon: float = 0.1  # visited: exploration of the pool's policy
    reset_prob: float = 0.02  # visited: per-step probability that a pooled system restarts

    def __post_init__(self) -> None:
        if self.state_dist not in STATE_DISTS:
            raise ValueError(f"algo.data.state_dist = '{self.state_dist}' is unknown; allowed: {list(STATE_DISTS)}")
        check_int("algo.data.pool_size", self.pool_size, 1, "parallel n-agent systems")
        for key in ("uniform_frac", "epsilon", "reset_prob"):
            check_unit(f"algo.data.{key}", getattr(self, key))


@dataclass
class Batch:
    """One training batch: current items and ``m`` sampled successors of each.

    ``s_g [B]``, ``s_sub [B, k]`` (``[B, k, d]`` for continuous local states), ``a_g [B]``,
    ``r [B]`` (the subsampled reward ``r_Delta``), ``g_next [B, m]`` and the k successors of each
    of the m samples: their count vectors ``c_next [B, m, L]`` for finite local states, else the
    states themselves ``x_next [B, m, k, d]``.
    """

    s_g: Tensor
    s_sub: Tensor
    a_g: Tensor
    r: Tensor
    g_next: Tensor
    c_next: Tensor | None
    x_next: Tensor | None = None


class PooledSampler:
    """Checkpointing shared by the samplers: their seeded generator ``gen`` and pool ``pool_g``/``pool_l``."""

    gen: torch.Generator
    device: torch.device
    pool_g: Tensor | None
    pool_l: Tensor | None

    def sample_states(self, B: int) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def advance_pool(self, policy: Policy) -> None:
        raise NotImplementedError

    def successor_fields(self, s_g: Tensor, s_sub: Tensor, a_g: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``(g_next [B, m], c_next [B, m, L] | None, x_next [B, m, k(, d)] | None)`` of :class:`Batch`."""
        raise NotImplementedError

    def generative_batch(self, model: Simulator, B: int, policy: Policy | None) -> Batch:
        """Items from :meth:`sample_states` (after one pool step when ``policy`` is given), uniform ``a_g``,
        ``r_Delta`` by ``model.reward`` on the k agents, and their ``m`` successors."""
        if policy is not None:
            self.advance_pool(policy)
        s_g, s_sub = self.sample_states(B)
        a_g = torch.randint(model.A, (B,), generator=self.gen, device=self.device)
        r = model.reward(s_g, s_sub, a_g)  # r_Delta: mean over the k sampled agents
        return Batch(s_g, s_sub, a_g, r, *self.successor_fields(s_g, s_sub, a_g))

    def state_dict(self) -> dict:
        """Generator state and visited pool (saved by ``on_save_checkpoint``)."""
        return {
            "gen": self.gen.get_state(),
            "pool_g": None if self.pool_g is None else self.pool_g.cpu(),
            "pool_l": None if self.pool_l is None else self.pool_l.cpu(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (same device type: a CUDA generator state fits no CPU one)."""
        try:
            self.gen.set_state(state["gen"])
        except RuntimeError as e:
            raise RuntimeError(
                f"cannot restore the sampler's {self.device.type} generator from this checkpoint "
                f"(saved on another device type?): {e}; resume on the device it was saved on"
            ) from e
        if state.get("pool_g") is not None:
            self.pool_g = state["pool_g"].to(self.device)
            self.pool_l = state["pool_l"].to(self.device)


class GenerativeSource(PooledSampler):
    """Seeded sampler of :class:`Batch` es on the env's device (docs/model.md §3)."""

    def __init__(
        self,
        env: GlobalLocalMDP,
        n: int,
        k: int,
        m: int,
        data: DataConfig | None = None,
        seed: int = 0,
    ) -> None:
        d = data if data is not None else DataConfig()
        check_k(k, n)
        self.env, self.n, self.k, self.m = env, n, k, check_int("m", m, 1, "next-state samples per item")
        if d.state_dist not in GENERATIVE_DISTS:
            raise ValueError(f"GenerativeSource draws {list(GENERATIVE_DISTS)}; state_dist = '{d.state_dist}' is "
                             "SimulatorSource's (sqtorch.neural.sim_data)")
        self.state_dist, self.uniform_frac = d.state_dist, float(d.uniform_frac)
        self.epsilon, self.reset_prob = float(d.epsilon), float(d.reset_prob)
        self.device = env.device
        self.cdf_g, self.cdf_l = cdf_columns(env.P_g), cdf_columns(env.P_l)
        self.lookup_l = lookup_sampler(env.P_l) if env.L < IMPURE else None
        self.gen = make_generator(seed, self.device)
        self.pool_g: Tensor | None = None
        self.pool_l: Tensor | None = None
        if d.state_dist == "visited":
            self.pool_g, self.pool_l = sample_initial_state(env, n, d.pool_size, self.gen)

    # ---- state distributions -------------------------------------------------------------
    def _uniform(self, B: int) -> tuple[Tensor, Tensor]:
        return uniform_states(self.env.G, self.env.L, self.k, B, self.gen)

    def _simplex(self, B: int) -> tuple[Tensor, Tensor]:
        return simplex_states(self.env.G, self.env.L, self.k, B, self.gen)

    def _visited(self, B: int) -> tuple[Tensor, Tensor]:
        assert self.pool_g is not None and self.pool_l is not None
        rows = torch.randint(len(self.pool_g), (B,), generator=self.gen, device=self.device)
        idx = sample_subset(self.n, self.k, B, self.gen)
        return self.pool_g[rows], self.pool_l[rows].gather(1, idx)

    def sample_states(self, B: int) -> tuple[Tensor, Tensor]:
        """``(s_g [B], s_sub [B, k])`` from the configured state distribution."""
        if self.state_dist == "uniform":
            return self._uniform(B)
        if self.state_dist == "simplex":
            return self._simplex(B)
        n_uni = int(round(self.uniform_frac * B))
        g1, x1 = self._visited(B - n_uni)
        g2, x2 = self._simplex(n_uni)
        return torch.cat([g1, g2]), torch.cat([x1, x2])

    def advance_pool(self, policy: Policy) -> None:
        """One epsilon-greedy step of every pooled n-agent system (``visited`` only)."""
        if self.pool_g is None or self.pool_l is None:
            return
        R = len(self.pool_g)
        idx = sample_subset(self.n, self.k, R, self.gen)
        with torch.no_grad():
            a = policy(self.pool_g, self.pool_l.gather(1, idx))
        explore = torch.rand(R, generator=self.gen, device=self.device) < self.epsilon
        a_rand = torch.randint(self.env.A, (R,), generator=self.gen, device=self.device)
        a = torch.where(explore, a_rand, a)
        g, s_l, _ = step(self.env, self.pool_g, self.pool_l, a, self.gen, self.cdf_g, self.cdf_l, reward=False)
        reset = torch.rand(R, generator=self.gen, device=self.device) < self.reset_prob
        g0, l0 = sample_initial_state(self.env, self.n, R, self.gen)
        self.pool_g = torch.where(reset, g0, g)
        self.pool_l = torch.where(reset[:, None], l0, s_l)

    # ---- successors ----------------------------------------------------------------------
    def successors(self, s_g: Tensor, s_sub: Tensor, a_g: Tensor) -> tuple[Tensor, Tensor]:
        """``m`` independent successors per item: ``g_next [B, m]``, ``c_next [B, m, L]``."""
        B, env = len(s_g), self.env
        ga = (s_g * env.A + a_g)[:, None].expand(B, self.m)
        u_g = torch.rand(B, self.m, generator=self.gen, device=self.device, dtype=torch.float64)
        g_next = sample_categorical(self.cdf_g, ga, u_g)
        rows = ga[..., None] * env.L + s_sub[:, None, :]  # [B, m, k]
        u_l = torch.rand(rows.shape, generator=self.gen, device=self.device, dtype=torch.float64)
        if self.lookup_l is not None:  # same draws as inverse-CDF sampling, one gather per agent
            x_next = self.lookup_l.sample(rows, u_l)
        else:
            x_next = sample_categorical(self.cdf_l, rows, u_l)
        return g_next, counts_of(x_next, env.L)

    def sample(self, B: int, policy: Policy | None = None) -> Batch:
        """One batch; with ``visited`` and a ``policy`` the pool first moves one step.

        Drawn below autograd's dispatch (:func:`sqtorch.runtime.no_autograd_dispatch`): no gradient
        flows through a batch, and the draws modify in place only tensors they make.
        """
        with no_autograd_dispatch():
            return self.generative_batch(self.env, B, policy)

    def successor_fields(self, s_g: Tensor, s_sub: Tensor, a_g: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``(g_next, c_next, None)``: see :meth:`successors`."""
        return (*self.successors(s_g, s_sub, a_g), None)


class StepDataset(IterableDataset):
    """Infinite stream of step indices; the batch is drawn in ``training_step`` (see module doc)."""

    def __iter__(self) -> Iterator[int]:
        i = 0
        while True:
            yield i
            i += 1
