"""Property-based safety net for the tabular learner (hypothesis, random small environments).

Over random ``(G, A, L, n, kernels, rewards, gamma)``:
- the exact count-vector learner at k = n equals value iteration on the joint n-agent MDP
  (docs/model.md §2: the count MDP is a lossless lumping because agents are exchangeable);
- the m-sample learner's error against the exact table shrinks with m;
- the exact value of the subsampled policy (Algorithm 2) equals its Monte Carlo estimate.

Example counts: the profiles of ``tests/helpers/random_envs.py``.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sqtorch.envs.base import GlobalLocalMDP
from sqtorch.evaluation import evaluate_mc, initial_states
from sqtorch.evaluation.exact import policy_value, value_at
from sqtorch.tabular import learn, optimal_q, rank_states
from tests.helpers.brute_force import joint_value_iteration
from tests.helpers.random_envs import PROFILE, small_envs


@pytest.mark.slow
@settings(PROFILE)
@given(env=small_envs(), n=st.integers(1, 3))
def test_exact_learner_at_k_equal_n_is_joint_value_iteration(env: GlobalLocalMDP, n: int) -> None:
    q_joint, tuples = joint_value_iteration(env, n)  # [G, L^n, A]
    q_count = optimal_q(env, n, tol=1e-13).q  # [G, N, A]
    assert torch.allclose(q_count[:, rank_states(tuples, env.L)], q_joint, rtol=0, atol=1e-8)


@pytest.mark.slow
@settings(PROFILE, max_examples=max(PROFILE.max_examples // 3, 10))
@given(env=small_envs(max_L=3), k=st.integers(1, 3), seed=st.integers(0, 1000))
def test_sampled_error_shrinks_with_m(env: GlobalLocalMDP, k: int, seed: int) -> None:
    """Mean |Q_m - Q_exact| over 4 seeds at m = 2048 is well below m = 8 (1/sqrt(m) predicts 16x).

    Averaging over seeds matters: with a nearly deterministic kernel a few entries carry all the
    noise, and one lucky draw at m = 8 can be as good as m = 2048.
    """
    q_exact = optimal_q(env, k, tol=1e-12).q
    err = {
        m: sum(float((learn(env, k, m=m, seed=seed + s, tol=1e-11).qtable.q - q_exact).abs().mean()) for s in range(4))
        for m in (8, 2048)
    }
    assert err[2048] <= 0.5 * err[8] + 1e-9, err


@pytest.mark.slow
@settings(PROFILE, max_examples=max(PROFILE.max_examples // 3, 10))
@given(env=small_envs(max_G=2, max_A=2, max_L=3), n=st.integers(2, 4), data=st.data())
def test_exact_policy_value_matches_monte_carlo(env: GlobalLocalMDP, n: int, data: st.DataObject) -> None:
    """Exact V^{pi_k} of Algorithm 2's policy is inside 4 sigma (2 CI half-widths) of its MC estimate."""
    k = data.draw(st.integers(1, n))
    table = optimal_q(env, k)
    V = policy_value(env, n, table.greedy(), k)
    s_g, s_l = initial_states(env, n, 4, seed=1)
    exact = float(value_at(V, s_g, s_l).mean())
    res = evaluate_mc(env, table, n, s0=(s_g, s_l), rollouts=256, seed=data.draw(st.integers(0, 100)))
    r_max = float(torch.cat([env.r_g.abs().flatten(), env.r_l.abs().flatten()]).max()) * 2
    truncation = env.gamma**res.horizon * r_max / (1 - env.gamma)
    assert math.isfinite(res.mean)
    assert abs(res.mean - exact) <= 2 * res.ci95 + truncation + 1e-9, (res.mean, res.ci95, exact)
