"""The ev_charging env (docs/model.md §7.7): a valid local-action model whose local states matter to the
global agent, with the exact SUBSAMPLE-MFQ gap >= 0 at every k and 0 at k = n (math, not our outputs)."""

from __future__ import annotations

import pytest
import torch

from sqtorch.envs import build_env
from sqtorch.envs.ev_charging import ev_charging
from tests.helpers.mfq_envs import exact_gaps


def test_the_kernels_follow_the_story() -> None:
    env = ev_charging(Q=3, p_leave=0.25, arrive_max=1)
    assert (env.G, env.A, env.L, env.Al) == (3, 2, 4, 2)
    # a vehicle at level 1 that charges stays (0.75) at level 2 or leaves and is replaced by level 0 or 1
    torch.testing.assert_close(env.P_l[0, 0, 1, 1], torch.tensor([0.125, 0.125, 0.75, 0.0], dtype=torch.float64))
    # charging in curtailment at peak costs price + overload + curtail_cost more than waiting (same unmet term)
    assert env.r_l[2, 1, 1, 3] - env.r_l[2, 1, 0, 3] == pytest.approx(-(0.40 + 0.30 + 0.5))
    assert env.r_g[2, 1] == pytest.approx(0.25) and env.r_g[2, 0] == 0
    assert build_env("ev_charging").name == "ev_charging"


def test_exact_gap_is_nonnegative_zero_at_k_equal_n_and_the_local_states_matter() -> None:
    env, n = ev_charging(), 4
    gaps = exact_gaps(env, n, (1, n))
    assert gaps[1] > 0.05  # seeing one vehicle is not enough: the operator needs the levels
    assert abs(gaps[n]) < 1e-9
