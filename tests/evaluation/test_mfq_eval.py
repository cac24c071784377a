"""Exact values and Monte Carlo execution of SUBSAMPLE-MFQ (docs/model.md §7.4-7.5) against brute force."""

import itertools
import math

import pytest
import torch

from sqtorch.envs.local_actions import formation
from sqtorch.envs.simulator import make_generator, sample_initial_state
from sqtorch.evaluation.exact import optimal_value, value_at
from sqtorch.evaluation.execution import horizon_for
from sqtorch.evaluation.mfq import local_action_probs, optimal_value_mfq, pair_count_probs, policy_value_mfq
from sqtorch.evaluation.mfq_execution import compare_mfq_mc, evaluate_mfq_mc, joint_actions, others_subsets
from sqtorch.tabular.counts import rank_states
from sqtorch.tabular.mfq import learn_mfq, pair_index
from sqtorch.tabular.mfq_policy import MFQPolicy
from tests.helpers.brute_force_mfq import decentralized_joint_policy, joint_optimal_q, joint_policy_value
from tests.helpers.mfq_envs import MATTERING, has_ties, random_env


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _policy(env, k):
    return MFQPolicy.from_table(learn_mfq(env, k, tol=1e-12).table)


def _tuples(L, n):
    return torch.tensor(list(itertools.product(range(L), repeat=n))).view(-1, n)


@pytest.mark.parametrize("spec", MATTERING)
def test_optimal_value_is_joint_optimum(spec):
    env = random_env(*spec)
    for n in (1, 2, 3):
        q_bf, xs, _ = joint_optimal_q(env, n)
        V = optimal_value_mfq(env, n)
        assert torch.allclose(V[:, rank_states(xs, env.L)], q_bf.flatten(2).amax(-1), rtol=0, atol=1e-10)


@pytest.mark.parametrize("spec", MATTERING)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_policy_value_is_joint_policy_evaluation(spec, k):
    """The lumped value of Algorithm 2 = policy evaluation on the joint MDP of the policy built by
    enumerating every subset the global and each local agent may draw."""
    env = random_env(*spec)
    n = 3
    policy = _policy(env, k)
    V = policy_value_mfq(env, n, policy)
    V_bf = joint_policy_value(env, n, decentralized_joint_policy(policy, env, n))
    assert torch.allclose(V[:, rank_states(_tuples(env.L, n), env.L)], V_bf, rtol=0, atol=1e-10)


@pytest.mark.parametrize("spec", MATTERING)
def test_gaps_nonnegative_zero_at_n_and_envs_where_agents_matter(spec):
    env = random_env(*spec)
    n = 3
    V_star = optimal_value_mfq(env, n)
    # the local actions matter: fixing every agent's action to any one value loses somewhere
    fixed = torch.stack([optimal_value(env.with_fixed_local_action(a), n) for a in range(env.Al)]).amax(0)
    assert (V_star - fixed).max() > 1e-2
    table_n = learn_mfq(env, n, tol=1e-12).table
    assert not has_ties(table_n)
    # the local states matter: the optimal global action changes with the state counts
    greedy_n = MFQPolicy.from_table(table_n).greedy_g
    assert any(greedy_n[g].unique().numel() > 1 for g in range(env.G))
    gaps = []
    for k in range(1, n + 1):
        gap = V_star - policy_value_mfq(env, n, _policy(env, k))
        assert gap.min() >= -1e-10
        gaps.append(gap.max().item())
    assert gaps[0] > 1e-2  # Algorithm 2 at k = 1 is far from optimal here
    assert gaps[-1] <= 1e-10  # no ties: at k = n every agent plays its part of the unique optimum


def test_gaps_nonnegative_at_n4():
    env = random_env(*MATTERING[1])
    n = 4
    V_star = optimal_value_mfq(env, n)
    for k in range(1, n + 1):
        assert (V_star - policy_value_mfq(env, n, _policy(env, k))).min() >= -1e-10


def test_action_probabilities_are_distributions():
    env = random_env(*MATTERING[0])
    n, k = 4, 2
    rho = local_action_probs(_policy(env, k), n)
    assert torch.allclose(rho.sum(2), torch.ones(()).double())
    p = pair_count_probs(rho, n)  # [G, NZ]: sums to 1 over the Z of each state count C
    index = pair_index(n, env.L, env.Al)
    total = torch.zeros(env.G, index.N, dtype=torch.float64).index_add_(1, index.state_of, p)
    assert torch.allclose(total, torch.ones(()).double())


def test_others_subsets_exclude_self_uniformly():
    n, k, B = 6, 3, 4000
    idx = others_subsets(n, k, B, make_generator(0))
    assert idx.shape == (B, n, k - 1)
    assert not (idx == torch.arange(n)[None, :, None]).any()
    s = idx.sort(-1).values
    assert (s[..., 1:] != s[..., :-1]).all()
    freq = torch.zeros(n, n).index_put_(
        (torch.arange(n)[None, :, None].expand_as(idx).reshape(-1), idx.reshape(-1)), torch.ones(idx.numel()),
        accumulate=True,
    ) / B
    expected = (k - 1) / (n - 1)
    off = ~torch.eye(n, dtype=torch.bool)
    assert (freq[off] - expected).abs().max() < 5 * math.sqrt(expected * (1 - expected) / B)


def test_subset_draws_do_not_depend_on_the_policy():
    """Common random numbers: two policies consume the same uniforms per step."""
    env = random_env(*MATTERING[0])
    a, b = _policy(env, 2), _policy(env, 2)
    b.greedy_g, b.greedy_l = 1 - a.greedy_g, 1 - a.greedy_l
    s_g, s_l = sample_initial_state(env, 5, 64, make_generator(0))
    g1, g2 = make_generator(7), make_generator(7)
    joint_actions(a, s_g, s_l, g1)
    joint_actions(b, s_g, s_l, g2)
    assert torch.equal(torch.rand(8, generator=g1), torch.rand(8, generator=g2))


def test_paired_difference_matches_exact_and_is_tighter():
    env = random_env(*MATTERING[1])
    n = 4
    a = _policy(env, 2)
    b = _policy(random_env(*MATTERING[1], gamma=0.5), 2)  # same sizes and k, another (myopic) greedy policy
    assert not (torch.equal(a.greedy_g, b.greedy_g) and torch.equal(a.greedy_l, b.greedy_l))
    s_g, s_l = sample_initial_state(env, n, 8, make_generator(0))
    exact = (value_at(policy_value_mfq(env, n, a), s_g, s_l, env.L)
             - value_at(policy_value_mfq(env, n, b), s_g, s_l, env.L)).mean().item()
    res = compare_mfq_mc(env, a, b, n, s0=(s_g, s_l), rollouts=500, seed=3)
    tail = 2 * env.gamma ** horizon_for(env.gamma) * 2.0 / (1 - env.gamma)
    assert abs(res.mean_diff - exact) <= 1.5 * res.ci95 + tail
    assert res.ci95 < (res.a.ci95**2 + res.b.ci95**2) ** 0.5


@pytest.mark.parametrize("k", [1, 2, 4])
def test_execution_matches_exact_value(k):
    env = random_env(*MATTERING[0])
    n = 4
    policy = _policy(env, k)
    V = policy_value_mfq(env, n, policy)
    s_g, s_l = sample_initial_state(env, n, 8, make_generator(0))
    exact = value_at(V, s_g, s_l, env.L).mean().item()
    res = evaluate_mfq_mc(env, policy, n, s0=(s_g, s_l), rollouts=1000, seed=k)
    r_max = max(env.r_g.abs().max().item() + env.r_l.abs().max().item(), 1e-12)
    tail = env.gamma ** horizon_for(env.gamma) * r_max / (1 - env.gamma)
    assert abs(res.mean - exact) <= 1.5 * res.ci95 + tail
    assert res.ci95 < 0.01


def test_execution_of_formation_at_paper_size():
    """The public example at n = 14 (only Monte Carlo: the exact n-agent table is too large)."""
    env = formation()
    policy = MFQPolicy.from_table(learn_mfq(env, 3, tol=1e-8).table)
    res = evaluate_mfq_mc(env, policy, 14, num_initial=4, rollouts=16, horizon=20)
    assert res.returns.shape == (4, 16) and math.isfinite(res.mean)
    with pytest.raises(ValueError, match="1 <= k <= n = 2"):
        evaluate_mfq_mc(env, policy, 2)
    with pytest.raises(ValueError, match=r"L \* Al = 3 \* 3 = 9 .* not tractable"):
        policy_value_mfq(env, 14, policy)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_learning_evaluation_and_execution():
    env = random_env(*MATTERING[0])
    cpu = learn_mfq(env, 3, tol=1e-12).table
    gpu = learn_mfq(env.to("cuda"), 3, tol=1e-12).table
    torch.testing.assert_close(gpu.q.cpu(), cpu.q, rtol=0, atol=1e-10)
    p_cpu, p_gpu = MFQPolicy.from_table(cpu), MFQPolicy.from_table(gpu)
    assert torch.equal(p_gpu.greedy_g.cpu(), p_cpu.greedy_g) and torch.equal(p_gpu.greedy_l.cpu(), p_cpu.greedy_l)
    V = policy_value_mfq(env, 4, p_cpu)
    torch.testing.assert_close(policy_value_mfq(env.to("cuda"), 4, p_gpu).cpu(), V, rtol=0, atol=1e-10)
    sampled = learn_mfq(env.to("cuda"), 3, m=8, seed=0).table
    assert sampled.q.is_cuda and torch.isfinite(sampled.q).all()
    s_g, s_l = sample_initial_state(env, 4, 8, make_generator(0))
    res = evaluate_mfq_mc(env, p_cpu, 4, s0=(s_g, s_l), rollouts=1000, device="cuda")
    exact = value_at(V, s_g, s_l, env.L).mean().item()
    tail = env.gamma ** horizon_for(env.gamma) * 2.0 / (1 - env.gamma)
    assert abs(res.mean - exact) <= 1.5 * res.ci95 + tail
