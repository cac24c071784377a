"""The simulator protocol: a global-local system as batched torch code (docs/model.md §1.1).

A :class:`Simulator` is the generative model of the paper (Algorithm 1 queries one): one global agent
with state ``s_g`` in ``{0..G-1}`` and action ``a_g`` in ``{0..A-1}``, and exchangeable local agents
whose states live in a declared :class:`LocalSpace`, finite (``int64`` indices ``{0..L-1}``, ``s_l
[B, m]``) or continuous (float vectors, ``s_l [B, m, d]``). Every method is batched over ``B``
systems; the local methods take any number ``m`` of agents (all ``n`` when executing, ``k`` sampled
ones when learning):

- ``initial(n, batch, generator) -> (s_g [B] int64, s_l [B, n] | [B, n, d])``;
- ``global_step(s_g, a_g, generator) -> s_g'`` draws ``s_g' ~ P_g(. | s_g, a_g)``;
- ``local_step(s_g, s_l, a_g, generator) -> s_l'`` moves every agent independently given its own
  state and ``(s_g, a_g)`` (the model's independence; nothing may couple two agents);
- ``reward(s_g, s_l, a_g) -> [B]`` float64 is ``r_g(s_g, a_g) + (1/m) sum_i r_l(s_i, s_g, a_g)``
  over the ``m`` agents given;
- ``step(s_g, s_l, a_g, generator) -> (s_g', s_l', r)``: by default ``reward``, then
  ``local_step``, then ``global_step`` on the one generator; an override (to fuse work) must give
  the same result.

All randomness comes from the ``generator`` argument (a ``torch.Generator`` on the simulator's
device), never from torch's, numpy's or Python's global generator: a seed then fixes every
rollout, and two policies run with the same seed see the same noise (common random numbers) when
the number of numbers drawn per call depends only on the shapes, never on states or actions.
:func:`check_simulator` verifies all of this on a tiny batch and names what is wrong.
"""

from __future__ import annotations

import logging
import math
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sqtorch.checks import check_float, check_int

logger = logging.getLogger(__name__)


def _bounds(name: str, value: float | Sequence[float] | None, d: int, default: float) -> tuple[float, ...]:
    if value is None:
        return (default,) * d
    vals = [value] * d if isinstance(value, (int, float)) else list(value)
    if len(vals) != d:
        raise ValueError(f"{name} has {len(vals)} entries, expected d = {d} (one bound per local-state coordinate)")
    out = tuple(float(v) for v in vals)
    if any(math.isnan(v) for v in out):
        raise ValueError(f"{name} = {out} holds NaN; use -inf/inf for an open side")
    return out


@dataclass(frozen=True)
class LocalSpace:
    """The local state space: ``finite(L)`` (indices ``{0..L-1}``) or ``continuous(d, low, high)``.

    Continuous states are float vectors ``[..., d]`` with coordinate ``j`` in ``[low[j], high[j]]``
    (infinite bounds by default); finite ones are ``int64`` indices.
    """

    L: int | None = None
    d: int | None = None
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()

    @classmethod
    def finite(cls, L: int) -> LocalSpace:
        """``L`` local states ``{0..L-1}``."""
        return cls(L=check_int("L", L, 1, "number of local states"))

    @classmethod
    def continuous(
        cls, d: int, low: float | Sequence[float] | None = None, high: float | Sequence[float] | None = None
    ) -> LocalSpace:
        """Float vectors of dimension ``d`` inside the box ``[low, high]`` (per coordinate; scalars broadcast)."""
        d = check_int("d", d, 1, "dimension of a continuous local state")
        lo, hi = _bounds("low", low, d, -math.inf), _bounds("high", high, d, math.inf)
        for j, (a, b) in enumerate(zip(lo, hi, strict=True)):
            if a > b:
                raise ValueError(f"low[{j}] = {a} > high[{j}] = {b}: empty local state space")
        return cls(d=d, low=lo, high=hi)

    @property
    def is_finite(self) -> bool:
        """Whether local states are indices (else float vectors)."""
        return self.L is not None

    def describe(self) -> str:
        """``{0..L-1}`` or ``R^d in [low, high]``, for messages."""
        if self.is_finite:
            return f"{{0..{self.L - 1}}}"
        return f"R^{self.d} in [{list(self.low)}, {list(self.high)}]"

    def check(self, name: str, s_l: Tensor, batch: int, m: int) -> None:
        """Raise ``ValueError`` naming ``name`` unless ``s_l`` holds ``[batch, m]`` (or ``[batch, m, d]``) states."""
        shape = (batch, m) if self.is_finite else (batch, m, self.d)
        if not isinstance(s_l, Tensor):
            raise ValueError(f"{name} is a {type(s_l).__name__}, expected a torch.Tensor of shape {list(shape)}")
        if tuple(s_l.shape) != shape:
            raise ValueError(f"{name} has shape {list(s_l.shape)}, expected {list(shape)} "
                             f"({'[B, agents]' if self.is_finite else '[B, agents, d]'})")
        if self.is_finite:
            if s_l.dtype != torch.int64:
                raise ValueError(f"{name} has dtype {s_l.dtype}, expected torch.int64 local state indices")
            bad = (s_l < 0) | (s_l >= self.L)
            if bad.any():
                idx = tuple(torch.nonzero(bad)[0].tolist())
                raise ValueError(f"{name}{list(idx)} = {int(s_l[idx])} is outside the local state space "
                                 f"{self.describe()}")
            return
        if not s_l.dtype.is_floating_point:
            raise ValueError(f"{name} has dtype {s_l.dtype}, expected a floating dtype (continuous local states)")
        if not torch.isfinite(s_l).all():
            idx = tuple(torch.nonzero(~torch.isfinite(s_l))[0].tolist())
            raise ValueError(f"{name}{list(idx)} = {s_l[idx].item()} is not finite")
        lo = torch.tensor(self.low, dtype=torch.float64, device=s_l.device)
        hi = torch.tensor(self.high, dtype=torch.float64, device=s_l.device)
        bad = (s_l.double() < lo) | (s_l.double() > hi)
        if bad.any():
            idx = tuple(torch.nonzero(bad)[0].tolist())
            raise ValueError(f"{name}{list(idx)} = {s_l[idx].item():.6g} is outside the local state space "
                             f"{self.describe()} (coordinate {idx[-1]})")


class Simulator(ABC):
    """A global-local system as batched torch code (module docstring; docs/model.md §1.1).

    A subclass sets ``G``, ``A`` (ints), ``local`` (a :class:`LocalSpace`) and ``gamma`` (in ``(0, 1)``),
    optionally ``name``, and implements :meth:`initial`, :meth:`global_step`, :meth:`local_step` and
    :meth:`reward`. Tensors live on :attr:`device` (``cpu`` unless the subclass says otherwise);
    :meth:`to` moves a simulator that supports it.
    """

    G: int
    A: int
    local: LocalSpace
    gamma: float
    name: str = "simulator"

    @property
    def device(self) -> torch.device:
        """The device of the states and of the generator."""
        return torch.device("cpu")

    @property
    def L(self) -> int:
        """Number of local states (finite local spaces only)."""
        if not self.local.is_finite:
            raise ValueError(f"simulator '{self.name}' has continuous local states ({self.local.describe()}): "
                             "it has no L; use a policy for continuous states")
        return int(self.local.L)

    def to(self, device: torch.device | str) -> Simulator:
        """This simulator on ``device``; the default supports only the device it is on."""
        if torch.device(device).type != self.device.type:
            raise ValueError(f"simulator '{self.name}' is on {self.device} and does not implement to({str(device)!r})")
        return self

    @abstractmethod
    def initial(self, n: int, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Initial ``(s_g [batch] int64, s_l [batch, n] | [batch, n, d])`` of ``batch`` systems of ``n`` agents."""

    @abstractmethod
    def global_step(self, s_g: Tensor, a_g: Tensor, generator: torch.Generator) -> Tensor:
        """Next global states ``s_g' [B]``, drawn given ``(s_g [B], a_g [B])``."""

    @abstractmethod
    def local_step(self, s_g: Tensor, s_l: Tensor, a_g: Tensor, generator: torch.Generator) -> Tensor:
        """Next local states (shape of ``s_l``), every agent independently given its state and ``(s_g, a_g)``."""

    @abstractmethod
    def reward(self, s_g: Tensor, s_l: Tensor, a_g: Tensor) -> Tensor:
        """``r_g(s_g, a_g) + mean_i r_l(s_i, s_g, a_g)`` over the agents given: ``[B]`` float64."""

    def step(self, s_g: Tensor, s_l: Tensor, a_g: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """One transition ``(s_g', s_l', r(s, a_g))``: reward, then :meth:`local_step`, then :meth:`global_step`."""
        r = self.reward(s_g, s_l, a_g)
        s_l_next = self.local_step(s_g, s_l, a_g, generator)
        return self.global_step(s_g, a_g, generator), s_l_next, r


# ---------------------------------------------------------------------------------------------- checks


def _gen(seed: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def _check_global(name: str, s_g: Tensor, batch: int, G: int) -> None:
    if not isinstance(s_g, Tensor):
        raise ValueError(f"{name} is a {type(s_g).__name__}, expected a torch.Tensor of shape [{batch}]")
    if tuple(s_g.shape) != (batch,):
        raise ValueError(f"{name} has shape {list(s_g.shape)}, expected [{batch}] (one global state per system)")
    if s_g.dtype != torch.int64:
        raise ValueError(f"{name} has dtype {s_g.dtype}, expected torch.int64 global state indices")
    bad = (s_g < 0) | (s_g >= G)
    if bad.any():
        i = int(torch.nonzero(bad)[0])
        raise ValueError(f"{name}[{i}] = {int(s_g[i])} is outside the global state space {{0..{G - 1}}}")


def _check_reward(name: str, r: Tensor, batch: int) -> None:
    if not isinstance(r, Tensor):
        raise ValueError(f"{name} is a {type(r).__name__}, expected a torch.Tensor of shape [{batch}]")
    if tuple(r.shape) != (batch,):
        raise ValueError(f"{name} has shape {list(r.shape)}, expected [{batch}] (one reward per system)")
    if r.dtype != torch.float64:
        raise ValueError(f"{name} has dtype {r.dtype}, expected torch.float64")
    if not torch.isfinite(r).all():
        i = int(torch.nonzero(~torch.isfinite(r))[0])
        raise ValueError(f"{name}[{i}] = {r[i].item()} is not finite (NaN or inf reward)")


def _check_device(name: str, t: Tensor, device: torch.device) -> None:
    if t.device.type != device.type:
        raise ValueError(f"{name} is on {t.device}, expected the simulator's device {device}")


def _not_reproducible(name: str, method: str) -> ValueError:
    return ValueError(f"{name}.{method} gives different results for the same generator seed: draw every random number "
                      "from the generator argument (torch.rand(..., generator=generator)), not from torch's, numpy's "
                      "or Python's global generator")


def _same(a: Tensor | tuple[Tensor, ...], b: Tensor | tuple[Tensor, ...]) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return isinstance(a, Tensor) and isinstance(b, Tensor) and torch.equal(a, b)
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))


def _rollout(sim: Simulator, n: int, batch: int, steps: int, seed: int) -> list[Tensor]:
    """Every tensor of a short seeded rollout, each method's output checked as it comes."""
    dev, G, A = sim.device, sim.G, sim.A
    gen = _gen(seed, dev)
    out = sim.initial(n, batch, gen)
    if isinstance(out, tuple) and not _same(out, sim.initial(n, batch, _gen(seed, dev))):
        raise _not_reproducible(sim.name, "initial")
    if not isinstance(out, tuple) or len(out) != 2:
        raise ValueError(f"{sim.name}.initial returned {type(out).__name__}, expected a tuple (s_g, s_l)")
    s_g, s_l = out
    _check_global(f"{sim.name}.initial: s_g", s_g, batch, G)
    sim.local.check(f"{sim.name}.initial: s_l", s_l, batch, n)
    _check_device(f"{sim.name}.initial: s_l", s_l, dev)
    seen = [s_g, s_l]
    for t in range(steps):
        a_g = torch.randint(A, (batch,), generator=gen, device=dev)
        r = sim.reward(s_g, s_l, a_g)
        _check_reward(f"{sim.name}.reward", r, batch)
        sub = sim.reward(s_g, s_l[:, :1], a_g)  # the reward of the agents given, any number of them
        _check_reward(f"{sim.name}.reward on 1 of {n} agents", sub, batch)
        state = gen.get_state()
        s_l_next = sim.local_step(s_g, s_l, a_g, gen)
        sim.local.check(f"{sim.name}.local_step (step {t}): s_l'", s_l_next, batch, n)
        s_g_next = sim.global_step(s_g, a_g, gen)
        _check_global(f"{sim.name}.global_step (step {t}): s_g'", s_g_next, batch, G)
        after = gen.get_state()
        gen.set_state(state)
        if not torch.equal(sim.local_step(s_g, s_l, a_g, gen), s_l_next):
            raise _not_reproducible(sim.name, "local_step")
        if not torch.equal(sim.global_step(s_g, a_g, gen), s_g_next):
            raise _not_reproducible(sim.name, "global_step")
        if not torch.equal(sim.reward(s_g, s_l, a_g), r):
            raise _not_reproducible(sim.name, "reward")
        gen.set_state(state)
        fused = sim.step(s_g, s_l, a_g, gen)
        if not isinstance(fused, tuple) or len(fused) != 3:
            raise ValueError(f"{sim.name}.step returned {type(fused).__name__}, expected a tuple (s_g', s_l', r)")
        if not (torch.equal(fused[0], s_g_next) and torch.equal(fused[1], s_l_next)
                and torch.allclose(fused[2], r, rtol=1e-9, atol=1e-12) and torch.equal(gen.get_state(), after)):
            raise ValueError(f"{sim.name}.step differs from reward, local_step then global_step on the same "
                             "generator: an override of step must return what the separate methods return")
        # common random numbers: the draws consumed must not depend on the actions
        gen.set_state(state)
        other = (a_g + 1) % A
        sim.local_step(s_g, s_l, other, gen)
        sim.global_step(s_g, other, gen)
        if not torch.equal(gen.get_state(), after):
            raise ValueError(f"{sim.name}: the number of random numbers drawn by local_step/global_step depends "
                             "on the actions; draw a fixed number per call (given the shapes) so that policies "
                             "compared with the same seed see the same noise (common random numbers)")
        gen.set_state(after)
        seen += [a_g, r, sub, s_g_next, s_l_next]
        s_g, s_l = s_g_next, s_l_next
    return seen


def check_simulator(sim: Simulator, n: int = 5, batch: int = 3, steps: int = 3, seed: int = 0) -> None:
    """Run ``sim`` on a tiny batch and raise ``ValueError`` naming the method and the problem.

    Checks the declared attributes (``G``, ``A`` >= 1, ``gamma`` in ``(0, 1)``, a :class:`LocalSpace`),
    and over ``steps`` steps of ``batch`` systems of ``n`` agents: shapes, dtypes and devices of every
    output; states inside the declared spaces (finite coordinates, inside the bounds); finite float64
    rewards, also for a reward over fewer agents; ``step`` equal to ``reward``, ``local_step``,
    ``global_step`` in that order; a number of draws that does not depend on the actions; and the same
    numbers for the same seed while torch's, numpy's and Python's global generators are reseeded
    between the runs (a simulator drawing from them is not reproducible). Global generator states are
    restored afterwards.
    """
    if not isinstance(sim, Simulator):
        raise ValueError(f"{type(sim).__name__} is not a sqtorch.envs.Simulator: subclass it and implement "
                         "initial, global_step, local_step and reward")
    name = getattr(sim, "name", type(sim).__name__)
    for attr in ("G", "A"):
        if not hasattr(sim, attr):
            raise ValueError(f"simulator '{name}' has no attribute {attr}")
        what = "number of global states" if attr == "G" else "number of global actions"
        check_int(f"{name}.{attr}", getattr(sim, attr), 1, what)
    if not isinstance(getattr(sim, "local", None), LocalSpace):
        raise ValueError(f"{name}.local = {getattr(sim, 'local', None)!r} must be a LocalSpace "
                         "(LocalSpace.finite(L) or LocalSpace.continuous(d, low, high))")
    check_float(f"{name}.gamma", getattr(sim, "gamma", None), 0.0, 1.0, lo_open=True, hi_open=True,
                what="discount factor")
    n = check_int("n", n, 2, "agents in the check")
    batch = check_int("batch", batch, 1, "systems in the check")
    rng_torch, rng_np, rng_py = torch.random.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        runs = []
        for salt in (1, 2):
            torch.manual_seed(salt)
            np.random.seed(salt)
            random.seed(salt)
            runs.append(_rollout(sim, n, batch, steps, seed))
    finally:
        torch.random.set_rng_state(rng_torch)
        np.random.set_state(rng_np)
        random.setstate(rng_py)
    if not _same(tuple(runs[0]), tuple(runs[1])):
        raise _not_reproducible(name, "step")


__all__ = ["LocalSpace", "Simulator", "check_simulator"]
