"""EV charging under a feeder limit: an operations example whose local agents act (docs/model.md §7.7).

``n`` charging points of one distribution feeder. Each point holds an electric vehicle whose battery
level is ``x in {0..Q}`` (local state, ``L = Q + 1``); every step its controller decides to charge
(``a_i = 1``: one level, capped at ``Q``) or to wait (``a_i = 0``). After the step a vehicle leaves with
probability ``p_leave`` and a new one arrives with a level uniform in ``{0..arrive_max}``.
The feeder's loading follows the time of day (global state ``s_g`` in off-peak / shoulder / peak, a
Markov chain the operator does not control). The operator (global agent) broadcasts ``a_g`` in
``{0: normal, 1: curtail}``: a curtailment request earns the feeder-relief payment ``relief[s_g]``
but every vehicle that charges during it pays ``curtail_cost``.

Reward (separable, as the model requires): ``r_g = relief[s_g] 1{a_g = 1}`` and
``r_l = -price[s_g] a_i - curtail_cost a_g a_i - overload[s_g] a_i - unmet p_leave (Q - y) / Q``
with ``y = min(x + a_i, Q)`` the level after charging: energy cost, the curtailment penalty, the
feeder-overload cost of charging at peak (linear in the fraction of vehicles charging), and the
expected unmet energy of a vehicle that leaves. The operator should curtail when few vehicles need
energy, which it can only know from the vehicles' levels: the local states matter to ``a_g``.
The constants are this environment's own (they are not from a data set).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sqtorch.checks import check_float, check_int, check_unit
from sqtorch.envs.local_actions import LocalActionMDP

DEFAULT_P_G = ((0.7, 0.3, 0.0), (0.1, 0.6, 0.3), (0.3, 0.0, 0.7))  # off-peak -> shoulder -> peak -> off-peak


def ev_charging(
    Q: int = 3,
    p_leave: float = 0.25,
    arrive_max: int = 1,
    prices: Sequence[float] = (0.05, 0.15, 0.40),
    overload: Sequence[float] = (0.0, 0.0, 0.30),
    relief: Sequence[float] = (-0.02, 0.05, 0.25),
    curtail_cost: float = 0.5,
    unmet: float = 1.0,
    P_g: Sequence[Sequence[float]] = DEFAULT_P_G,
    gamma: float = 0.9,
) -> LocalActionMDP:
    """The EV-charging :class:`LocalActionMDP` (module docstring): ``G = 3``, ``A = 2``, ``L = Q + 1``, ``Al = 2``."""
    Q = check_int("Q", Q, 1, "battery levels above empty")
    p = check_unit("p_leave", p_leave, "probability that a vehicle leaves after a step")
    arrive_max = check_int("arrive_max", arrive_max, 0, "highest arrival level", hi=Q)
    curtail_cost = check_float("curtail_cost", curtail_cost, 0.0, what="penalty per vehicle charging in curtailment")
    unmet = check_float("unmet", unmet, 0.0, what="cost of a full battery's unmet energy at departure")
    price, over, rel = (torch.tensor([float(v) for v in vals], dtype=torch.float64)
                        for vals in (prices, overload, relief))
    Pg = torch.tensor([[float(v) for v in row] for row in P_g], dtype=torch.float64)
    G, L = Pg.shape[0], Q + 1
    for name, t in (("prices", price), ("overload", over), ("relief", rel)):
        if t.shape != (G,):
            raise ValueError(f"{name} has {t.numel()} entries, expected G = {G} (one per feeder loading level)")
    x, a = torch.arange(L), torch.arange(2)
    y = (x[None, :] + a[:, None]).clamp(max=Q)  # [Al, L] level after charging
    arrive = torch.zeros(L, dtype=torch.float64)
    arrive[: arrive_max + 1] = 1.0 / (arrive_max + 1)
    stay = torch.nn.functional.one_hot(y, L).double()  # [Al, L, L]
    P_l = ((1 - p) * stay + p * arrive).expand(G, 2, 2, L, L).clone()  # [G, A, Al, L, L]
    a_f = a.double()[None, None, :, None]  # [1, 1, Al, 1]
    r_l = (-(price + over)[:, None, None, None] * a_f
           - curtail_cost * torch.arange(2).double()[None, :, None, None] * a_f
           - unmet * p * (Q - y).double()[None, None] / Q)  # [G, A, Al, L]
    r_g = torch.stack([torch.zeros(G, dtype=torch.float64), rel], 1)  # [G, A]
    return LocalActionMDP(
        P_g=Pg[:, None, :].expand(G, 2, G).clone(), P_l=P_l, r_g=r_g, r_l=r_l.expand(G, 2, 2, L).clone(),
        gamma=gamma, name="ev_charging",
        global_state_names=("off-peak", "shoulder", "peak")[:G] if G == 3 else None,
        local_state_names=tuple(f"level={v}" for v in range(L)),
        action_names=("normal", "curtail"), local_action_names=("wait", "charge"),
        params=dict(Q=Q, p_leave=p, arrive_max=arrive_max, prices=list(prices), overload=list(overload),
                    relief=list(relief), curtail_cost=curtail_cost, unmet=unmet, P_g=[list(r) for r in P_g],
                    gamma=gamma),
    )


__all__ = ["ev_charging"]
