"""Heterogeneous local agents: a fixed agent type as part of the local state (docs/model.md §4.4).

The model of docs/model.md §1 has identical local agents. Agents of ``T`` types (queues with
different arrival rates, service classes, ...) fit it without new machinery when the type is part
of the local state:

- local state ``(t, x)`` with ``x`` a state of type ``t``; tensor index ``offset[t] + x``, so
  ``L = sum_t L_t`` (``T * L_0`` when all types have the same per-type states);
- ``P_l`` block-diagonal over types: ``P_l[g, a, (t, x), (t', x')] = 1{t = t'} P_l^t[g, a, x, x']``,
  the type never changes;
- ``r_l[g, a, (t, x)] = r_l^t[g, a, x]``; ``P_g``, ``r_g`` and ``gamma`` are shared by all types;
- the **type mix** ``w`` (fraction of agents of each type) is the initial distribution
  ``init_l[(t, x)] = w_t * init^t[x]`` (``init^t`` uniform unless type t's env sets ``init_l``):
  each agent's type is drawn once from ``w`` and kept.

Agents are still exchangeable, so the count vector (now over types x per-type states), the tabular
learner, the exact count-MDP evaluator (docs/model.md §5) and the DeepSets network (docs/model.md §3)
all apply unchanged; the exact gap is averaged over initial states drawn from ``init_l``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from sqtorch.envs.base import GlobalLocalMDP
from sqtorch.envs.queue import queue


def _check_mix(mix: Sequence[float], T: int) -> torch.Tensor:
    w = torch.as_tensor([float(x) for x in mix], dtype=torch.float64)
    if w.shape != (T,):
        raise ValueError(f"mix has {w.numel()} entries, expected one per type ({T})")
    if not torch.isfinite(w).all() or (w < 0).any() or not w.sum() > 0:
        raise ValueError(f"mix = {[float(x) for x in mix]} is outside the allowed range: finite weights >= 0, sum > 0")
    return w / w.sum()


def with_types(
    envs: Sequence[GlobalLocalMDP], mix: Sequence[float] | None = None, name: str = "typed"
) -> GlobalLocalMDP:
    """One :class:`GlobalLocalMDP` whose local agents have one of ``len(envs)`` fixed types.

    Type ``t`` moves and is rewarded as the local agents of ``envs[t]``; every env must have the
    same ``P_g``, ``r_g`` and ``gamma``. ``mix`` (default: equal) is the fraction of agents of each
    type, normalised to sum 1 (see the module docstring for the layout).
    """
    if len(envs) < 1:
        raise ValueError("envs is empty; with_types needs at least one type")
    base = envs[0]
    for t, e in enumerate(envs[1:], start=1):
        if e.P_g.shape != base.P_g.shape or not torch.equal(e.P_g, base.P_g):
            raise ValueError(f"envs[{t}].P_g differs from envs[0].P_g; types share the global dynamics")
        if not torch.equal(e.r_g, base.r_g):
            raise ValueError(f"envs[{t}].r_g differs from envs[0].r_g; types share the global reward")
        if e.gamma != base.gamma:
            raise ValueError(f"envs[{t}].gamma = {e.gamma} differs from envs[0].gamma = {base.gamma}")
    T = len(envs)
    w = _check_mix([1.0] * T if mix is None else mix, T)
    sizes = [e.L for e in envs]
    L = sum(sizes)
    G, A = base.G, base.A
    P_l = torch.zeros(G, A, L, L, dtype=torch.float64)
    r_l = torch.empty(G, A, L, dtype=torch.float64)
    init_l = torch.empty(L, dtype=torch.float64)
    names = []
    off = 0
    for t, e in enumerate(envs):  # types, not agents
        s = slice(off, off + e.L)
        P_l[:, :, s, s] = e.P_l.cpu()
        r_l[:, :, s] = e.r_l.cpu()
        init_t = torch.full((e.L,), 1.0 / e.L, dtype=torch.float64) if e.init_l is None else e.init_l.cpu()
        init_l[s] = w[t] * init_t
        local = e.local_state_names or tuple(str(x) for x in range(e.L))
        names += [f"t{t}:{x}" for x in local]
        off += e.L
    return GlobalLocalMDP(
        P_g=base.P_g.cpu(),
        P_l=P_l,
        r_g=base.r_g.cpu(),
        r_l=r_l,
        gamma=base.gamma,
        name=name,
        global_state_names=base.global_state_names,
        local_state_names=tuple(names),
        action_names=base.action_names,
        params=dict(types=[dict(e.params) for e in envs], mix=w.tolist(), sizes=sizes),
        init_l=init_l,
    )


def type_of(env: GlobalLocalMDP, s_l: torch.Tensor) -> torch.Tensor:
    """Type index of local states ``s_l`` (any shape) of an env built by :func:`with_types`."""
    sizes = env.params.get("sizes")
    if sizes is None:
        raise ValueError(f"env '{env.name}' has no params['sizes']; it was not built by with_types")
    bounds = torch.tensor(sizes, device=s_l.device).cumsum(0)
    return torch.searchsorted(bounds, s_l, right=True)


def queue_types(
    lams: Sequence[float] = (0.3, 0.7),
    mix: Sequence[float] | None = None,
    mus_scale: Sequence[float] | None = None,
    Q: int = 4,
    G: int = 4,
    mu_min: float = 0.2,
    mu_max: float = 0.8,
    h: float = 1.0,
    b: float = 5.0,
    c: float = 2.0,
    s: float = 0.1,
    gamma: float = 0.9,
) -> GlobalLocalMDP:
    """``queue`` (docs/model.md §4.2) with one agent type per arrival rate ``lams[t]``.

    ``mix[t]`` is the fraction of queues of type t (default equal); ``mus_scale[t]`` (default 1)
    scales type t's service probabilities (a service class: ``mu_g^t = mus_scale[t] * mu_g``).
    Local state ``(t, x)`` has index ``t * (Q + 1) + x``. With one type this is ``queue``.
    """
    lams = [float(x) for x in lams]
    T = len(lams)
    if T < 1:
        raise ValueError("lams is empty; queue_types needs one arrival rate per type")
    scales = [1.0] * T if mus_scale is None else [float(x) for x in mus_scale]
    if len(scales) != T:
        raise ValueError(f"mus_scale has {len(scales)} entries, expected one per type ({T} = len(lams))")
    envs = []
    for t in range(T):  # types
        if not (0.0 < scales[t] <= 1.0 / max(mu_max, 1e-12)):
            raise ValueError(
                f"mus_scale[{t}] = {scales[t]} is outside the allowed range (0, 1 / mu_max = {1 / mu_max:.4g}]"
            )
        e = queue(Q=Q, G=G, mu_min=mu_min * scales[t], mu_max=mu_max * scales[t], lam=lams[t], h=h, b=b, c=0.0, s=s,
                  gamma=gamma)
        envs.append(e)
    # The capacity cost is paid once, on the nominal service level (shared r_g): docs/model.md §4.2.
    nominal = queue(Q=Q, G=G, mu_min=mu_min, mu_max=mu_max, lam=lams[0], h=h, b=b, c=c, s=s, gamma=gamma)
    envs = [
        GlobalLocalMDP(
            P_g=nominal.P_g, P_l=e.P_l, r_g=nominal.r_g, r_l=e.r_l, gamma=gamma, name="queue",
            global_state_names=nominal.global_state_names, local_state_names=e.local_state_names,
            action_names=nominal.action_names, params=e.params,
        )
        for e in envs
    ]
    env = with_types(envs, mix, name="queue_types")
    params = dict(lams=lams, mix=env.params["mix"], mus_scale=scales, Q=Q, G=G, mu_min=mu_min, mu_max=mu_max,
                  h=h, b=b, c=c, s=s, gamma=gamma, sizes=env.params["sizes"])
    return replace(env, params=params)


__all__ = ["queue_types", "type_of", "with_types"]
