"""Local agents that act (docs/model.md §7; Anand, Karmarkar & Qu, arXiv 2412.00661, §2).

One global agent (state ``s_g`` in ``{0..G-1}``, action ``a_g`` in ``{0..A-1}``) and ``n``
exchangeable local agents (state ``s_i`` in ``{0..L-1}``, action ``a_i`` in ``{0..Al-1}``).
Given the joint action, all agents move independently:

    P_g[g, a_g, g']          = P(s_g' = g' | s_g = g, a_g)
    P_l[g, a_g, a, x, x']    = P(s_i' = x' | s_i = x, s_g = g, a_g, a_i = a)

and the reward is ``r(s, a) = r_g[g, a_g] + (1/n) sum_i r_l[g, a_g, a_i, s_i]``. ``a_g`` stays an
argument of ``P_l`` and ``r_l``, so a :class:`~sqtorch.envs.base.GlobalLocalMDP` is the case
``Al = 1`` (:meth:`LocalActionMDP.from_global_local`, lossless).

Environments: :func:`formation`, the example of the authors' public code for arXiv 2412.00661.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from sqtorch.envs.base import GlobalLocalMDP, validate_model


@dataclass(frozen=True)
class LocalActionMDP:
    """The tuple ``(P_g, P_l, r_g, r_l, gamma)`` of docs/model.md §7, validated on construction.

    Shapes: ``P_g [G, A, G]``, ``P_l [G, A, Al, L, L]``, ``r_g [G, A]``, ``r_l [G, A, Al, L]``
    (``A`` global actions, ``Al`` local actions). Tensors are stored as float64. ``init_l [L]``
    (optional) is the distribution of each agent's initial local state; ``None`` means uniform.
    Bad input raises ``ValueError`` naming the field and the first bad index.
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
    local_action_names: tuple[str, ...] | None = None
    params: dict = field(default_factory=dict, compare=False)
    init_l: Tensor | None = None

    def __post_init__(self) -> None:
        validate_model(self, local_actions=True)

    @property
    def G(self) -> int:
        """Number of global states."""
        return self.P_g.shape[0]

    @property
    def A(self) -> int:
        """Number of global actions."""
        return self.P_g.shape[1]

    @property
    def Al(self) -> int:
        """Number of local actions."""
        return self.P_l.shape[2]

    @property
    def L(self) -> int:
        """Number of local states."""
        return self.P_l.shape[-1]

    @property
    def device(self) -> torch.device:
        return self.P_g.device

    def to(self, device: torch.device | str) -> LocalActionMDP:
        """Same MDP with its tensors on ``device`` (validation is re-run)."""
        return replace(
            self,
            P_g=self.P_g.to(device),
            P_l=self.P_l.to(device),
            r_g=self.r_g.to(device),
            r_l=self.r_l.to(device),
            init_l=None if self.init_l is None else self.init_l.to(device),
        )

    def reward(self, s_g: Tensor, s_l: Tensor, a_g: Tensor, a_l: Tensor) -> Tensor:
        """``r_g[g, a_g] + (1/n) sum_i r_l[g, a_g, a_i, s_i]``: ``s_g, a_g [B]``, ``s_l, a_l [B, n]`` -> ``[B]``."""
        local = self.r_l[s_g[:, None], a_g[:, None], a_l, s_l].mean(-1)
        return self.r_g[s_g, a_g] + local

    @classmethod
    def from_global_local(cls, env: GlobalLocalMDP) -> LocalActionMDP:
        """The same MDP with one local action (``Al = 1``): ``P_l[:, :, None]``, ``r_l[:, :, None]``."""
        return cls(
            P_g=env.P_g,
            P_l=env.P_l[:, :, None],
            r_g=env.r_g,
            r_l=env.r_l[:, :, None],
            gamma=env.gamma,
            name=env.name,
            global_state_names=env.global_state_names,
            local_state_names=env.local_state_names,
            action_names=env.action_names,
            local_action_names=None,
            params=dict(env.params),
            init_l=env.init_l,
        )

    def with_fixed_local_action(self, a: int) -> GlobalLocalMDP:
        """The :class:`GlobalLocalMDP` in which every local agent always plays local action ``a``."""
        if not 0 <= a < self.Al:
            raise ValueError(f"a = {a} is outside the local actions {{0..{self.Al - 1}}}")
        return GlobalLocalMDP(
            P_g=self.P_g, P_l=self.P_l[:, :, a], r_g=self.r_g, r_l=self.r_l[:, :, a], gamma=self.gamma,
            name=f"{self.name}[a_l={a}]", global_state_names=self.global_state_names,
            local_state_names=self.local_state_names, action_names=self.action_names,
            params=dict(self.params), init_l=self.init_l,
        )

    def with_local_rule(self, rule: Tensor) -> GlobalLocalMDP:
        """The :class:`GlobalLocalMDP` in which an agent in local state ``x`` always plays ``rule[x]``.

        ``P_l'[g, a_g, x] = P_l[g, a_g, rule[x], x]`` and ``r_l'[g, a_g, x] = r_l[g, a_g, rule[x], x]``
        (``rule``: int ``[L]`` in ``{0..Al-1}``): SUBSAMPLE-Q then controls the global agent alone.
        """
        rule = torch.as_tensor(rule, dtype=torch.int64, device=self.device).reshape(-1)
        if rule.shape != (self.L,) or int(rule.min()) < 0 or int(rule.max()) >= self.Al:
            raise ValueError(f"rule = {rule.tolist()} must hold one local action in {{0..{self.Al - 1}}} for each "
                             f"of the L = {self.L} local states")
        x = torch.arange(self.L, device=self.device)
        return GlobalLocalMDP(
            P_g=self.P_g, P_l=self.P_l[:, :, rule, x], r_g=self.r_g, r_l=self.r_l[:, :, rule, x], gamma=self.gamma,
            name=f"{self.name}[rule={rule.tolist()}]", global_state_names=self.global_state_names,
            local_state_names=self.local_state_names, action_names=self.action_names,
            params=dict(self.params), init_l=self.init_l,
        )


def as_local_action_mdp(env: GlobalLocalMDP | LocalActionMDP) -> LocalActionMDP:
    """``env`` itself if it is a :class:`LocalActionMDP`, else its ``Al = 1`` form."""
    if isinstance(env, LocalActionMDP):
        return env
    if isinstance(env, GlobalLocalMDP):
        return LocalActionMDP.from_global_local(env)
    raise ValueError(f"env is a {type(env).__name__}, expected LocalActionMDP or GlobalLocalMDP")


FORMATION_N = 14  # the number of local agents of the public example


def formation(gamma: float = 0.9) -> LocalActionMDP:
    """The example of the authors' public code for arXiv 2412.00661 (docs/model.md §7.6).

    ``s_g, a_g in {-2..2}`` (index ``v + 2``), ``s_i, a_i in {-1, 0, 1}`` (index ``v + 1``), run at
    ``n = FORMATION_N = 14`` there. Deterministic dynamics: ``s_g' = clip(s_g + a_g, -2, 2)`` and
    ``s_i' = clip(s_i + a_i - s_g, -1, 1)`` (the *current* global state shifts every agent).
    Rewards: ``r_g = 1 + 0.2 1{a_g = 0} + 0.1 1{a_g != 0} + 0.1 |s_g|`` and
    ``r_l = max(0.1, (1 - |s_i|) + (0.5 - 0.1 |a_i|) + (0.3 - 0.1 |s_i - s_g|) + 0.2 1{|s_i - s_g| <= 1})``.
    """
    sg = torch.arange(-2, 3)
    ag = torch.arange(-2, 3)
    x = torch.arange(-1, 2)
    a = torch.arange(-1, 2)
    G, A, L, Al = len(sg), len(ag), len(x), len(a)
    g_next = (sg[:, None] + ag[None, :]).clamp(-2, 2) + 2  # [G, A]
    P_g = torch.nn.functional.one_hot(g_next, G).double()
    x_next = (x[None, None, :] + a[None, :, None] - sg[:, None, None]).clamp(-1, 1) + 1  # [G, Al, L]
    P_l = torch.nn.functional.one_hot(x_next, L).double()[:, None].expand(G, A, Al, L, L).clone()
    bonus = torch.where(ag == 0, torch.tensor(0.2, dtype=torch.float64), torch.tensor(0.1, dtype=torch.float64))
    r_g = 1.0 + bonus[None, :] + 0.1 * sg.abs().double()[:, None]
    d = (x[None, None, :] - sg[:, None, None]).abs().double()  # [G, 1, L]
    r = (1 - x.abs().double())[None, None, :] + (0.5 - 0.1 * a.abs().double())[None, :, None] + (0.3 - 0.1 * d)
    r = (r + 0.2 * (d <= 1).double()).clamp(min=0.1)  # [G, Al, L]
    r_l = r[:, None].expand(G, A, Al, L).clone()
    return LocalActionMDP(
        P_g=P_g, P_l=P_l, r_g=r_g, r_l=r_l, gamma=gamma, name="formation",
        global_state_names=tuple(f"s_g={v}" for v in sg.tolist()),
        local_state_names=tuple(f"s={v}" for v in x.tolist()),
        action_names=tuple(str(v) for v in ag.tolist()),
        local_action_names=tuple(str(v) for v in a.tolist()),
        params=dict(gamma=gamma),
    )


__all__ = ["FORMATION_N", "LocalActionMDP", "as_local_action_mdp", "formation"]
