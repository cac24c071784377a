"""Small random environments with local actions for the SUBSAMPLE-MFQ tests (docs/model.md §7)."""

import torch

from sqtorch.envs.local_actions import LocalActionMDP
from sqtorch.envs.simulator import make_generator, sample_initial_state
from sqtorch.evaluation.exact import value_at
from sqtorch.evaluation.mfq import optimal_value_mfq, policy_value_mfq
from sqtorch.tabular.counts import all_counts
from sqtorch.tabular.mfq import learn_mfq
from sqtorch.tabular.mfq_policy import MFQPolicy


def random_env(seed: int, G: int = 2, A: int = 2, L: int = 2, Al: int = 2, gamma: float = 0.8) -> LocalActionMDP:
    """Random kernels (cubed uniforms, normalised: far from uniform) and uniform rewards in [0, 1)."""
    gen = torch.Generator().manual_seed(seed)

    def stochastic(*shape: int) -> torch.Tensor:
        p = torch.rand(*shape, generator=gen, dtype=torch.float64) ** 3
        return p / p.sum(-1, keepdim=True)

    return LocalActionMDP(
        P_g=stochastic(G, A, G),
        P_l=stochastic(G, A, Al, L, L),
        r_g=torch.rand(G, A, generator=gen, dtype=torch.float64),
        r_l=torch.rand(G, A, Al, L, generator=gen, dtype=torch.float64),
        gamma=gamma,
        name=f"random{seed}",
    )


# (seed, G, A, L, Al): envs where the gap of Algorithm 2 at k = 1 is far from 0, the local actions
# change V*, and the optimum at k = n = 3 has no ties (each is checked by the tests that use it).
MATTERING = [(2, 2, 2, 3, 2), (7, 2, 3, 2, 2)]


def has_ties(table, tol: float = 1e-9) -> bool:
    """Whether some (g, c) of an MFQTable has two near-optimal ``(a_g, z)``, or one whose z gives two
    agents in the same state different actions (then several ordered joint actions are optimal)."""
    index = table.index()
    near = table.q >= table.v.index_select(1, index.state_of)[:, None, :] - tol  # [G, A, NZ]
    count = torch.zeros(table.G, index.N, dtype=torch.int64).index_add_(1, index.state_of, near.sum(1))
    Z = all_counts(table.k, table.L * table.Al).view(-1, table.L, table.Al)
    mixed = ((Z > 0).sum(-1) > 1).any(-1)  # [NZ]
    return bool((count > 1).any() or (near & mixed[None, None, :]).any())


def exact_gaps(
    env: LocalActionMDP, n: int, ks: tuple[int, ...], num_initial: int = 32, seed: int = 0
) -> dict[int, float]:
    """``mean_s0 V*(s0) - V^pi_k(s0)`` of Algorithm 2 with the exact-operator table at each k (docs/model.md §7.5),
    on ``num_initial`` initial states drawn with ``seed``."""
    s0 = sample_initial_state(env, n, num_initial, make_generator(seed))
    v_star = value_at(optimal_value_mfq(env, n), *s0, L=env.L).mean().item()
    gaps = {}
    for k in ks:
        policy = MFQPolicy.from_table(learn_mfq(env, k, "exact").table)
        gaps[k] = v_star - value_at(policy_value_mfq(env, n, policy), *s0, L=env.L).mean().item()
    return gaps
