"""The global-local MDP of docs/model.md §1 as one validated dataclass of dense tensors.

One global agent (state ``s_g`` in ``{0..G-1}``, action ``a_g`` in ``{0..A-1}``) and ``n``
exchangeable local agents (state ``s_i`` in ``{0..L-1}``). Given ``(s_g, a_g)`` all agents move
independently:

    P_g[g, a, g'] = P(s_g' = g' | s_g = g, a_g = a)
    P_l[g, a, x, x'] = P(s_i' = x' | s_i = x, s_g = g, a_g = a)

and the reward is ``r(s, a_g) = r_g[g, a] + (1/n) sum_i r_l[g, a, s_i]``. It implements the
simulator protocol of ``sqtorch/envs/protocol.py`` with the draws of ``sqtorch/envs/simulator.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from sqtorch.envs.protocol import LocalSpace, Simulator

PROB_TOL = 1e-9


def _first_bad(mask: Tensor) -> tuple[int, ...]:
    return tuple(torch.nonzero(mask)[0].tolist())


def _check_stochastic(name: str, P: Tensor) -> None:
    """Raise ``ValueError`` naming ``name`` and the first bad index unless ``P`` is row-stochastic."""
    if not torch.isfinite(P).all():
        raise ValueError(f"{name}{list(_first_bad(~torch.isfinite(P)))} is not finite")
    if (P < 0).any():
        idx = _first_bad(P < 0)
        raise ValueError(f"{name}{list(idx)} = {P[idx].item():.3g} is negative; probabilities must be >= 0")
    row_sums = P.sum(-1)
    bad = (row_sums - 1).abs() > PROB_TOL
    if bad.any():
        idx = _first_bad(bad)
        raise ValueError(
            f"{name}{list(idx)} sums to {row_sums[idx].item():.12g}; every row must sum to 1 "
            f"(tolerance {PROB_TOL:g}; build probabilities in float64, float32 rounding alone is ~1e-8)"
        )


def check_states(name: str, s: Tensor, size: int) -> None:
    """Raise ``ValueError`` naming ``name[first bad index]`` unless ``s`` holds integer states in ``{0..size-1}``."""
    if s.dtype.is_floating_point or s.dtype.is_complex or s.dtype == torch.bool:
        raise ValueError(f"{name} has dtype {s.dtype}, expected integer state indices")
    bad = (s < 0) | (s >= size)
    if bad.any():
        idx = _first_bad(bad)
        raise ValueError(f"{name}{list(idx)} = {int(s[idx])} is outside the state space {{0..{size - 1}}}")


def _check_finite(name: str, r: Tensor) -> None:
    if not torch.isfinite(r).all():
        idx = _first_bad(~torch.isfinite(r))
        raise ValueError(f"{name}{list(idx)} = {r[idx].item()} is not finite (NaN or inf reward)")


def _check_shape(name: str, t: Tensor, shape: tuple[int, ...], meaning: str) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape} ({meaning})")


def validate_model(m: object, local_actions: bool) -> None:
    """Validate and canonicalize the dense fields of a model (``GlobalLocalMDP``, ``LocalActionMDP``) in place.

    Shapes ``P_g [G, A, G]``, ``P_l [G, A, (Al,) L, L]``, ``r_g [G, A]``, ``r_l [G, A, (Al,) L]``,
    every space non-empty, probabilities >= 0 summing to 1, finite rewards, ``0 < gamma < 1``,
    ``init_l [L]`` a distribution, name tuples of the right lengths. Errors name the field and index.
    """
    for fname in ("P_g", "P_l", "r_g", "r_l"):
        object.__setattr__(m, fname, torch.as_tensor(getattr(m, fname), dtype=torch.float64))
    P_g, P_l = m.P_g, m.P_l
    if P_g.dim() != 3:
        raise ValueError(f"P_g must have 3 dims [G, A, G], got shape {tuple(P_g.shape)}")
    G, A, _ = P_g.shape
    al = ", Al" if local_actions else ""
    if P_l.dim() != 4 + local_actions:
        raise ValueError(f"P_l must have {4 + local_actions} dims [G, A{al}, L, L], got shape {tuple(P_l.shape)}")
    L = P_l.shape[-1]
    mid = (P_l.shape[2],) if local_actions else ()
    dims = [("G", G, "P_g.shape[0]"), ("A", A, "P_g.shape[1]"), ("L", L, "P_l.shape[-1]")]
    if local_actions:
        dims.append(("Al", mid[0], "P_l.shape[2]"))
    for dim, size, where in dims:
        if size < 1:
            raise ValueError(f"{dim} = {size} ({where}) is outside the allowed range {dim} >= 1: "
                             "an MDP needs at least one element in every state and action space")
    _check_shape("P_g", P_g, (G, A, G), "[G, A, G]")
    _check_shape("P_l", P_l, (G, A, *mid, L, L), f"[G, A{al}, L, L]")
    _check_shape("r_g", m.r_g, (G, A), "[G, A]")
    _check_shape("r_l", m.r_l, (G, A, *mid, L), f"[G, A{al}, L]")
    _check_stochastic("P_g", P_g)
    _check_stochastic("P_l", P_l)
    _check_finite("r_g", m.r_g)
    _check_finite("r_l", m.r_l)
    if m.init_l is not None:
        init_l = torch.as_tensor(m.init_l, dtype=torch.float64, device=P_l.device)
        _check_shape("init_l", init_l, (L,), "[L], the initial local-state distribution")
        _check_stochastic("init_l", init_l)
        object.__setattr__(m, "init_l", init_l)
    if not (0.0 < float(m.gamma) < 1.0):
        raise ValueError(f"gamma = {m.gamma} is outside the allowed range (0, 1)")
    object.__setattr__(m, "gamma", float(m.gamma))
    names = [(m.global_state_names, G, "global_state_names"), (m.local_state_names, L, "local_state_names"),
             (m.action_names, A, "action_names")]
    if local_actions:
        names.append((m.local_action_names, mid[0], "local_action_names"))
    for given, size, what in names:
        if given is not None and len(given) != size:
            raise ValueError(f"{what} has {len(given)} names, expected {size}")


@dataclass(frozen=True)
class GlobalLocalMDP(Simulator):
    """The tuple ``(P_g, P_l, r_g, r_l, gamma)`` of docs/model.md §1, validated on construction.

    Shapes: ``P_g [G, A, G]``, ``P_l [G, A, L, L]``, ``r_g [G, A]``, ``r_l [G, A, L]``.
    Tensors are stored as float64; ``to(device)`` moves them.

    ``init_l [L]`` (optional) is the distribution of each agent's initial local state, i.i.d. over
    agents; ``None`` means uniform. It is how a type mix enters the model (docs/model.md §1, §4.3;
    ``sqtorch/envs/types.py``): with the type part of the local state and a block-diagonal ``P_l``,
    the fraction of agents of each type is fixed by the initial draw and never changes.

    As a :class:`~sqtorch.envs.protocol.Simulator` (finite local space ``{0..L-1}``): ``initial`` is
    :func:`~sqtorch.envs.simulator.sample_initial_state`, ``step`` is :func:`~sqtorch.envs.simulator.step`
    and ``local_step``/``global_step`` are its two halves, drawing the same numbers.
    """

    P_g: Tensor
    P_l: Tensor
    r_g: Tensor
    r_l: Tensor
    gamma: float
    name: str = "custom"
    global_state_names: tuple[str, ...] | None = None
    local_state_names: tuple[str, ...] | None = None
    action_names: tuple[str, ...] | None = None
    params: dict = field(default_factory=dict, compare=False)
    init_l: Tensor | None = None

    def __post_init__(self) -> None:
        validate_model(self, local_actions=False)

    @property
    def G(self) -> int:
        """Number of global states."""
        return self.P_g.shape[0]

    @property
    def A(self) -> int:
        """Number of global actions."""
        return self.P_g.shape[1]

    @property
    def L(self) -> int:
        """Number of local states."""
        return self.P_l.shape[-1]

    @property
    def local(self) -> LocalSpace:
        """The finite local state space ``{0..L-1}``."""
        return LocalSpace.finite(self.L)

    @property
    def device(self) -> torch.device:
        """The device of the tensors (and of the generators that drive the simulator)."""
        return self.P_g.device

    def to(self, device: torch.device | str) -> GlobalLocalMDP:
        """Same MDP with its tensors on ``device`` (validation is re-run; it is cheap)."""
        return replace(
            self,
            P_g=self.P_g.to(device),
            P_l=self.P_l.to(device),
            r_g=self.r_g.to(device),
            r_l=self.r_l.to(device),
            init_l=None if self.init_l is None else self.init_l.to(device),
        )

    def reward(self, s_g: Tensor, s_l: Tensor, a_g: Tensor) -> Tensor:
        """Full-system reward ``r_g[g, a] + (1/n) sum_i r_l[g, a, s_i]`` (docs/model.md §1), batched.

        ``s_g [B]``, ``s_l [B, m]`` (the n agents, or any m of them), ``a_g [B]`` -> ``[B]`` float64.
        """
        row = s_l + ((s_g * self.A + a_g) * self.L)[:, None]  # flat index of (g, a, x) in r_l, as in the step
        return self.r_g[s_g, a_g] + self.r_l.reshape(-1).take(row).mean(-1)

    def initial(self, n: int, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Initial states ``(s_g [batch], s_l [batch, n])``: :func:`~sqtorch.envs.simulator.sample_initial_state`."""
        from sqtorch.envs.simulator import sample_initial_state

        return sample_initial_state(self, n, batch, generator)

    def global_step(self, s_g: Tensor, a_g: Tensor, generator: torch.Generator) -> Tensor:
        """``s_g' ~ P_g[s_g, a_g]``, one float64 uniform per row."""
        from sqtorch.envs.simulator import global_step

        return global_step(self, s_g, a_g, generator)

    def local_step(self, s_g: Tensor, s_l: Tensor, a_g: Tensor, generator: torch.Generator) -> Tensor:
        """``s_i' ~ P_l[s_g, a_g, s_i]`` for every agent given, one float64 uniform each."""
        from sqtorch.envs.simulator import local_step

        return local_step(self, s_g, s_l, a_g, generator)

    def step(self, s_g: Tensor, s_l: Tensor, a_g: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """``(s_g', s_l', r(s, a_g))`` by :func:`~sqtorch.envs.simulator.step` (fused, same draws as the halves)."""
        from sqtorch.envs.simulator import cached_cdf_columns, step

        return step(self, s_g, s_l, a_g, generator, cached_cdf_columns(self.P_g))
