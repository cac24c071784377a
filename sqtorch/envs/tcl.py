"""Air conditioners under a time-varying electricity price: a continuous simulator (docs/model.md §4.5).

A population of thermostatically controlled loads (TCLs, cooling). Local state of agent i: the
indoor temperature ``theta_i`` (°C) and the on/off mode ``m_i`` of the last interval, a float vector
``[theta, m]`` (``d = 2``). Global state: the price level ``s_g`` of a Markov chain over ``prices``
(the aggregator cannot move it). Global action: a set-point offset ``offsets[a_g]`` (°C) broadcast to
every unit. One step of length ``h``:

- hysteresis around the shifted set-point ``sp = theta_set + offsets[a_g]`` with deadband ``delta``:
  ``on_i = 1`` if ``theta_i > sp + delta/2``, ``0`` if ``theta_i < sp - delta/2``, else ``m_i``;
- first-order thermal dynamics (Mathieu, Koch & Callaway 2013, eq. (1)):
  ``theta_i' = a theta_i + (1 - a)(theta_out - on_i R P) + sigma eps_i``, ``a = exp(-h / (C R))``,
  ``eps_i ~ N(0, 1)``; then ``m_i' = on_i``;
- reward ``r = r_g + (1/n) sum_i r_l`` with ``r_g = 0`` and
  ``r_l = - price[s_g] on_i (P / eta) h - c_comfort (theta_i - theta_set)^2``: energy cost plus
  discomfort, separable as the model requires (docs/model.md §1).

``R, C, P, eta, theta_set, delta, theta_out`` are the air-conditioner constants of Mathieu, Koch &
Callaway (2013, Table I) and Callaway (2009); the step, the price chain, the noise and the
comfort weight are this environment's (docs/model.md §4.5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from sqtorch.checks import check_float, check_positive, check_unit
from sqtorch.envs.protocol import LocalSpace, Simulator


class TCLSimulator(Simulator):
    """Cooling TCLs under a Markov price (module docstring; constants of docs/model.md §4.5 in °C, kW, kWh/°C, $/kWh,
    minutes). Local states ``[B, m, 2]`` float32 ``(theta, mode)``."""

    def __init__(
        self,
        prices: Sequence[float] = (0.05, 0.15, 0.50),
        price_stay: float = 0.9,
        offsets: Sequence[float] = (-2.0, 0.0, 2.0),
        R: float = 2.0,
        C: float = 10.0,
        P: float = 14.0,
        eta: float = 2.5,
        theta_set: float = 20.0,
        delta: float = 0.5,
        theta_out: float = 32.0,
        h_minutes: float = 5.0,
        sigma: float = 0.05,
        comfort: float = 0.02,
        init_spread: float = 1.5,
        gamma: float = 0.95,
        device: torch.device | str = "cpu",
    ) -> None:
        if len(prices) < 1 or len(offsets) < 1:
            raise ValueError(f"prices ({len(prices)}) and offsets ({len(offsets)}) need at least one entry each")
        self.prices = tuple(check_float(f"prices[{i}]", p, 0.0, what="price per kWh") for i, p in enumerate(prices))
        self.offsets = tuple(check_float(f"offsets[{i}]", o, -10.0, 10.0, what="set-point offset in °C")
                             for i, o in enumerate(offsets))
        self.price_stay = check_unit("price_stay", price_stay, "probability that the price level stays")
        for name, value in (("R", R), ("C", C), ("P", P), ("eta", eta), ("delta", delta), ("h_minutes", h_minutes)):
            check_positive(name, value)
        self.R, self.C, self.P, self.eta, self.delta = float(R), float(C), float(P), float(eta), float(delta)
        self.theta_set = check_float("theta_set", theta_set, -50.0, 60.0, what="comfort set-point in °C")
        self.theta_out = check_float("theta_out", theta_out, -50.0, 60.0, what="outdoor temperature in °C")
        self.h_minutes = float(h_minutes)
        self.sigma = check_float("sigma", sigma, 0.0, what="temperature noise per step in °C")
        self.comfort = check_float("comfort", comfort, 0.0, what="discomfort weight per °C^2 per step")
        self.init_spread = check_float("init_spread", init_spread, 0.0, what="initial temperatures theta_set +- this")
        self.gamma = check_float("gamma", gamma, 0.0, 1.0, lo_open=True, hi_open=True, what="discount factor")
        self.G, self.A = len(self.prices), len(self.offsets)
        self.local = LocalSpace.continuous(2, low=(-math.inf, 0.0), high=(math.inf, 1.0))
        self.name = "tcl"
        self.a = math.exp(-(self.h_minutes / 60.0) / (self.C * self.R))
        self.energy = self.P / self.eta * self.h_minutes / 60.0  # kWh drawn by a unit that is on for a step
        self._device = torch.device(device)
        stay, G = self.price_stay, self.G
        P_g = torch.full((G, G), (1 - stay) / max(G - 1, 1), dtype=torch.float64)
        P_g.fill_diagonal_(stay if G > 1 else 1.0)
        self.P_g = P_g
        self._cdf_g = P_g.cumsum(1).to(self._device)
        self._cdf_g[:, -1] = 1.0
        self._price_energy = torch.tensor(self.prices, dtype=torch.float64, device=self._device) * self.energy
        self._offsets = torch.tensor(self.offsets, dtype=torch.float32, device=self._device)

    @property
    def device(self) -> torch.device:
        """The device of the states and generators."""
        return self._device

    def to(self, device: torch.device | str) -> TCLSimulator:
        """The same simulator on ``device``."""
        return TCLSimulator(self.prices, self.price_stay, self.offsets, self.R, self.C, self.P, self.eta,
                            self.theta_set, self.delta, self.theta_out, self.h_minutes, self.sigma, self.comfort,
                            self.init_spread, self.gamma, device)

    def initial(self, n: int, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Uniform price level; ``theta ~ U[theta_set -+ init_spread]``, mode on with probability 1/2."""
        s_g = torch.randint(self.G, (batch,), generator=generator, device=self._device)
        u = torch.rand((batch, 2, n), generator=generator, device=self._device)
        u[:, 0].mul_(2 * self.init_spread).add_(self.theta_set - self.init_spread)
        u[:, 1] = u[:, 1] < 0.5
        return s_g, u.transpose(1, 2)

    def global_step(self, s_g: Tensor, a_g: Tensor, generator: torch.Generator) -> Tensor:
        """The price chain: stay with probability ``price_stay``, else a uniform other level."""
        u = torch.rand(s_g.shape, generator=generator, device=s_g.device, dtype=torch.float64)
        return (self._cdf_g[s_g] <= u[:, None]).sum(1).clamp_(max=self.G - 1)

    def _on(self, s_l: Tensor, a_g: Tensor, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Temperatures ``[B, m]`` and the hysteresis modes ``on [B, m]`` (written into ``out`` if given)."""
        theta, mode = s_l[..., 0], s_l[..., 1]
        sp = (self._offsets[a_g] + self.theta_set)[:, None]  # [B, 1] shifted set-point
        half = self.delta / 2
        on = torch.ge(theta, sp - half, out=torch.empty_like(theta) if out is None else out)  # float 0/1 flags
        torch.minimum(on, mode, out=on)  # keep the mode inside the deadband, off below it
        return theta, torch.maximum(on, torch.gt(theta, sp + half, out=torch.empty_like(theta)), out=on)  # on above

    def _reward(self, s_g: Tensor, theta: Tensor, on: Tensor) -> Tensor:
        m = theta.shape[-1]
        dev = torch.linalg.vector_norm(theta - self.theta_set, dim=-1).double()
        return -(self._price_energy[s_g] * on.sum(-1).double() + self.comfort * dev.square()) / m

    def _next(self, theta: Tensor, on: Tensor, generator: torch.Generator, out: Tensor) -> None:
        """``out = a theta + (1 - a)(theta_out - on R P) + sigma eps``: one normal draw per agent."""
        a = self.a
        noise = torch.normal((1 - a) * self.theta_out, self.sigma, theta.shape, generator=generator,
                             device=theta.device, dtype=theta.dtype)
        torch.add(noise, theta, alpha=a, out=out).add_(on, alpha=-(1 - a) * self.R * self.P)

    def _empty(self, s_l: Tensor) -> Tensor:
        B, m, _ = s_l.shape  # next states as [B, 2, m] storage seen as [B, m, 2]: each coordinate contiguous
        return torch.empty(B, 2, m, dtype=s_l.dtype, device=s_l.device)

    def local_step(self, s_g: Tensor, s_l: Tensor, a_g: Tensor, generator: torch.Generator) -> Tensor:
        """Hysteresis, then first-order thermal dynamics with noise: ``[B, m, 2]`` -> ``[B, m, 2]``."""
        out = self._empty(s_l)
        theta, on = self._on(s_l, a_g, out[:, 1])
        self._next(theta, on, generator, out[:, 0])
        return out.transpose(1, 2)

    def reward(self, s_g: Tensor, s_l: Tensor, a_g: Tensor) -> Tensor:
        """``-price[s_g] (P / eta) h mean_i on_i - comfort mean_i (theta_i - theta_set)^2``: ``[B]`` float64."""
        theta, on = self._on(s_l, a_g)
        return self._reward(s_g, theta, on)

    def step(self, s_g: Tensor, s_l: Tensor, a_g: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """``(s_g', s_l', r)`` as reward, local_step, global_step, with the hysteresis computed once."""
        out = self._empty(s_l)
        theta, on = self._on(s_l, a_g, out[:, 1])
        r = self._reward(s_g, theta, on)
        self._next(theta, on, generator, out[:, 0])
        return self.global_step(s_g, a_g, generator), out.transpose(1, 2), r


tcl = TCLSimulator  # the registered builder (ENVS["tcl"], conf/env/tcl.yaml): its keywords are the constants


__all__ = ["TCLSimulator", "tcl"]
