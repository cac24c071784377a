"""Random small environments for property tests (hypothesis) and the example-count profiles.

Profiles: ``default`` keeps the property tests fast; ``SQTORCH_HYPOTHESIS_PROFILE=slow`` runs ten
times more examples.
"""

from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from sqtorch.envs.base import GlobalLocalMDP

settings.register_profile(
    "default", max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "slow", max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
PROFILE = settings.get_profile(os.environ.get("SQTORCH_HYPOTHESIS_PROFILE", "default"))


def _stochastic(shape: tuple[int, ...], gen: torch.Generator, sparsity: float) -> torch.Tensor:
    """Random rows summing to 1 with about ``sparsity`` of the entries exactly 0 (never a whole row)."""
    w = torch.rand(shape, generator=gen, dtype=torch.float64)
    keep = torch.rand(shape, generator=gen) >= sparsity
    keep[..., 0] |= ~keep.any(-1)
    w = w * keep
    return w / w.sum(-1, keepdim=True)


@st.composite
def small_envs(draw: st.DrawFn, max_G: int = 3, max_A: int = 3, max_L: int = 3) -> GlobalLocalMDP:
    """A random global-local MDP: shapes, sparse kernels, rewards and gamma from one seed."""
    G, A, L = draw(st.integers(1, max_G)), draw(st.integers(1, max_A)), draw(st.integers(2, max_L))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    sparsity = draw(st.sampled_from([0.0, 0.3, 0.6]))
    local_depends_on_action = draw(st.booleans())
    P_l = _stochastic((G, A if local_depends_on_action else 1, L, L), gen, sparsity).expand(G, A, L, L)
    return GlobalLocalMDP(
        P_g=_stochastic((G, A, G), gen, sparsity),
        P_l=P_l.contiguous(),
        r_g=torch.rand(G, A, generator=gen, dtype=torch.float64) * 2 - 1,
        r_l=torch.rand(G, A, L, generator=gen, dtype=torch.float64) * 2 - 1,
        gamma=draw(st.sampled_from([0.5, 0.8, 0.9])),
    )
