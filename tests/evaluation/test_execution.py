"""Algorithm 2 execution and Monte Carlo evaluation (docs/model.md §2, §5)."""

import collections
import math

import pytest
import torch

from sqtorch.envs import make_env
from sqtorch.envs.simulator import (
    LookupSampler,
    make_generator,
    sample_categorical,
    sample_subset,
)
from sqtorch.evaluation import compare_mc, evaluate_mc, horizon_for, initial_states
from sqtorch.evaluation import execution as ex
from sqtorch.tabular.counts import num_counts
from sqtorch.tabular.qtable import QTable
from tests.helpers.host_reads import HostReads


class Constant:
    """A policy that ignores its input and always plays ``a``."""

    def __init__(self, a: int, k: int = 1):
        self.a, self.k = a, k

    def act(self, s_g, s_sub):
        assert s_sub.shape == (s_g.shape[0], self.k)
        return torch.full_like(s_g, self.a)


def random_table(env, k, seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(env.G, num_counts(k, env.L), env.A, generator=gen)
    return QTable(q, k, env.L, env.name)


@pytest.fixture(scope="module")
def queue():
    return make_env("queue")


def test_horizon_is_smallest_with_tail_below_1e4():
    for gamma in (0.5, 0.9, 0.95, 0.99):
        H = horizon_for(gamma)
        assert gamma**H <= 1e-4 < gamma ** (H - 1)
    assert horizon_for(0.9) == 88


@pytest.mark.parametrize("n,k", [(5, 2), (6, 5), (7, 1)])  # Floyd, top-k and Floyd branches
def test_subsets_are_uniform_and_without_replacement(n, k):
    idx = sample_subset(n, k, 60_000, make_generator(3))
    s = idx.sort(1).values
    assert (s[:, 1:] > s[:, :-1]).all() and s.min() >= 0 and s.max() < n
    freq = collections.Counter(map(tuple, s.tolist()))
    expected = 60_000 / math.comb(n, k)
    assert len(freq) == math.comb(n, k)
    assert max(abs(v - expected) for v in freq.values()) < 5 * math.sqrt(expected)


def test_reward_counts_all_agents_and_discounts_by_gamma_t(queue):
    n, I, R = 10, 4, 4000
    s_g, s_l = initial_states(queue, n, I, seed=5)
    a = 2
    H1 = evaluate_mc(queue, Constant(a), n, s0=(s_g, s_l), rollouts=3, horizon=1)
    r0 = queue.reward(s_g, s_l, torch.full_like(s_g, a))
    assert torch.allclose(torch.tensor(H1.per_initial, dtype=torch.float64), r0, atol=1e-12)
    # H = 2: r0 + gamma * E r1, with E r1 computed exactly from the one-step kernel over all n.
    H2 = evaluate_mc(queue, Constant(a), n, s0=(s_g, s_l), rollouts=R, horizon=2, keep_returns=True)
    g1 = queue.P_g[s_g, a].argmax(-1)  # deterministic global move
    p1 = queue.P_l[s_g, a][torch.arange(I)[:, None], s_l]  # [I, n, L]
    er1 = queue.r_g[g1, a] + (p1 * queue.r_l[g1, a][:, None, :]).sum(-1).mean(-1)
    exact = r0 + queue.gamma * er1
    se = H2.returns.std(1) / math.sqrt(R)
    mc = torch.tensor(H2.per_initial, dtype=torch.float64)
    assert ((mc - exact).abs() < 4 * se + 1e-12).all()


def test_same_seed_gives_identical_numbers(queue):
    pol = random_table(queue, 3, 0)
    kw = dict(num_initial=4, rollouts=32, horizon=15, seed=7)
    threads = torch.get_num_threads()
    a, b = evaluate_mc(queue, pol, 10, **kw), evaluate_mc(queue, pol, 10, num_threads=1, **kw)
    assert a.to_dict() == b.to_dict() and torch.get_num_threads() == threads
    c = evaluate_mc(queue, pol, 10, **{**kw, "seed": 8})
    assert c.mean != a.mean


def test_chunked_evaluation_is_deterministic(queue):
    pol = random_table(queue, 3, 0)
    kw = dict(num_initial=3, rollouts=8, horizon=10, seed=1, keep_returns=True)
    a = evaluate_mc(queue, pol, 10, max_batch_elems=10, **kw)  # one row per chunk
    b = evaluate_mc(queue, pol, 10, max_batch_elems=10, **kw)
    assert a.returns.shape == (3, 8) and torch.equal(a.returns, b.returns)


def test_common_random_numbers_across_policies(queue, monkeypatch):
    """Different policies (different actions, trajectories) see the same subsets and noise."""
    log = collections.defaultdict(list)
    real_subset, real_step = ex.sample_subset, ex.step

    def subset(n, k, batch, generator):
        log["subset_state"].append(generator.get_state().clone())
        out = real_subset(n, k, batch, generator)
        log["subset"].append(out.clone())
        return out

    def step(env, s_g, s_l, a_g, generator, cdf_g=None, cdf_l=None):
        log["dyn_state"].append(generator.get_state().clone())
        log["actions"].append(a_g.clone())
        return real_step(env, s_g, s_l, a_g, generator, cdf_g, cdf_l)

    monkeypatch.setattr(ex, "sample_subset", subset)
    monkeypatch.setattr(ex, "step", step)
    runs = []
    for pol in (Constant(0, k=3), Constant(2, k=3), random_table(queue, 3, 1)):
        log.clear()
        res = evaluate_mc(queue, pol, 12, num_initial=3, rollouts=5, horizon=12, seed=4)
        runs.append((dict(log), res.mean))
    (base, m0), *others = runs
    for other, m in others:
        assert m != m0
        acts = zip(base["actions"], other["actions"], strict=True)
        assert not all(torch.equal(x, y) for x, y in acts)
        for key in ("subset_state", "subset", "dyn_state"):
            assert len(base[key]) == len(other[key]) == 12
            assert all(torch.equal(x, y) for x, y in zip(base[key], other[key], strict=True)), key


def test_paired_comparison_is_exact_for_identical_policies_and_tighter(queue):
    pol = random_table(queue, 3, 0)
    kw = dict(num_initial=4, rollouts=64, horizon=30, seed=2)
    same = compare_mc(queue, pol, random_table(queue, 3, 0), 10, **kw)
    assert same.mean_diff == 0.0 and same.ci95 == 0.0
    # two policies that differ in a few table entries: paired CI far below the unpaired one
    q = torch.zeros(queue.G, num_counts(3, queue.L), queue.A)
    q[..., 1] = 1.0  # hold the service level
    pol = QTable(q, 3, queue.L, "queue")
    q_near = q.clone()
    q_near[1, :4, 2] = 2.0  # raise it in level 1 when the sampled queues are short
    near = QTable(q_near, 3, queue.L, "queue")
    d = compare_mc(queue, pol, near, 10, **kw)
    unpaired = math.hypot(d.a.ci95, d.b.ci95)
    assert d.ci95 < unpaired / 3
    assert d.mean_diff == pytest.approx(d.a.mean - d.b.mean, abs=1e-9)


def test_result_fields(queue):
    res = evaluate_mc(queue, random_table(queue, 2, 0), 6, num_initial=3, rollouts=4, seed=0)
    d = res.to_dict()
    assert d["horizon"] == 88 and d["k"] == 2 and d["n"] == 6 and d["num_initial"] == 3
    assert d["rollouts"] == 4 and len(d["per_initial"]) == 3 and d["ci95"] > 0
    assert d["mean"] == pytest.approx(sum(d["per_initial"]) / 3)


def test_bad_input_raises_naming_the_field(queue):
    pol = random_table(queue, 3, 0)
    with pytest.raises(ValueError, match=r"k = 3 .* n = 2"):
        evaluate_mc(queue, pol, 2, num_initial=2, rollouts=2)
    with pytest.raises(ValueError, match=r"q has shape"):
        evaluate_mc(make_env("demand_response"), pol, 10, num_initial=2, rollouts=2)
    with pytest.raises(ValueError, match=r"horizon = 0"):
        evaluate_mc(queue, pol, 10, num_initial=2, rollouts=2, horizon=0)
    with pytest.raises(ValueError, match=r"rollouts = 0"):
        evaluate_mc(queue, pol, 10, num_initial=2, rollouts=0)
    with pytest.raises(ValueError, match=r"num_threads = 0"):
        evaluate_mc(queue, pol, 10, num_initial=2, rollouts=2, num_threads=0)
    with pytest.raises(ValueError, match=r"num_initial = 0"):
        evaluate_mc(queue, pol, 10, num_initial=0, rollouts=2)
    with pytest.raises(ValueError, match=r"a_g in \[3, 3\], outside \{0..2\}"):
        evaluate_mc(queue, Constant(3), 10, num_initial=2, rollouts=2)
    s_g, s_l = initial_states(queue, 10, 2, seed=0)
    bad_l = s_l.clone()
    bad_l[1, 3] = queue.L
    with pytest.raises(ValueError, match=r"s_l\[1, 3\] = 5 is outside the state space"):
        evaluate_mc(queue, pol, 10, s0=(s_g, bad_l), rollouts=2)
    with pytest.raises(ValueError, match=r"s_g\[0\] = -1"):
        evaluate_mc(queue, pol, 10, s0=(torch.tensor([-1, 0]), s_l), rollouts=2)
    with pytest.raises(ValueError, match=r"s_l has shape"):
        evaluate_mc(queue, pol, 9, s0=(s_g, s_l), rollouts=2)


@pytest.mark.parametrize("name", ["queue", "demand_response"])
def test_lookup_sampler_draws_exactly_like_inverse_cdf(name):
    env = make_env(name)
    S = LookupSampler.build(env.P_l)
    gen = torch.Generator().manual_seed(0)
    R = env.G * env.A * env.L
    row = torch.randint(R, (200_000,), generator=gen)
    u = torch.rand(200_000, generator=gen, dtype=torch.float64)
    assert torch.equal(S.sample(row, u), sample_categorical(S.cdf_cols, row, u))
    # uniforms exactly on every CDF boundary (and just below it)
    cdf = S.cdf_cols.T.reshape(-1).clamp(max=1 - 2**-53)
    rows = torch.arange(R).repeat_interleave(S.cdf_cols.shape[0])
    for v in (cdf, torch.nextafter(cdf, torch.zeros_like(cdf)).clamp(min=0)):
        assert torch.equal(S.sample(rows, v), sample_categorical(S.cdf_cols, rows, v))


@pytest.mark.parametrize("policy", ["tabular", "deepsets"])
def test_step_loop_reads_nothing_on_the_host_in_sync_free_mode(queue, monkeypatch, policy):
    """The CUDA branches of the Monte Carlo step loop, run on the CPU: host reads do not grow with the horizon."""
    from sqtorch import runtime
    from sqtorch.neural import DeepSetsPolicy, DeepSetsQ, NetConfig

    torch.manual_seed(0)
    if policy == "tabular":
        pol = QTable(torch.randn(queue.G, num_counts(4, queue.L), queue.A, dtype=torch.float64), 4, queue.L, "queue")
    else:
        pol = DeepSetsPolicy(DeepSetsQ(queue.G, queue.L, queue.A, NetConfig(hidden=8, embed_dim=4)), 4)
    monkeypatch.setattr(runtime, "sync_free", lambda t: True)  # as on CUDA
    evaluate_mc(queue, pol, 50, num_initial=2, rollouts=3, horizon=1, seed=0)  # fills the per-env caches
    reads = []
    for horizon in (5, 25):
        with HostReads() as mode:
            evaluate_mc(queue, pol, 50, num_initial=2, rollouts=3, horizon=horizon, seed=0)
        reads.append(mode.count)
    assert reads[0] == reads[1], reads  # set-up and the first step's action check only
    monkeypatch.undo()  # on the CPU the per-step checks stay (they cost nothing there)
    with HostReads() as mode:
        evaluate_mc(queue, pol, 50, num_initial=2, rollouts=3, horizon=25, seed=0)
    assert mode.count > reads[1]
