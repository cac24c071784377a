"""The simulator protocol (docs/model.md §1.1), check_simulator, the tcl env (§4.5) and the example."""

import hashlib
import math
import runpy
from pathlib import Path

import pytest
import torch

from sqtorch.envs import LocalSpace, Simulator, build_env, check_simulator, make_env
from sqtorch.envs.simulator import cdf_columns, make_generator, sample_initial_state, sample_subset, step
from sqtorch.evaluation import compare_mc, evaluate_mc
from sqtorch.evaluation import execution as ex
from sqtorch.runtime import derive_seed
from sqtorch.tabular.counts import num_counts
from sqtorch.tabular.qtable import QTable

ROOT = Path(__file__).resolve().parents[2]

# evaluate_mc returns (SHA-256 prefix of the float64 bytes) of the tensor envs, recorded before the
# simulator protocol existed: the protocol changed no draw.
PINNED = [
    ("queue", {}, "ceedbdd8b947a11b"),
    ("queue", {"Q": 50}, "b709a3d7dd615f51"),
    ("queue", {"Q": 300}, "27dbcd2585adfb26"),  # L >= 255: the inverse-CDF path
    ("demand_response", {}, "42e31ec107cdc7a9"),
    ("demand_response_script", {}, "4070bbf9b3318e31"),
    ("queue_types", {}, "122a76a3d1e9f67f"),  # non-uniform init_l
]
KW = dict(num_initial=3, rollouts=4, horizon=12, seed=3, keep_returns=True, max_batch_elems=40)


def table(env, k=2):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(env.G, num_counts(k, env.L), env.A, generator=gen, dtype=torch.float64)
    return QTable(q, k, env.L, env.name)


class Wrapped(Simulator):
    """A GlobalLocalMDP seen only through the protocol methods (the generic path of evaluate_mc)."""

    def __init__(self, env):
        self.env, self.G, self.A, self.gamma, self.local, self.name = env, env.G, env.A, env.gamma, env.local, env.name

    def initial(self, n, batch, generator):
        return self.env.initial(n, batch, generator)

    def global_step(self, s_g, a_g, generator):
        return self.env.global_step(s_g, a_g, generator)

    def local_step(self, s_g, s_l, a_g, generator):
        return self.env.local_step(s_g, s_l, a_g, generator)

    def reward(self, s_g, s_l, a_g):
        return self.env.reward(s_g, s_l, a_g)


def reference_returns(env, policy, n, num_initial, rollouts, horizon, seed):
    """Algorithm 2 written out with the tensor step of sqtorch/envs/simulator.py (no protocol)."""
    s_g0, s_l0 = sample_initial_state(env, n, num_initial, make_generator(0))
    rows = torch.arange(num_initial * rollouts) // rollouts
    s_g, s_l = s_g0[rows], s_l0[rows]
    gen_sub, gen_dyn = make_generator(derive_seed(seed, 1)), make_generator(derive_seed(seed, 2))
    ret, disc = torch.zeros(len(rows), dtype=torch.float64), 1.0
    for _ in range(horizon):
        a = policy.act(s_g, s_l.gather(1, sample_subset(n, policy.k, len(rows), gen_sub)))
        s_g, s_l, r = step(env, s_g, s_l, a, gen_dyn, cdf_columns(env.P_g), cdf_columns(env.P_l))
        ret += disc * r
        disc *= env.gamma
    return ret.reshape(num_initial, rollouts)


@pytest.mark.parametrize("name,params,digest", PINNED)
def test_tensor_envs_give_the_same_numbers_through_the_protocol(name, params, digest):
    env = build_env(name, **params)
    check_simulator(env)
    pol = table(env)
    fast = evaluate_mc(env, pol, 9, **KW).returns
    assert hashlib.sha256(fast.numpy().tobytes()).hexdigest()[:16] == digest
    generic = evaluate_mc(Wrapped(env), pol, 9, **KW).returns  # reward, local_step, global_step
    assert torch.equal(generic, fast)
    whole = evaluate_mc(env, pol, 9, **{**KW, "max_batch_elems": 1 << 22}).returns  # one chunk, as the reference
    assert torch.equal(reference_returns(env, pol, 9, 3, 4, 12, 3), whole)


def test_halves_draw_what_the_fused_step_draws():
    env = make_env("demand_response")
    s_g, s_l = env.initial(40, 6, make_generator(1))
    a = torch.randint(env.A, (6,), generator=make_generator(2))
    g1, g2 = make_generator(5), make_generator(5)
    fused = env.step(s_g, s_l, a, g1)
    s_l2 = env.local_step(s_g, s_l, a, g2)
    halves = (env.global_step(s_g, a, g2), s_l2)
    assert torch.equal(fused[0], halves[0]) and torch.equal(fused[1], halves[1])
    assert torch.allclose(fused[2], env.reward(s_g, s_l, a), rtol=0, atol=1e-12)
    assert torch.equal(g1.get_state(), g2.get_state())


# --------------------------------------------------------------------------------------- bad simulators


class Tiny(Simulator):
    """A correct 2-state finite simulator; the subclasses below each break one rule."""

    G, A, gamma, name = 2, 2, 0.9, "tiny"
    local = LocalSpace.finite(3)

    def initial(self, n, batch, generator):
        return torch.randint(2, (batch,), generator=generator), torch.randint(3, (batch, n), generator=generator)

    def global_step(self, s_g, a_g, generator):
        return (s_g + (torch.rand(s_g.shape, generator=generator) < 0.5)) % 2

    def local_step(self, s_g, s_l, a_g, generator):
        return (s_l + a_g[:, None] * (torch.rand(s_l.shape, generator=generator) < 0.5)) % 3

    def reward(self, s_g, s_l, a_g):
        return s_g.double() - s_l.double().mean(1)


class Cont(Simulator):
    G, A, gamma, name = 1, 2, 0.9, "cont"
    local = LocalSpace.continuous(2, low=(0.0, 0.0), high=(1.0, 1.0))

    def initial(self, n, batch, generator):
        return torch.zeros(batch, dtype=torch.int64), torch.rand(batch, n, 2, generator=generator)

    def global_step(self, s_g, a_g, generator):
        return s_g

    def local_step(self, s_g, s_l, a_g, generator):
        return (s_l + 0.1 * torch.rand(s_l.shape, generator=generator) * a_g[:, None, None]) % 1.0

    def reward(self, s_g, s_l, a_g):
        return s_l[..., 0].double().mean(1)


class WrongShape(Tiny):
    def initial(self, n, batch, generator):
        s_g, s_l = super().initial(n, batch, generator)
        return s_g, s_l[:, :-1]


class FloatStates(Tiny):
    def local_step(self, s_g, s_l, a_g, generator):
        return super().local_step(s_g, s_l, a_g, generator).float()


class NaNReward(Tiny):
    def reward(self, s_g, s_l, a_g):
        r = super().reward(s_g, s_l, a_g)
        r[-1] = math.nan
        return r


class OutOfSpace(Tiny):
    def local_step(self, s_g, s_l, a_g, generator):
        return super().local_step(s_g, s_l, a_g, generator) + 1  # 3 is not a state


class OutOfBounds(Cont):
    def local_step(self, s_g, s_l, a_g, generator):
        return super().local_step(s_g, s_l, a_g, generator) * 2


class GlobalRNG(Tiny):
    def global_step(self, s_g, a_g, generator):
        return (s_g + (torch.rand(s_g.shape) < 0.5)) % 2  # torch's global generator


class ActionDependentDraws(Tiny):
    def local_step(self, s_g, s_l, a_g, generator):
        extra = torch.rand(int(a_g.sum()), generator=generator)  # a draw count that depends on the actions
        return super().local_step(s_g, s_l, a_g, generator) + 0 * extra.numel()


class InconsistentStep(Tiny):
    def step(self, s_g, s_l, a_g, generator):
        s_g2, s_l2, r = super().step(s_g, s_l, a_g, generator)
        return s_g2, s_l2, r + 1


@pytest.mark.parametrize("sim,match", [
    (WrongShape(), r"tiny\.initial: s_l has shape \[3, 4\], expected \[3, 5\]"),
    (FloatStates(), r"tiny\.local_step \(step 0\): s_l' has dtype torch\.float32, expected torch\.int64"),
    (NaNReward(), r"tiny\.reward\[2\] = nan is not finite"),
    (OutOfSpace(), r"tiny\.local_step \(step 0\): s_l'\[\d+, \d+\] = 3 is outside the local state space \{0\.\.2\}"),
    (OutOfBounds(), r"cont\.local_step \(step 0\): s_l'\[.*\] = .* is outside the local state space"),
    (GlobalRNG(), r"tiny\.global_step gives different results for the same generator seed.*generator argument"),
    (ActionDependentDraws(), r"number of random numbers drawn .* depends on the actions"),
    (InconsistentStep(), r"tiny\.step differs from reward, local_step then global_step"),
    (object(), r"object is not a sqtorch\.envs\.Simulator"),
])
def test_check_simulator_names_what_is_wrong(sim, match):
    with pytest.raises(ValueError, match=match):
        check_simulator(sim)


def test_check_simulator_declarations_and_evaluate_mc_checks_first():
    check_simulator(Tiny())
    check_simulator(Cont())
    bad = Tiny()
    bad.gamma = 1.0
    with pytest.raises(ValueError, match=r"tiny\.gamma = 1\.0 is outside the allowed range \(0, 1\)"):
        check_simulator(bad)
    bad = Tiny()
    bad.local = 3
    with pytest.raises(ValueError, match=r"tiny\.local = 3 must be a LocalSpace"):
        check_simulator(bad)
    with pytest.raises(ValueError, match=r"low\[0\] = 2\.0 > high\[0\] = 1\.0"):
        LocalSpace.continuous(1, low=2.0, high=1.0)

    class Never:
        k = 1

        def act(self, s_g, s_sub):
            raise AssertionError("evaluate_mc ran a bad simulator")

    with pytest.raises(ValueError, match=r"tiny\.reward\[2\] = nan"):
        evaluate_mc(NaNReward(), Never(), 10, num_initial=2, rollouts=2)
    rng = torch.random.get_rng_state()
    check_simulator(Tiny())
    assert torch.equal(torch.random.get_rng_state(), rng)  # the global generators are restored


def test_finite_user_simulator_runs_a_qtable():
    sim = Tiny()
    q = QTable(torch.randn(2, num_counts(2, 3), 2, generator=torch.Generator().manual_seed(0)), 2, 3, "tiny")
    a = evaluate_mc(sim, q, 6, num_initial=2, rollouts=3, horizon=5, seed=1)
    b = evaluate_mc(sim, q, 6, num_initial=2, rollouts=3, horizon=5, seed=1)
    assert a.to_dict() == b.to_dict()


# ------------------------------------------------------------------------------------------------- tcl


@pytest.fixture(scope="module")
def tcl():
    return make_env("tcl")


def test_tcl_dynamics_and_reward_by_hand(tcl):
    sim = build_env("tcl", sigma=0.0)
    theta = torch.tensor([[19.5, 20.0, 20.0, 20.4, 21.0]])
    mode = torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.0]])
    s_l = torch.stack((theta, mode), -1)
    s_g, a = torch.tensor([2]), torch.tensor([1])  # high price, offset 0: set-point 20, deadband 19.75 .. 20.25
    on = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0])  # below -> off; inside -> keep; above -> on
    nxt = sim.local_step(s_g, s_l, a, make_generator(0))[0]
    a_th = math.exp(-(5 / 60) / (10 * 2))
    expect = a_th * theta[0].double() + (1 - a_th) * (32 - on.double() * 2 * 14)
    assert torch.allclose(nxt[:, 0].double(), expect, atol=1e-4) and torch.equal(nxt[:, 1], on)
    r = sim.reward(s_g, s_l, a)
    expect_r = -0.5 * (14 / 2.5) * (5 / 60) * on.double().mean() - 0.02 * ((theta[0].double() - 20) ** 2).mean()
    assert torch.allclose(r, expect_r[None], atol=1e-6)
    hot = sim.local_step(s_g, s_l, torch.tensor([2]), make_generator(0))[0]  # offset +2: all off
    assert torch.equal(hot[:, 1], torch.zeros(5))


def test_tcl_price_chain_frequencies(tcl):
    B = 60_000
    s_g = torch.arange(B) % 3
    nxt = tcl.global_step(s_g, torch.zeros(B, dtype=torch.int64), make_generator(4))
    freq = torch.zeros(3, 3)
    freq.index_put_((s_g, nxt), torch.ones(B), accumulate=True)
    freq /= freq.sum(1, keepdim=True)
    assert (freq - tcl.P_g.float()).abs().max() < 5 * math.sqrt(0.9 * 0.1 / (B / 3))


class MeanTemperature:
    """Offset index 2 (raise) when the sampled units are cool, else 1."""

    def __init__(self, k, threshold=20.0):
        self.k, self.threshold = k, threshold

    def act(self, s_g, s_sub):
        assert s_sub.shape == (s_g.shape[0], self.k, 2) and s_sub.dtype == torch.float32
        return torch.where(s_sub[..., 0].mean(1) < self.threshold, 2, 1)


def test_tcl_crn_comparison_and_continuous_subsets(tcl, monkeypatch):
    kw = dict(num_initial=4, rollouts=16, horizon=40, seed=2)
    same = compare_mc(tcl, MeanTemperature(4), MeanTemperature(4), 30, **kw)
    assert same.mean_diff == 0.0 and same.ci95 == 0.0
    d = compare_mc(tcl, MeanTemperature(4), MeanTemperature(4, threshold=20.3), 30, **kw)
    assert d.mean_diff != 0.0 and d.ci95 < math.hypot(d.a.ci95, d.b.ci95) / 2
    seen = []
    real = ex.subsampled_states

    def spy(s_l, n, k, generator):
        out = real(s_l, n, k, generator)
        seen.append((s_l, out))
        return out

    monkeypatch.setattr(ex, "subsampled_states", spy)
    evaluate_mc(tcl, MeanTemperature(3), 30, num_initial=2, rollouts=2, horizon=3)
    for s_l, sub in seen:  # every sampled (theta, mode) row is one agent's row
        assert (sub[:, :, None, :] == s_l[:, None, :, :]).all(-1).any(-1).all()


def test_a_count_table_is_refused_on_continuous_states(tcl):
    with pytest.raises(ValueError, match=r"simulator 'tcl' has continuous local states .* it has no L"):
        evaluate_mc(tcl, table(make_env("queue")), 10, num_initial=2, rollouts=2)


def test_tcl_reproducible_in_chunks(tcl):
    kw = dict(num_initial=2, rollouts=3, horizon=6, seed=5, keep_returns=True, max_batch_elems=40)  # a row a chunk
    a = evaluate_mc(tcl, MeanTemperature(2), 20, **kw)
    b = evaluate_mc(tcl, MeanTemperature(2), 20, **kw)
    assert a.returns.shape == (2, 3) and torch.equal(a.returns, b.returns)
    assert evaluate_mc(tcl, MeanTemperature(2), 20, **{**kw, "seed": 6}).mean != a.mean


def test_tcl_step_loop_reads_nothing_on_the_host_in_sync_free_mode(tcl, monkeypatch):
    from sqtorch import runtime
    from tests.helpers.host_reads import HostReads

    pol = MeanTemperature(4)
    evaluate_mc(tcl, pol, 50, num_initial=2, rollouts=3, horizon=1, seed=0)
    monkeypatch.setattr(runtime, "sync_free", lambda t: True)
    reads = []
    for horizon in (5, 25):
        with HostReads() as mode:
            evaluate_mc(tcl, pol, 50, num_initial=2, rollouts=3, horizon=horizon, seed=0)
        reads.append(mode.count)
    assert reads[0] == reads[1], reads


def test_example_simulator_runs():
    mod = runpy.run_path(str(ROOT / "examples" / "my_simulator.py"))
    sim = mod["EVFleet"]()
    check_simulator(sim)
    d = compare_mc(sim, mod["LowBatteryAware"]([2, 0], k=5), mod["Cap"]([2, 0]), n=40, num_initial=2, rollouts=4,
                   horizon=20)
    assert math.isfinite(d.mean_diff) and d.a.n == 40
