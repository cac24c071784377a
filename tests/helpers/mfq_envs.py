"""Small random environments with local actions for the SUBSAMPLE-MFQ tests (docs/model.md §7)."""

import torch

from sqtorch.envs.local_actions import LocalActionMDP
from sqtorch.tabular.counts import all_counts


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
