"""SUBSAMPLE-MFQ learning and its greedy policy (docs/model.md §7), against SUBSAMPLE-Q and brute force."""

import itertools

import pytest
import torch

from sqtorch.envs import make_env
from sqtorch.envs.local_actions import LocalActionMDP, formation
from sqtorch.evaluation.exact import policy_value
from sqtorch.evaluation.mfq import policy_value_mfq
from sqtorch.tabular import learn
from sqtorch.tabular.counts import rank_states
from sqtorch.tabular.mfq import MFQTable, learn_mfq, mfq_memory_gib, pair_env
from sqtorch.tabular.mfq_policy import MFQPolicy
from tests.helpers.brute_force_mfq import joint_optimal_q
from tests.helpers.mfq_envs import MATTERING, random_env

BUILT_IN = ["queue", "demand_response", "demand_response_script", "queue_types"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.mark.parametrize("name", BUILT_IN)
def test_conversion_is_lossless(name):
    env = make_env(name)
    la = LocalActionMDP.from_global_local(env)
    assert (la.Al, la.L, la.G, la.A) == (1, env.L, env.G, env.A)
    back = la.with_fixed_local_action(0)
    pe = pair_env(la)
    for field in ("P_g", "P_l", "r_g", "r_l"):
        assert torch.equal(getattr(back, field), getattr(env, field))
        assert torch.equal(getattr(pe, field), getattr(env, field))
    assert torch.equal(la.init_l, env.init_l) if env.init_l is not None else la.init_l is None


@pytest.mark.parametrize("name", BUILT_IN)
@pytest.mark.parametrize("m", ["exact", 3])
def test_one_local_action_reproduces_learn_bitwise(name, m):
    """|A_l| = 1: the same tables as SUBSAMPLE-Q, bit for bit, the same greedy actions and policy values."""
    env = make_env(name)
    ref = learn(env, 2, m=m, seed=5)
    res = learn_mfq(LocalActionMDP.from_global_local(env), 2, m=m, seed=5)
    assert torch.equal(res.table.q.permute(0, 2, 1), ref.qtable.q)
    assert res.iterations == ref.iterations
    policy = MFQPolicy.from_table(res.table)
    assert torch.equal(policy.greedy_g, ref.qtable.greedy())
    assert (policy.greedy_l == 0).all()
    if m == "exact":  # the exact values of Algorithm 2 on n agents (n = 2 for demand_response's L = 25)
        n = 3 if env.L <= 10 else 2
        v_ref = policy_value(env, n, ref.qtable.greedy(), 2)
        v = policy_value_mfq(env, n, policy)
        assert torch.allclose(v, v_ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("m", ["exact", 4])
def test_one_local_action_reproduces_learn_at_k3(m):
    env = make_env("queue")
    ref = learn(env, 3, m=m, seed=1)
    res = learn_mfq(env, 3, m=m, seed=1)
    assert torch.equal(res.table.q.permute(0, 2, 1), ref.qtable.q)


def test_validation_names_field_and_index():
    env = random_env(0)
    P_l = env.P_l.clone()
    P_l[1, 0, 1, 0, 0] += 0.5
    with pytest.raises(ValueError, match=r"P_l\[1, 0, 1, 0\] sums to"):
        LocalActionMDP(P_g=env.P_g, P_l=P_l, r_g=env.r_g, r_l=env.r_l, gamma=0.9)
    with pytest.raises(ValueError, match=r"r_l has shape"):
        LocalActionMDP(P_g=env.P_g, P_l=env.P_l, r_g=env.r_g, r_l=env.r_l[:, :, :1], gamma=0.9)
    r_l = env.r_l.clone()
    r_l[0, 1, 0, 1] = float("nan")
    with pytest.raises(ValueError, match=r"r_l\[0, 1, 0, 1\]"):
        LocalActionMDP(P_g=env.P_g, P_l=env.P_l, r_g=env.r_g, r_l=r_l, gamma=0.9)
    with pytest.raises(ValueError, match="P_l must have 5 dims"):
        LocalActionMDP(P_g=env.P_g, P_l=env.P_l[:, :, 0], r_g=env.r_g, r_l=env.r_l, gamma=0.9)
    with pytest.raises(ValueError, match="gamma"):
        LocalActionMDP(P_g=env.P_g, P_l=env.P_l, r_g=env.r_g, r_l=env.r_l, gamma=1.0)
    with pytest.raises(ValueError, match="k = 0"):
        learn_mfq(env, 0)
    with pytest.raises(ValueError, match="m = 0"):
        learn_mfq(env, 2, m=0)


def _pairs_rank(xs, acts, Al, K):
    """``rank(z)`` of every (xs, as): ``[L^k, Al^k]``."""
    return rank_states(xs[:, None, :] * Al + acts[None, :, :], K)


@pytest.mark.parametrize("spec", MATTERING)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_exact_q_is_joint_value_iteration(spec, k):
    """Q_k with the exact operator = value iteration on the joint k-agent MDP with r_Delta, at every entry;
    the paper's mean-field form is the same numbers with agent 1 in the representative slot."""
    env = random_env(*spec)
    table = learn_mfq(env, k, tol=1e-12).table
    q_bf, xs, acts = joint_optimal_q(env, k)  # [G, L^k, A, Al^k]
    z = _pairs_rank(xs, acts, env.Al, env.L * env.Al)
    assert torch.allclose(table.q[:, :, z].permute(0, 2, 1, 3), q_bf, rtol=0, atol=1e-10)
    assert torch.allclose(table.v[:, rank_states(xs, env.L)], q_bf.flatten(2).amax(-1), rtol=0, atol=1e-10)
    if k >= 2:
        mf = table.q_mean_field()  # [G, A, L, Al, N_{k-1}]
        z_others = _pairs_rank(xs[:, 1:], acts[:, 1:], env.Al, env.L * env.Al)
        view = mf[:, :, xs[:, 0, None], acts[None, :, 0], z_others]  # [G, A, L^k, Al^k]
        assert torch.allclose(view.permute(0, 2, 1, 3), q_bf, rtol=0, atol=1e-10)


def _check_lexicographic_rule(policy, q_bf, xs, G, A, Al, k):
    """a_g = smallest global action of a near-maximizer; a_1 = smallest action of agent 1 among the
    near-maximizers with that a_g (brute-force Q over ordered joint actions)."""
    tol = policy.tie_tol
    acts = torch.tensor(list(itertools.product(range(Al), repeat=k))).view(-1, k)
    V = q_bf.flatten(2).amax(-1)  # [G, S]
    g = torch.arange(G).repeat_interleave(xs.shape[0])
    x = xs.repeat(G, 1)
    a_g = policy.act_global(g, x).view(G, -1)
    a_1 = policy.act_local(g, x[:, 0], x[:, 1:]).view(G, -1)
    best_per_ag = q_bf.amax(-1)  # [G, S, A]
    ok = best_per_ag >= V[..., None] - tol
    assert (ok.to(torch.uint8).argmax(-1) == a_g).all()
    chosen = q_bf.gather(2, a_g[..., None, None].expand(-1, -1, 1, acts.shape[0])).squeeze(2)  # [G, S, Al^k]
    best_per_a1 = torch.stack([chosen[..., acts[:, 0] == a].amax(-1) for a in range(Al)], -1)  # [G, S, Al]
    ok1 = best_per_a1 >= V[..., None] - tol
    assert (ok1.to(torch.uint8).argmax(-1) == a_1).all()


@pytest.mark.parametrize("spec", MATTERING)
@pytest.mark.parametrize("k", [2, 3])
def test_greedy_actions_follow_the_tie_rule_on_brute_force(spec, k):
    env = random_env(*spec)
    policy = MFQPolicy.from_table(learn_mfq(env, k, tol=1e-12).table)
    q_bf, xs, _ = joint_optimal_q(env, k)
    _check_lexicographic_rule(policy, q_bf, xs, env.G, env.A, env.Al, k)
    assert policy.greedy_l.unique().numel() > 1  # the local agents do not all play one action


def test_duplicate_local_action_is_never_chosen():
    """Local action 2 copies action 0: every choice of 2 is an exact tie (up to rounding), and the rule
    picks the smaller action; the greedy choices are those of the env without the copy."""
    env = random_env(*MATTERING[0])
    dup = LocalActionMDP(
        P_g=env.P_g, P_l=torch.cat([env.P_l, env.P_l[:, :, :1]], 2), r_g=env.r_g,
        r_l=torch.cat([env.r_l, env.r_l[:, :, :1]], 2), gamma=env.gamma,
    )
    for k in (2, 3):
        p = MFQPolicy.from_table(learn_mfq(env, k, tol=1e-12).table)
        p_dup = MFQPolicy.from_table(learn_mfq(dup, k, tol=1e-12).table)
        assert torch.equal(p.greedy_g, p_dup.greedy_g)
        assert torch.equal(p.greedy_l, p_dup.greedy_l)
        q_bf, xs, _ = joint_optimal_q(dup, k)
        _check_lexicographic_rule(p_dup, q_bf, xs, dup.G, dup.A, dup.Al, k)


def test_policy_is_permutation_invariant():
    env = random_env(*MATTERING[1])
    policy = MFQPolicy.from_table(learn_mfq(env, 4, tol=1e-12).table)
    gen = torch.Generator().manual_seed(0)
    s_g = torch.randint(env.G, (256,), generator=gen)
    s = torch.randint(env.L, (256, 4), generator=gen)
    perm = torch.rand(256, 4, generator=gen).argsort(-1)
    assert torch.equal(policy.act_global(s_g, s), policy.act_global(s_g, s.gather(1, perm)))
    o, p3 = s[:, 1:], perm[:, :3].argsort(-1)
    assert torch.equal(policy.act_local(s_g, s[:, 0], o), policy.act_local(s_g, s[:, 0], o.gather(1, p3)))
    with pytest.raises(ValueError, match="k - 1 = 3"):
        policy.act_local(s_g, s[:, 0], s)


def test_deterministic_env_sampled_equals_exact():
    """formation has deterministic dynamics: one sample per entry is the exact expectation."""
    env = formation()
    exact = learn_mfq(env, 2, tol=1e-10).table
    sampled = learn_mfq(env, 2, m=1, tol=1e-10, seed=3).table
    assert torch.allclose(sampled.q, exact.q, rtol=0, atol=1e-8)


def test_sampled_tables_converge_to_exact_as_m_grows():
    env = random_env(*MATTERING[0])
    exact = learn_mfq(env, 2, tol=1e-10).table.q
    err = [(learn_mfq(env, 2, m=m, seed=0).table.q - exact).abs().max().item() for m in (4, 256)]
    assert err[1] < err[0] / 3


def test_memory_estimate_and_refusal():
    env = formation()
    small, large = mfq_memory_gib(env, 2, "exact"), mfq_memory_gib(env, 10, "exact")
    assert 0 < small < large
    with pytest.raises(ValueError, match="max_memory_gib = 0.001"):
        learn_mfq(env, 10, max_memory_gib=0.001)


def test_formation_definition():
    env = formation()
    assert (env.G, env.A, env.L, env.Al, env.gamma) == (5, 5, 3, 3, 0.9)
    # s_g' = clip(s_g + a_g): s_g = 1, a_g = 2 -> 2
    assert env.P_g[3, 4, 4] == 1.0
    # s_i' = clip(s_i + a_i - s_g): s_g = 1, s_i = 0, a_i = 1 -> 0; s_g = -2, s_i = 1, a_i = -1 -> 1
    assert env.P_l[3, 0, 2, 1, 1] == 1.0 and env.P_l[0, 4, 0, 2, 2] == 1.0
    assert env.r_l[2, 0, 1, 1].item() == pytest.approx(2.0)  # 1 + 0.5 + 0.3 + 0.2
    assert env.r_l[0, 0, 2, 2].item() == pytest.approx(0.4)  # 0 + 0.4 + 0.0 + 0
    assert env.r_g[0, 2].item() == pytest.approx(1.4) and env.r_g[2, 0].item() == pytest.approx(1.1)
    # every entry from the definition, in float64 (a float32 constant would be off by ~3e-9)
    vals = range(-2, 3), range(-1, 2)
    f64 = torch.float64
    r_g = torch.tensor([[1 + (0.2 if a == 0 else 0.1) + 0.1 * abs(g) for a in vals[0]] for g in vals[0]], dtype=f64)
    r_l = torch.tensor(
        [[[max(0.1, (1 - abs(x)) + (0.5 - 0.1 * abs(a)) + (0.3 - 0.1 * abs(x - g)) + (0.2 if abs(x - g) <= 1 else 0.0))
           for x in vals[1]] for a in vals[1]] for g in vals[0]],
        dtype=f64,
    )
    assert torch.allclose(env.r_g, r_g, rtol=0, atol=1e-15)
    assert torch.allclose(env.r_l, r_l[:, None].expand(5, 5, 3, 3), rtol=0, atol=1e-15)


def test_table_save_load_roundtrip(tmp_path):
    table = learn_mfq(random_env(*MATTERING[0]), 2, m=3).table
    table.save(tmp_path / "q.pt")
    back = MFQTable.load(tmp_path / "q.pt")
    assert torch.equal(back.q, table.q) and torch.equal(back.v, table.v)
    assert (back.k, back.L, back.Al, back.tol, back.meta) == (table.k, table.L, table.Al, table.tol, table.meta)
    assert torch.equal(MFQPolicy.from_table(back).greedy_l, MFQPolicy.from_table(table).greedy_l)
    (tmp_path / "bad.pt").write_bytes(b"not a table")
    with pytest.raises(ValueError, match="not a readable SUBSAMPLE-MFQ table"):
        MFQTable.load(tmp_path / "bad.pt")
    torch.save({"q": table.q, "v": table.v, "k": 3, "L": table.L, "Al": table.Al, "tol": 1e-8, "env_name": "x",
                "meta": {}}, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="q must be"):
        MFQTable.load(tmp_path / "wrong.pt")


def test_stop_early_false_runs_exactly_T_sweeps() -> None:
    from sqtorch.envs import formation
    from sqtorch.tabular.mfq import learn_mfq

    assert learn_mfq(formation(), 2, 2, T=7, stop_early=False).iterations == 7
    assert learn_mfq(formation(), 2, 2, T=200).iterations < 200  # converges (and stops) well before
