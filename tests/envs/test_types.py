"""Agent types as part of the local state, and the initial local-state distribution init_l (sqtorch/envs/types.py)."""

import itertools

import pytest
import torch

from sqtorch.envs import GlobalLocalMDP, build_env, make_env, queue, queue_types, type_of, with_types
from sqtorch.envs.simulator import make_generator, sample_initial_state, step
from sqtorch.evaluation import evaluate_mc, initial_states
from sqtorch.evaluation.exact import optimal_value, policy_value, value_at
from sqtorch.tabular import learn, optimal_q
from sqtorch.tabular.counts import rank_states


def test_init_l_is_validated_with_its_name():
    env = queue(Q=2)
    fields = dict(P_g=env.P_g, P_l=env.P_l, r_g=env.r_g, r_l=env.r_l, gamma=env.gamma)
    with pytest.raises(ValueError, match=r"init_l has shape \(2,\), expected \(3,\)"):
        GlobalLocalMDP(**fields, init_l=torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match=r"init_l\[1\] = -0.5 is negative"):
        GlobalLocalMDP(**fields, init_l=torch.tensor([1.0, -0.5, 0.5]))
    with pytest.raises(ValueError, match=r"init_l.* sums to 0.9"):
        GlobalLocalMDP(**fields, init_l=torch.tensor([0.3, 0.3, 0.3]))


def test_uniform_initial_states_unchanged_by_init_l_support():
    """init_l = None draws exactly the states of torch.randint (same seeds as before init_l)."""
    env = make_env("queue")
    s_g, s_l = sample_initial_state(env, 7, 5, make_generator(3))
    gen = make_generator(3)
    assert torch.equal(s_g, torch.randint(env.G, (5,), generator=gen))
    assert torch.equal(s_l, torch.randint(env.L, (5, 7), generator=gen))


def test_init_l_draws_follow_the_distribution_and_never_zero_states():
    env = queue(Q=3)
    p = torch.tensor([0.0, 0.6, 0.0, 0.4], dtype=torch.float64)
    env = GlobalLocalMDP(env.P_g, env.P_l, env.r_g, env.r_l, env.gamma, init_l=p)
    _, s_l = sample_initial_state(env, 20_000, 2, make_generator(0))
    freq = torch.bincount(s_l.flatten(), minlength=4).double() / s_l.numel()
    assert freq[0] == 0 and freq[2] == 0
    assert abs(freq[1] - 0.6) < 0.01


def test_with_types_block_diagonal_and_mix():
    env = queue_types(lams=(0.2, 0.5, 0.8), mix=(1, 2, 1), Q=3)
    assert env.L == 12 and env.params["sizes"] == [4, 4, 4]
    assert torch.allclose(env.init_l.reshape(3, 4).sum(1), torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64))
    P = env.P_l.reshape(env.G, env.A, 3, 4, 3, 4)
    off = ~torch.eye(3, dtype=torch.bool)
    assert P.permute(0, 1, 2, 4, 3, 5)[:, :, off].abs().max() == 0  # the type never changes
    for t, lam in enumerate((0.2, 0.5, 0.8)):
        ref = queue(Q=3, lam=lam)
        assert torch.equal(P[:, :, t, :, t, :], ref.P_l)
        assert torch.equal(env.r_l[:, :, 4 * t : 4 * t + 4], ref.r_l)
    assert torch.equal(env.r_g, queue(Q=3).r_g) and torch.equal(env.P_g, queue(Q=3).P_g)


def test_one_type_is_queue():
    a, b = queue_types(lams=(0.6,), Q=4), queue(Q=4, lam=0.6)
    for f in ("P_g", "P_l", "r_g", "r_l"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    assert torch.allclose(a.init_l, torch.full((5,), 0.2, dtype=torch.float64))


def test_types_are_fixed_along_trajectories():
    env = queue_types(lams=(0.3, 0.7), mix=(0.3, 0.7), Q=4)
    gen = make_generator(1)
    s_g, s_l = sample_initial_state(env, 1000, 8, gen)
    t0 = type_of(env, s_l)
    assert abs(t0.double().mean().item() - 0.7) < 0.02
    for _ in range(20):
        a = torch.randint(env.A, (8,), generator=gen)
        s_g, s_l, _ = step(env, s_g, s_l, a, gen)
    assert torch.equal(type_of(env, s_l), t0)


def test_with_types_rejects_mismatched_global_parts():
    with pytest.raises(ValueError, match=r"envs\[1\].gamma = 0.8 differs"):
        with_types([queue(Q=2), queue(Q=2, gamma=0.8)])
    with pytest.raises(ValueError, match=r"envs\[1\].r_g differs"):
        with_types([queue(Q=2), queue(Q=2, c=3.0)])
    with pytest.raises(ValueError, match="mix has 3 entries, expected one per type"):
        queue_types(lams=(0.3, 0.7), mix=(1, 1, 1))
    with pytest.raises(ValueError, match=r"mus_scale\[1\] = 2.0 is outside the allowed range"):
        queue_types(lams=(0.3, 0.7), mus_scale=(1.0, 2.0))


def _joint_optimal_value(env, n):
    """V* of the joint (g, s_1..s_n) MDP by value iteration (docs/model.md §1), brute force."""
    states = torch.tensor(list(itertools.product(range(env.G), *[range(env.L)] * n)))
    g, s = states[:, 0], states[:, 1:]
    a = torch.arange(env.A)
    P = env.P_g[g[:, None, None], a[None, :, None], states[None, None, :, 0]]
    for i in range(n):
        P = P * env.P_l[g[:, None, None], a[None, :, None], s[:, None, None, i], states[None, None, :, 1 + i]]
    r = env.reward(g.repeat_interleave(env.A), s.repeat_interleave(env.A, 0), a.repeat(len(g))).reshape(-1, env.A)
    V = torch.zeros(len(g), dtype=torch.float64)
    for _ in range(400):
        V = (r + env.gamma * P @ V).max(1).values
    return V, g, s


@pytest.mark.slow
def test_exact_values_with_types_match_brute_force():
    """Count MDP over (type, state) counts == joint MDP of typed agents (n = 3, 2 types x 2 states)."""
    env = queue_types(lams=(0.2, 0.8), mix=(0.5, 0.5), Q=1, G=2, gamma=0.8)
    V, g, s = _joint_optimal_value(env, 3)
    assert torch.allclose(value_at(optimal_value(env, 3), g, s), V, atol=1e-9, rtol=0)


@pytest.mark.slow
def test_exact_gap_over_typed_initial_states_matches_monte_carlo():
    """Exact V^pi averaged over initial states drawn from init_l agrees with CRN Monte Carlo."""
    env, n, k = queue_types(lams=(0.3, 0.7), mix=(0.2, 0.8), Q=2), 6, 2
    table = optimal_q(env, k)
    s_g, s_l = initial_states(env, n, 16, seed=5)
    assert type_of(env, s_l).double().mean() > 0.6  # drawn from the mix, not uniform
    exact = value_at(policy_value(env, n, table.greedy(), k), s_g, s_l)
    mc = evaluate_mc(env, table, n, s0=(s_g, s_l), rollouts=256, seed=1)
    assert abs(mc.mean - float(exact.mean())) < max(3 * mc.ci95, 1e-3)
    gap = value_at(optimal_value(env, n), s_g, s_l) - exact
    assert (gap >= -1e-9).all()


def test_tabular_and_deepsets_act_on_types():
    from sqtorch.neural import DeepSetsPolicy, DeepSetsQ, GenerativeSource, NetConfig
    from sqtorch.neural.data import DataConfig

    env = build_env({"_target_": "sqtorch.envs.queue_types", "lams": [0.3, 0.7], "mix": [0.5, 0.5], "Q": 2})
    res = learn(env, k=3, m=4, T=20, seed=0)
    s_g, s_l = sample_initial_state(env, 10, 4, make_generator(0))
    assert res.qtable.act(s_g, s_l[:, :3]).shape == (4,)
    pol = DeepSetsPolicy(DeepSetsQ(env.G, env.L, env.A, NetConfig()), k=3)
    assert pol.act(s_g, s_l[:, :3]).shape == (4,)
    src = GenerativeSource(env, 10, 3, 2, DataConfig(state_dist="visited", pool_size=64), seed=0)
    assert abs(type_of(env, src.pool_l).double().mean().item() - 0.5) < 0.1
    assert rank_states(src.sample(8).s_sub, env.L).shape == (8,)
