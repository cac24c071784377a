"""The constrained_exploration env (docs/model.md §7.10): kernels as described, and the exact
SUBSAMPLE-MFQ gap >= 0, 0 at k = n, with local states that matter (math, not our outputs)."""

from __future__ import annotations

import torch

from sqtorch.envs import build_env
from sqtorch.envs.constrained_exploration import constrained_exploration
from tests.helpers.mfq_envs import exact_gaps


def test_the_kernels_follow_the_description() -> None:
    env = constrained_exploration(W=5, box=2, slip=0.1)
    assert (env.G, env.A, env.L, env.Al) == (4, 4, 5, 3)
    # from cell 0 a move right lands in cell 1 w.p. 0.9 and stays w.p. 0.1; a move left stays
    torch.testing.assert_close(env.P_l[0, 0, 2, 0], torch.tensor([0.1, 0.9, 0, 0, 0], dtype=torch.float64))
    torch.testing.assert_close(env.P_l[0, 0, 0, 0], torch.tensor([1.0, 0, 0, 0, 0], dtype=torch.float64))
    assert torch.equal(env.P_g[1, 3], torch.tensor([0, 0, 0, 1.0], dtype=torch.float64))  # s_g' = a_g
    assert env.r_l[1, 0, 1, 2] == 1.0 and env.r_l[1, 0, 1, 0] == 0.0  # cell 2 is in the box at 1, cell 0 is not
    assert build_env("constrained_exploration").name == "constrained_exploration"


def test_exact_gap_is_nonnegative_zero_at_k_equal_n_and_the_local_states_matter() -> None:
    env, n = constrained_exploration(), 3
    gaps = exact_gaps(env, n, (1, n))
    assert gaps[1] > 0.05 and abs(gaps[n]) < 1e-9
