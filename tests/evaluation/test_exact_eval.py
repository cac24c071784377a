"""Exact V* and exact subsampled-policy values on the lumped count MDP (docs/model.md §2, §5)."""

import itertools
import math

import pytest
import torch

from sqtorch.envs import GlobalLocalMDP, make_env
from sqtorch.evaluation import evaluate_mc, initial_states
from sqtorch.evaluation.exact import (
    optimal_value,
    policy_value,
    subsample_probs,
    value_at,
)
from sqtorch.tabular.counts import all_counts, counts_of, num_counts, rank, rank_states
from sqtorch.tabular.exact import count_kernel, optimal_q


def random_env(G=2, A=2, L=3, gamma=0.8, seed=0):
    """A small env whose local kernel depends on (g, a) and has some zero entries."""
    gen = torch.Generator().manual_seed(seed)
    P_g = torch.rand(G, A, G, generator=gen, dtype=torch.float64)
    P_l = torch.rand(G, A, L, L, generator=gen, dtype=torch.float64)
    P_l = P_l * (torch.rand(G, A, L, L, generator=gen) > 0.3)
    P_l[..., 0] += 0.05  # every row keeps some mass
    r_g = torch.randn(G, A, generator=gen, dtype=torch.float64)
    r_l = torch.randn(G, A, L, generator=gen, dtype=torch.float64)
    return GlobalLocalMDP(
        P_g / P_g.sum(-1, keepdim=True), P_l / P_l.sum(-1, keepdim=True), r_g, r_l, gamma
    )


def joint_mdp(env, n):
    """The full n-agent MDP over (g, s_1..s_n): transition [S, A, S], reward [S, A], states."""
    states = torch.tensor(list(itertools.product(range(env.G), *[range(env.L)] * n)))
    g, s = states[:, 0], states[:, 1:]
    a = torch.arange(env.A)
    # P[(g,s), a, (g',s')] = P_g[g,a,g'] prod_i P_l[g,a,s_i,s'_i]
    P = env.P_g[g[:, None, None], a[None, :, None], states[None, None, :, 0]]
    for i in range(n):
        nxt = states[None, None, :, 1 + i]
        P = P * env.P_l[g[:, None, None], a[None, :, None], s[:, None, None, i], nxt]
    r = env.reward(g.repeat_interleave(env.A), s.repeat_interleave(env.A, 0), a.repeat(len(g)))
    return P, r.reshape(-1, env.A), g, s


def brute_policy_probs(env, greedy, g, s, k):
    """pi(a | g, s): fraction of k-subsets of the agents whose counts pick a (enumerated)."""
    n = s.shape[1]
    subsets = list(itertools.combinations(range(n), k))
    acts = torch.stack([greedy[g, rank_states(s[:, list(d)], env.L)] for d in subsets], 1)
    return torch.nn.functional.one_hot(acts, env.A).double().mean(1)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_policy_value_matches_brute_force_joint_mdp(k):
    env, n = random_env(), 3
    gen = torch.Generator().manual_seed(k)
    greedy = torch.randint(env.A, (env.G, num_counts(k, env.L)), generator=gen)
    P, r, g, s = joint_mdp(env, n)
    pi = brute_policy_probs(env, greedy, g, s, k)  # [S, A]
    P_pi = (pi[:, :, None] * P).sum(1)
    eye = torch.eye(len(g), dtype=torch.float64)
    V_joint = torch.linalg.solve(eye - env.gamma * P_pi, (pi * r).sum(1))
    V = policy_value(env, n, greedy, k)
    assert V.shape == (env.G, num_counts(n, env.L))
    assert torch.allclose(value_at(V, g, s), V_joint, atol=1e-8, rtol=0)


def test_optimal_value_matches_brute_force_joint_mdp():
    env, n = random_env(seed=3), 3
    P, r, g, s = joint_mdp(env, n)
    V = torch.zeros(len(g), dtype=torch.float64)
    for _ in range(400):  # joint value iteration, 0.8^400 ~ 1e-39
        V = (r + env.gamma * P @ V).max(1).values
    assert torch.allclose(value_at(optimal_value(env, n), g, s), V, atol=1e-9, rtol=0)


def test_hypergeometric_lumping_matches_enumeration():
    n, k, L = 5, 2, 3
    H = subsample_probs(n, k, L)
    C = all_counts(n, L)
    assert torch.allclose(H.sum(1), torch.ones(len(C), dtype=torch.float64), atol=1e-14)
    for i in (0, 7, len(C) - 1):  # three count vectors, all k-subsets of a representative
        x = torch.repeat_interleave(torch.arange(L), C[i])
        sub = torch.tensor(list(itertools.combinations(x.tolist(), k)))
        freq = torch.bincount(rank(counts_of(sub, L)), minlength=num_counts(k, L)).double()
        assert torch.allclose(H[i], freq / math.comb(n, k), atol=1e-14)


@pytest.fixture(scope="module")
def queue_gaps():
    """Exact gaps V* - V^{pi_k} of the queue defaults at n = 10, pi_k from optimal_q at k."""
    env, n = make_env("queue"), 10
    K = count_kernel(env, n)
    V_star = optimal_value(env, n, kernel=K)
    s_g, s_l = initial_states(env, n, 64, seed=0)
    v_star = value_at(V_star, s_g, s_l)
    tables, values, gaps = {}, {}, []
    for k in range(1, n + 1):
        tables[k] = optimal_q(env, k, tol=1e-9)  # SUBSAMPLE-Q, m = exact
        values[k] = policy_value(env, n, tables[k].greedy(), k, kernel=K)
        gaps.append(float((v_star - value_at(values[k], s_g, s_l)).mean()))
    return env, tables, values, gaps


@pytest.mark.slow
def test_queue_gap_is_non_increasing_in_k_and_zero_at_n(queue_gaps):
    _, _, _, gaps = queue_gaps
    print("queue n=10 exact gaps k=1..10:", [f"{x:.6g}" for x in gaps])
    assert gaps[0] > 0.5  # the subsampled policy at k = 1 is clearly suboptimal
    assert all(x >= -1e-9 for x in gaps)
    assert all(a >= b - 1e-12 for a, b in zip(gaps, gaps[1:], strict=False))
    assert abs(gaps[-1]) < 1e-9


@pytest.mark.slow
def test_monte_carlo_agrees_with_exact_value(queue_gaps):
    env, tables, values, _ = queue_gaps
    n, k = 10, 3
    s_g, s_l = initial_states(env, n, 8, seed=11)
    exact = value_at(values[k], s_g, s_l)
    res = evaluate_mc(env, tables[k], n, s0=(s_g, s_l), rollouts=512, horizon=250, seed=0)
    print(f"queue n=10 k=3: MC {res.mean:.4f} +- {res.ci95:.4f}, exact {float(exact.mean()):.4f}")
    assert abs(res.mean - float(exact.mean())) < res.ci95
    assert res.ci95 < 0.2


def _dr_gaps(name, n=3):
    env = make_env(name)
    K = count_kernel(env, n)
    V_star = optimal_value(env, n, kernel=K)
    s_g, s_l = initial_states(env, n, 64, seed=0)
    gaps = []
    for k in range(1, n + 1):
        greedy = optimal_q(env, k, tol=1e-9, kernel=K if k == n else None).greedy()
        V = policy_value(env, n, greedy, k, kernel=K)
        gaps.append(float((value_at(V_star - V, s_g, s_l)).mean()))
    return gaps


@pytest.mark.slow
def test_demand_response_script_gap_is_zero_at_every_k():
    gaps = _dr_gaps("demand_response_script")
    assert all(abs(x) < 1e-9 for x in gaps), gaps


@pytest.mark.slow
def test_demand_response_gap_is_positive_at_k1():
    gaps = _dr_gaps("demand_response")
    print("demand_response n=3 exact gaps k=1..3:", gaps)
    assert gaps[0] > 0.1 and abs(gaps[-1]) < 1e-9


def test_value_at_is_permutation_invariant_and_checks_states():
    env, n = random_env(), 3
    V = optimal_value(env, n)
    s_g, s_l = initial_states(env, n, 10, seed=0)
    perm = s_l[:, torch.tensor([2, 0, 1])]
    assert torch.equal(value_at(V, s_g, s_l), value_at(V, s_g, perm))
    bad = s_l.clone()
    bad[4, 1] = env.L
    with pytest.raises(ValueError, match=r"s_l\[4, 1\] = 3 is outside the state space"):
        value_at(V, s_g, bad)
    with pytest.raises(ValueError, match=r"V has 10 count states"):
        value_at(V, s_g, s_l[:, :2].repeat(1, 2))


def test_intractable_and_bad_inputs_raise():
    env = make_env("demand_response")
    with pytest.raises(ValueError, match=r"n = 10 is not tractable: .* states, .* GiB"):
        optimal_value(env, 10)
    queue = make_env("queue")
    greedy = torch.zeros(queue.G, num_counts(2, queue.L), dtype=torch.int64)
    with pytest.raises(ValueError, match=r"k = 2 is outside the allowed range 1 <= k <= n = 1"):
        policy_value(queue, 1, greedy, 2)
    with pytest.raises(ValueError, match=r"greedy has shape"):
        policy_value(queue, 4, greedy, 3)
    with pytest.raises(ValueError, match=r"greedy must hold integer actions"):
        policy_value(queue, 4, greedy + 3, 2)
