"""DeepSets SUBSAMPLE-Q (docs/model.md §3): invariances, sampler, targets, metric names, and accuracy
against the exact tabular Q on `queue` (n = 10, k = 4)."""

from __future__ import annotations

import pytest
import torch

from sqtorch import metrics as M
from sqtorch.envs import make_env, sample_initial_state
from sqtorch.envs.simulator import make_generator
from sqtorch.evaluation.exact import optimal_value, policy_value, value_at
from sqtorch.evaluation.reference import evaluate_return
from sqtorch.experiment import run
from sqtorch.neural.data import GENERATIVE_DISTS, DataConfig, GenerativeSource
from sqtorch.neural.deepsets import POOLINGS, DeepSetsQ
from sqtorch.neural.module import SubsampleQModule
from sqtorch.neural.policy import DeepSetsPolicy
from sqtorch.tabular.counts import all_sorted_states, counts_of, rank_states
from sqtorch.tabular.exact import optimal_q
from sqtorch.tabular.qtable import QTable

QUEUE = {"_target_": "sqtorch.envs.queue"}

pytestmark = pytest.mark.usefixtures("one_thread")


def _net(pooling: str = "mean", **kw) -> DeepSetsQ:
    torch.manual_seed(0)
    return DeepSetsQ(G=4, L=5, A=3, hidden=16, embed_dim=4, pooling=pooling, **kw).double()


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("global_in_phi", [True, False])
def test_permutation_invariance(pooling: str, global_in_phi: bool) -> None:
    net = _net(pooling, global_in_phi=global_in_phi)
    gen = torch.Generator().manual_seed(1)
    s_g = torch.randint(4, (64,), generator=gen)
    s_sub = torch.randint(5, (64, 7), generator=gen)
    perm = torch.rand(64, 7, generator=gen).argsort(1)  # a different shuffle per row
    q = net(s_g, s_sub)
    torch.testing.assert_close(net(s_g, s_sub.gather(1, perm)), q, rtol=1e-12, atol=1e-12)
    # the count-vector path used for training is the same function
    torch.testing.assert_close(net.forward_counts(s_g, counts_of(s_sub, 5)), q)


def test_mean_pooling_depends_only_on_F() -> None:
    """Mean pooling: Q(s_g, Delta) = Q(s_g, Delta twice): one net serves every k (docs/model.md §3)."""
    net = _net("mean")
    s_g = torch.tensor([0, 1, 3])
    s_sub = torch.tensor([[0, 1, 4], [2, 2, 3], [4, 4, 4]])
    torch.testing.assert_close(net(s_g, s_sub.repeat(1, 2)), net(s_g, s_sub))
    policy = DeepSetsPolicy(net, k=6)
    assert policy.act(s_g, s_sub.repeat(1, 2)).shape == (3,)


def test_policy_ties_lowest_index_and_k_check() -> None:
    net = _net()
    last = net.rho[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 1.0, 1.0]))
    policy = DeepSetsPolicy(net, k=2)
    s_g, s_sub = torch.tensor([0, 2]), torch.tensor([[0, 1], [3, 3]])
    assert policy.act(s_g, s_sub).tolist() == [1, 1]
    with torch.no_grad():
        last.bias.zero_()
    assert policy.act(s_g, s_sub).tolist() == [0, 0]
    with pytest.raises(ValueError, match="k = 2"):
        policy.act(s_g, torch.zeros(2, 3, dtype=torch.long))


def test_q_table_is_the_network_in_rank_order() -> None:
    net = _net()
    policy = DeepSetsPolicy(net, k=3)
    table = policy.q_table()
    X = all_sorted_states(3, 5)
    assert table.shape == (4, X.shape[0], 3)
    g = torch.full((X.shape[0],), 2)
    torch.testing.assert_close(table[2], net(g, X))
    assert torch.equal(policy.greedy(), table.argmax(-1))


@pytest.mark.parametrize("dist", GENERATIVE_DISTS)
def test_source_seeded_and_resumable(dist: str) -> None:
    env = make_env("queue")
    a, b = (GenerativeSource(env, 10, 4, 3, DataConfig(dist, pool_size=8), seed=5) for _ in range(2))
    greedy = DeepSetsPolicy(_net().float(), 4).act
    a.sample(16, greedy)
    state = a.state_dict()
    b.load_state_dict(state)
    x, y = a.sample(16, greedy), b.sample(16, greedy)
    for name in ("s_g", "s_sub", "a_g", "r", "g_next", "c_next"):
        assert torch.equal(getattr(x, name), getattr(y, name)), name
    assert x.s_sub.shape == (16, 4) and x.c_next.shape == (16, 3, env.L)
    assert (x.c_next.sum(-1) == 4).all()
    assert ((x.s_sub >= 0) & (x.s_sub < env.L)).all()


def test_successors_follow_the_kernels() -> None:
    """g' from P_g (deterministic in queue) and E[c'] = sum_x c_x P_l[g, a, x] (docs/model.md §2)."""
    env = make_env("queue")
    src = GenerativeSource(env, 10, 4, 20_000, DataConfig("uniform"), seed=0)
    s_g, a_g = torch.tensor([1]), torch.tensor([2])
    s_sub = torch.tensor([[0, 2, 4, 4]])
    g_next, c_next = src.successors(s_g, s_sub, a_g)
    assert (g_next == env.P_g[1, 2].argmax()).all()
    expected = env.P_l[1, 2][s_sub[0]].sum(0)
    torch.testing.assert_close(c_next[0].double().mean(0), expected, atol=0.03, rtol=0)
    batch = src.sample(32)
    r = env.r_g[batch.s_g, batch.a_g] + env.r_l[batch.s_g[:, None], batch.a_g[:, None], batch.s_sub].mean(1)
    torch.testing.assert_close(batch.r, r)


def test_td_target_is_the_sampled_bellman_operator() -> None:
    module = SubsampleQModule(QUEUE, n=10, k=4, algo={"m": 3, "net": {"hidden": 8, "embed_dim": 2}})
    src = GenerativeSource(module.env, 10, 4, 3, DataConfig("simplex"), seed=0)
    b = src.sample(5)
    y = module.td_target(b.r, b.g_next, b.c_next)
    for i in range(5):
        v = [module.target_net.forward_counts(b.g_next[i, j : j + 1], b.c_next[i, j : j + 1]).max() for j in range(3)]
        expected = b.r[i] + module.env.gamma * torch.stack(v).mean()
        torch.testing.assert_close(y[i], expected.to(y.dtype))


def test_checkpoint_rebuilds_the_network(tmp_path) -> None:
    import lightning.pytorch as pl

    module = SubsampleQModule(QUEUE, n=10, k=4, algo={"net": {"hidden": 8, "embed_dim": 2, "pooling": "sum"}})
    trainer = pl.Trainer(max_steps=0, logger=False, enable_checkpointing=False)
    trainer.strategy.connect(module)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    policy = DeepSetsPolicy.from_checkpoint(path, k=3)
    assert policy.k == 3 and policy.net.pooling == "sum"
    torch.testing.assert_close(policy.q_table(), DeepSetsPolicy(module.net, 3).q_table())


def test_metric_tag_constants() -> None:
    assert len(set(M.ALL_TAGS)) == len(M.ALL_TAGS)
    for tag in M.ALL_TAGS:
        prefix, _, name = tag.partition("/")
        assert prefix in {"train", "eval", "charts", "tabular"} and name, tag
    assert M.OPTIMIZED_METRIC in M.HPARAM_METRICS
    assert set(M.HPARAM_METRICS) <= set(M.ALL_TAGS)
    assert (M.TRAIN_TD_LOSS, M.TRAIN_Q_MEAN, M.EVAL_RETURN, M.EVAL_GAP, M.SAMPLES_PER_SECOND) == (
        "train/td_loss",
        "train/q_mean",
        "eval/return",
        "eval/gap",
        "charts/samples_per_second",
    )


@pytest.mark.slow
def test_trained_net_matches_exact_q_on_queue(make_cfg, tmp_path) -> None:
    """queue, n = 10, k = 4: after 1000 steps the DeepSets Q is within 3% (relative to max |Q|)
    of the exact tabular Q everywhere and at visited states, agrees with its greedy action at
    >= 90% of visited states, and its greedy policy's return (common random numbers) is within the
    95% CI of the tabular policy's return, i.e. its gap is within the CI of the tabular gap."""
    cfg = make_cfg(
        "env=queue",
        "k=4",
        "seed=0",
        "logger=none",
        "callbacks=none",
        "eval.reference=none",
        "eval.every=1000",
        "eval.num_initial=2",
        "eval.rollouts=2",
        "algo.max_steps=1000",
        "algo.target_sync=10",
        "algo.optim.lr=3e-3",
        "algo.optim.lr_schedule=cosine",
        "algo.data.state_dist=simplex",
        "trainer=cpu",
        "trainer.enable_progress_bar=false",
    )
    run(cfg)
    policy = DeepSetsPolicy.from_checkpoint(tmp_path / "checkpoints" / "final.ckpt")
    env = make_env("queue")
    q_exact = optimal_q(env, 4).q
    q_net = policy.q_table()
    scale = q_exact.abs().max()
    assert ((q_net - q_exact).abs().max() / scale).item() < 0.03

    tab = QTable(q_exact, 4, env.L)
    src = GenerativeSource(
        env, 10, 4, 1, DataConfig("visited", uniform_frac=0.0, pool_size=256, epsilon=0.0, reset_prob=0.0), seed=3
    )
    for _ in range(30):
        src.advance_pool(tab.act)
    g, x = src.sample_states(2048)
    r = rank_states(x, env.L)
    assert ((q_net[g, r] - q_exact[g, r]).abs().max() / scale).item() < 0.03
    assert (q_net[g, r].argmax(-1) == q_exact[g, r].argmax(-1)).double().mean().item() >= 0.9

    kw = dict(num_initial=16, rollouts=32, seed=7)
    ret_tab, ci_tab = evaluate_return(env, tab, 10, **kw)
    ret_net, _ = evaluate_return(env, policy, 10, **kw)
    assert abs(ret_net - ret_tab) <= ci_tab
    print(
        f"Q rel err {((q_net - q_exact).abs().max() / scale).item():.4f}, "
        f"MC return net {ret_net:.4f} tab {ret_tab:.4f} +- {ci_tab:.4f}"
    )

    # exact gaps V* - V^pi on the n = 10 count MDP (docs/model.md §5)
    s_g, s_l = sample_initial_state(env, 10, 64, make_generator(11))
    v_star = value_at(optimal_value(env, 10), s_g, s_l)
    gap_tab = (v_star - value_at(policy_value(env, 10, tab.greedy(), 4), s_g, s_l)).mean().item()
    gap_net = (v_star - value_at(policy_value(env, 10, policy.greedy(), 4), s_g, s_l)).mean().item()
    print(f"exact gap net {gap_net:.4f} tab {gap_tab:.4f}")
    assert gap_net <= gap_tab + ci_tab
