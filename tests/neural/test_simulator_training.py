"""DeepSets on any simulator (docs/model.md §1.1, §3): the protocol sampler's law, trajectory-only items,
continuous-state networks, training, resume and refusals through train.py's config path."""

from __future__ import annotations

import json

import pytest
import torch

from sqtorch import metrics as M
from sqtorch.envs import TCLSimulator, build_env
from sqtorch.experiment import ConfigError, run, validate_config
from sqtorch.neural.data import DataConfig
from sqtorch.neural.deepsets import DeepSetsQ, NetConfig
from sqtorch.neural.policy import DeepSetsPolicy
from sqtorch.neural.sim_data import SimulatorSource, simulator_scales
from tests.helpers.opaque import Opaque

pytestmark = pytest.mark.usefixtures("one_thread")
OPAQUE = ("env=queue", "env._target_=tests.helpers.opaque.opaque_queue")
TCL_SMALL = ("env=tcl", "n=40", "k=4")


def test_successors_follow_the_kernels_through_the_protocol() -> None:
    """Through local_step/global_step only: g' ~ P_g and E[c'] = sum_x c_x P_l[g, a, x] (docs/model.md §2)."""
    env = build_env("queue")
    src = SimulatorSource(Opaque(env), 10, 4, 20_000, DataConfig("uniform"), seed=0)
    s_g, a_g, s_sub = torch.tensor([1]), torch.tensor([2]), torch.tensor([[0, 2, 4, 4]])
    g_next, x_next = src.successors(s_g, s_sub, a_g)
    assert (g_next == env.P_g[1, 2].argmax()).all()
    counts = torch.nn.functional.one_hot(x_next[0], env.L).sum(1).double()  # [m, L]
    torch.testing.assert_close(counts.mean(0), env.P_l[1, 2][s_sub[0]].sum(0), atol=0.03, rtol=0)
    b = src.sample(64)
    r = env.r_g[b.s_g, b.a_g] + env.r_l[b.s_g[:, None], b.a_g[:, None], b.s_sub].mean(1)
    torch.testing.assert_close(b.r, r)
    assert b.c_next.shape == (64, 20_000, env.L) and (b.c_next.sum(-1) == 4).all() and b.x_next is None


def test_trajectory_items_are_observed_transitions() -> None:
    """Noise-free TCL with a frozen price: each item's successor is the dynamics applied to it (same agents)."""
    sim = TCLSimulator(sigma=0.0, price_stay=1.0)
    src = SimulatorSource(sim, 30, 5, 1, DataConfig("trajectory", pool_size=16, epsilon=0.5, reset_prob=0.2), seed=1)
    for _ in range(3):
        b = src.sample(64, lambda g, x: (x[..., 0].mean(1) > 20).long() * 2)
        assert b.x_next.shape == (64, 1, 5, 2) and b.c_next is None
        torch.testing.assert_close(b.x_next[:, 0], sim.local_step(b.s_g, b.s_sub, b.a_g, torch.Generator()))
        assert torch.equal(b.g_next[:, 0], b.s_g)
        torch.testing.assert_close(b.r, sim.reward(b.s_g, b.s_sub, b.a_g))


def test_simulator_source_is_seeded_and_resumable() -> None:
    sim = TCLSimulator()
    for dist, m in (("visited", 3), ("trajectory", 1)):
        a, b = (SimulatorSource(sim, 20, 4, m, DataConfig(dist, pool_size=8), seed=5) for _ in range(2))
        greedy = DeepSetsPolicy(DeepSetsQ.for_env(sim, NetConfig(hidden=8)), 4).act
        a.sample(16, greedy)
        b.load_state_dict(a.state_dict())
        x, y = a.sample(16, greedy), b.sample(16, greedy)
        for name in ("s_g", "s_sub", "a_g", "r", "g_next", "x_next"):
            assert torch.equal(getattr(x, name), getattr(y, name)), (dist, name)


def test_continuous_deepsets_is_a_function_of_the_empirical_distribution() -> None:
    """Permuting the agents, or repeating each of them, leaves Q unchanged (mean pooling: one net for every k)."""
    sim = TCLSimulator()
    net = DeepSetsQ.for_env(sim, NetConfig(hidden=16)).double()
    gen = torch.Generator().manual_seed(0)
    s_g, x = sim.initial(6, 8, gen)
    q = net.q_states(s_g, x.double())
    torch.testing.assert_close(net.q_states(s_g, x.double()[:, torch.randperm(6)]), q)
    torch.testing.assert_close(net.q_states(s_g, x.double().repeat(1, 2, 1)), q)
    r_max, loc, scale = simulator_scales(sim)
    assert r_max > 0 and loc.shape == scale.shape == (2,) and (scale > 0).all()
    assert abs(float(loc[0]) - sim.theta_set) < 3.0  # indoor temperatures around the set-point


def test_deepsets_trains_on_a_continuous_simulator_and_its_policy_reloads(make_cfg, tmp_path) -> None:
    metrics = run(make_cfg(*TCL_SMALL, "debug=fast"))
    assert metrics[M.TRAIN_GLOBAL_STEP] == 40 and M.EVAL_RETURN in metrics
    policy = DeepSetsPolicy.from_checkpoint(tmp_path / "checkpoints" / "final.ckpt")
    sim = build_env("tcl")
    s_g, s_l = sim.initial(4, 3, torch.Generator().manual_seed(0))
    assert policy.act(s_g, s_l).shape == (3,)
    assert json.loads((tmp_path / "metrics.json").read_text())[M.EVAL_RETURN] == pytest.approx(metrics[M.EVAL_RETURN])
    with pytest.raises(ValueError, match=r"\[B, k, d\]"):
        policy.act(s_g, s_l[..., 0])


@pytest.mark.parametrize("dist", ["visited", "trajectory"])
@pytest.mark.slow
def test_simulator_run_resumes_bit_for_bit(make_cfg, tmp_path, dist) -> None:
    from lightning.pytorch import Callback

    class Kill(Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.global_step == 27:
                raise RuntimeError("killed")

    common = (*TCL_SMALL, "debug=fast", "logger=none", f"algo.data.state_dist={dist}", "seed=3")
    common += ("algo.m=1",) if dist == "trajectory" else ()
    full = run(make_cfg(*common, out=tmp_path / "full"))
    with pytest.raises(RuntimeError, match="killed"):
        run(make_cfg(*common, out=tmp_path / "killed"), extra_callbacks=[Kill()])
    ckpt = tmp_path / "killed" / "checkpoints" / "step-20.ckpt"
    resumed = run(make_cfg(*common, f"ckpt_path='{ckpt}'", out=tmp_path / "killed"))
    for key in (M.EVAL_RETURN, M.TRAIN_SAMPLES, M.TRAIN_GLOBAL_STEP):
        assert resumed[key] == full[key], key
    a = torch.load(tmp_path / "full/checkpoints/final.ckpt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "killed/checkpoints/final.ckpt", weights_only=False)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (("algo=tabular",), r"tabular learner needs finite local states; env 'tcl'.* set algo.bins"),
        (("algo=tabular", "algo.bins=4", "algo.m=exact"), r"algo.m = 'exact' needs kernel tensors"),
        (("algo=sb3_ppo",), r"env 'tcl' has continuous local states .* set algo.bins="),
        (("algo=tabular_mfq",), r"algo = 'tabular_mfq' does not fit env 'tcl'"),
        (("algo=fixed", "algo.actions=[0,1]"), r"algo.actions has 2 entries; the env has G = 3"),
        (("algo.data.state_dist=simplex",), r"algo.data.state_dist = 'simplex' needs finite local states"),
        (("algo.data.state_dist=trajectory",), r"algo.m = 8: trajectory data .* set algo.m=1"),
        (("env.sigma=-1",), r"sigma = -1.* outside the allowed range"),
    ],
)
def test_simulator_runs_are_refused_in_one_line_before_any_file(make_cfg, tmp_path, overrides, match) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        validate_config(make_cfg(*TCL_SMALL, *overrides, out=tmp_path / "run"))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_a_broken_simulator_is_named_before_training(make_cfg, tmp_path) -> None:
    cfg = make_cfg("env=tcl", "env._target_=tests.helpers.opaque.nan_reward_tcl", "n=20", out=tmp_path / "run")
    with pytest.raises(ConfigError, match=r"tcl.reward.*not finite"):
        validate_config(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_trained_on_the_protocol_path_matches_the_exact_q(make_cfg, tmp_path) -> None:
    """queue n = 10, k = 4 behind the protocol (the learner sees no tensors): after 1000 steps the
    greedy policy agrees with the exact tabular Q's at >= 90% of the table (the math, not our output)."""
    from sqtorch.tabular.exact import optimal_q

    run(make_cfg(*OPAQUE, "k=4", "logger=none", "callbacks=none", "eval.reference=none", "eval.every=1000",
                 "eval.num_initial=2", "eval.rollouts=2", "algo.max_steps=1000", "algo.target_sync=10",
                 "algo.data.state_dist=simplex", "trainer=cpu", "trainer.enable_progress_bar=false"))
    policy = DeepSetsPolicy.from_checkpoint(tmp_path / "checkpoints" / "final.ckpt")
    q_exact = optimal_q(build_env("queue"), 4).q
    q_net = policy.q_table()
    assert ((q_net - q_exact).abs().max() / q_exact.abs().max()).item() < 0.05
    assert (q_net.argmax(-1) == q_exact.argmax(-1)).double().mean().item() >= 0.9


def test_tabular_on_histogram_bins_trains_on_a_continuous_env_and_reloads(make_cfg, tmp_path) -> None:
    from sqtorch.experiment.registry import get_algorithm

    metrics = run(make_cfg(*TCL_SMALL, "algo=tabular", "algo.bins=4", "algo.m=5", "k=2", "debug=fast"))
    assert M.EVAL_RETURN in metrics and M.EVAL_GAP not in metrics  # a simulator: Monte Carlo only
    cfg = {"env": {"_target_": "sqtorch.envs.tcl"}, "algo": {"m": 5, "bins": 4}, "k": 2}
    loaded = get_algorithm("tabular").load(tmp_path, cfg, json.loads((tmp_path / "metrics.json").read_text()))
    s_g, s_l = build_env("tcl").initial(2, 5, torch.Generator().manual_seed(0))
    assert loaded.policy.act(s_g, s_l).shape == (5,) and loaded.label == "tabular m=5 bins=4"
