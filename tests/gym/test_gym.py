"""Gymnasium env / vector env (sqtorch.gym) and the SB3 baselines (sqtorch.baselines.sb3)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

gymnasium = pytest.importorskip("gymnasium")

from gymnasium.utils.env_checker import check_env  # noqa: E402
from gymnasium.vector import AutoresetMode  # noqa: E402

from sqtorch.envs import make_env  # noqa: E402
from sqtorch.gym import GlobalLocalEnv, GlobalLocalVectorEnv, count_features  # noqa: E402
from sqtorch.tabular.counts import counts_of, num_counts, rank_states  # noqa: E402


def rollout(env, actions, seed):
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for a in actions:
        obs, r, term, trunc, _ = env.step(a)
        out.append((obs, r, term, trunc))
    return out


def same(a, b) -> bool:
    """Two rollouts (first obs, then (obs, r, terminated, truncated) per step) are identical."""
    flat = lambda xs: [y for x in xs for y in (x if isinstance(x, tuple) else (x,))]  # noqa: E731
    return all(np.array_equal(x, y) for x, y in zip(flat(a), flat(b), strict=True))


@pytest.mark.parametrize(
    "env_id, kwargs",
    [
        ("sqtorch/Queue-v0", dict(n=6, obs="counts")),
        ("sqtorch/Queue-v0", dict(n=6, obs="subsample", k=3)),
        ("sqtorch/Queue-v0", dict(n=6, obs="agents")),
        ("sqtorch/DemandResponse-v0", dict(n=5, obs="subsample", k=2, horizon=7)),
    ],
)
def test_check_env_passes_without_warnings(one_thread, env_id, kwargs):
    env = gymnasium.make(env_id, render_mode="ansi", **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    assert [str(w.message) for w in caught] == []


def test_registered_ids_and_kwargs(one_thread):
    spec = gymnasium.spec("sqtorch/Queue-v0")
    assert {"Q", "G", "mu_min", "mu_max", "lam", "h", "b", "c", "s", "gamma"} <= set(spec.kwargs)
    env = gymnasium.make("sqtorch/Queue-v0", n=3, Q=6, lam=0.3)
    assert env.unwrapped.mdp.L == 7 and env.unwrapped.mdp.params["lam"] == 0.3
    assert env.observation_space.shape == (4 + 7,)
    env = gymnasium.make("sqtorch.gym:sqtorch/DemandResponseScript-v0", n=2)
    assert env.unwrapped.mdp.name == "demand_response_script"
    env = gymnasium.make("sqtorch/GlobalLocal-v0", mdp=make_env("queue", Q=2), n=2)
    assert env.unwrapped.mdp.L == 3
    venv = gymnasium.make_vec("sqtorch/DemandResponse-v0", num_envs=3, n=4, obs="subsample", k=2)
    assert isinstance(venv, GlobalLocalVectorEnv) and venv.observation_space.shape == (3, 5 + 25)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP


def test_envs_package_does_not_import_gymnasium():
    code = "import sys, sqtorch.envs; assert 'gymnasium' not in sys.modules, 'gymnasium imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(obs="pixels"), "obs = 'pixels'"),
        (dict(obs="subsample"), "k = None is outside the allowed range 1 <= k <= n = 6 .obs = 'subsample' needs"),
        (dict(obs="subsample", k=7), "k = 7 is outside the allowed range 1 <= k <= n = 6"),
        (dict(obs="counts", k=2), "k = 2 is only used with obs = 'subsample'"),
        (dict(n=0), "n = 0 is outside the allowed range n >= 1"),
        (dict(horizon=0), "horizon = 0 is outside"),
        (dict(lamda=0.3), r"env.lamda is not a parameter of queue\(Q, G, "),
        (dict(mdp="qeueu"), "env = 'qeueu' is unknown"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GlobalLocalEnv(**{"mdp": "queue", "n": 6, **kwargs})


def test_bad_action_and_reset_state_are_named(one_thread):
    env = GlobalLocalEnv("queue", n=3)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"expected one state \(scalar / \[n\] = \[3\]\)"):
        env.reset(options={"s_g": 0, "s_l": [0, 1]})
    with pytest.raises(ValueError, match=r"options\['s_l'\] has values outside the state space \{0..4\}"):
        env.reset(options={"s_g": 0, "s_l": [0, 1, 5]})
    env.reset(options={"s_g": 2, "s_l": [0, 1, 4]})
    assert int(env.state[0]) == 2 and env.state[1].tolist() == [0, 1, 4]
    with pytest.raises(ValueError, match=r"action = 3 is outside the allowed range \{0..2\}"):
        env.step(3)


def test_observation_encodings_match_state(one_thread):
    for obs in ("counts", "agents"):
        env = GlobalLocalEnv("demand_response", n=9, obs=obs)
        o, _ = env.reset(seed=3)
        for _ in range(3):
            s_g, s_l = env.state
            if obs == "agents":
                assert np.array_equal(o, np.concatenate([[int(s_g)], s_l.numpy()]))
            else:
                want = np.zeros(5 + 25, dtype=np.float32)
                want[int(s_g)] = 1
                want[5:] = (counts_of(s_l, 25) / 9).numpy()
                assert o.dtype == np.float32 and np.array_equal(o, want)
            o, *_ = env.step(env.action_space.sample())
    env = GlobalLocalEnv("queue", n=50, obs="subsample", k=4)
    o, _ = env.reset(seed=0)
    assert np.isclose(o[4:].sum(), 1) and set(np.round(o[4:] * 4, 6)) <= {0, 1, 2, 3, 4}


def test_seeding_reproducible(one_thread):
    actions = np.random.default_rng(0).integers(0, 3, size=30)
    make = lambda: GlobalLocalEnv("queue", n=8, obs="subsample", k=3, horizon=10)  # noqa: E731
    a, b = rollout(make(), actions, seed=5), rollout(make(), actions, seed=5)
    assert same(a, b)
    assert not same(a, rollout(make(), actions, seed=6))
    # reset() without a seed continues the seeded stream: same across two envs, new episode
    e1, e2 = make(), make()
    e1.reset(seed=5), e2.reset(seed=5)
    first = e1.state[1]
    o1, o2 = e1.reset()[0], e2.reset()[0]
    assert np.array_equal(o1, o2) and torch.equal(e1.state[1], e2.state[1])
    assert not torch.equal(first, e1.state[1])


def test_vector_env_with_one_env_matches_single_env_exactly(one_thread):
    H, kw = 3, dict(mdp="queue", n=7, obs="subsample", k=3)
    actions = np.random.default_rng(1).integers(0, 3, size=10)
    single = GlobalLocalEnv(horizon=H, **kw)
    vec = GlobalLocalVectorEnv(num_envs=1, horizon=H, **kw)
    o_s, _ = single.reset(seed=11)
    o_v, _ = vec.reset(seed=11)
    assert np.array_equal(o_s, o_v[0])
    t = 0
    for a in actions:
        o_s, r_s, _, tr_s, _ = single.step(int(a))
        o_v, r_v, te_v, tr_v, _ = vec.step(np.array([a]))
        assert np.array_equal(o_s, o_v[0]) and r_s == r_v[0] and tr_s == tr_v[0] and not te_v[0]
        assert torch.equal(single.state[1], vec.state[1][0])
        t += 1
        if tr_s:  # single env: reset(); vector env (next-step autoreset): one step that resets
            o_s, _ = single.reset()
            o_v, r_v, _, tr_v, _ = vec.step(np.array([0]))
            assert np.array_equal(o_s, o_v[0]) and r_v[0] == 0 and not tr_v[0]
    assert t == len(actions)


def test_reward_is_full_system_reward(one_thread):
    env = GlobalLocalVectorEnv(num_envs=16, mdp="demand_response", n=7, obs="counts")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        s_g, s_l = env.state
        a = rng.integers(0, 3, size=16)
        _, r, *_ = env.step(a)
        want = env.mdp.reward(s_g, s_l, torch.as_tensor(a))
        assert np.allclose(r, want.numpy(), rtol=0, atol=1e-12)
    single = GlobalLocalEnv("queue", n=5)
    single.reset(seed=2)
    s_g, s_l = single.state
    _, r, *_ = single.step(2)
    assert r == pytest.approx(float(single.mdp.reward(s_g[None], s_l[None], torch.tensor([2]))[0]), abs=1e-12)


def test_vector_env_dynamics_in_distribution(one_thread):
    """From one fixed state, B rows' next counts average to sum_x C_x P_l[g, a, x, :]."""
    B, n = 4096, 6
    env = GlobalLocalVectorEnv(num_envs=B, mdp="queue", n=n, obs="counts")
    s_l = np.array([0, 1, 1, 2, 4, 4])
    env.reset(seed=0, options={"s_g": 1, "s_l": s_l})
    a = 2
    obs, *_ = env.step(np.full(B, a))
    next_counts = obs[:, 4:] * n
    mdp = env.mdp
    want = (counts_of(torch.as_tensor(s_l)[None], mdp.L)[0].double() @ mdp.P_l[1, a]).numpy()
    sd = np.sqrt(n * 0.25 / B)  # per-entry sd bound of the mean count
    assert np.all(np.abs(next_counts.mean(0) - want) < 5 * sd)
    assert np.all(obs[:, 2] == 1)  # queue: g' = clip(g + 1) deterministic


def test_truncation_single_env(one_thread):
    env = GlobalLocalEnv("queue", n=3, horizon=4)
    env.reset(seed=0)
    flags = [env.step(1)[2:4] for _ in range(4)]
    assert flags == [(False, False)] * 3 + [(False, True)]
    assert GlobalLocalEnv("queue", n=3).horizon == 88  # gamma^H <= 1e-4 at gamma = 0.9


def test_vector_autoreset_modes(one_thread):
    B, H = 5, 3
    nxt = GlobalLocalVectorEnv(num_envs=B, mdp="queue", n=4, horizon=H)
    nxt.reset(seed=0)
    for t in range(H):
        _, r, te, tr, info = nxt.step(np.ones(B, dtype=np.int64))
        assert tr.all() == (t == H - 1) and not te.any()
    _, r, te, tr, _ = nxt.step(np.ones(B, dtype=np.int64))  # the reset step
    assert np.all(r == 0) and not tr.any() and np.all(nxt._core.t.numpy() == 0)

    same_ = GlobalLocalVectorEnv(num_envs=B, mdp="queue", n=4, horizon=H, autoreset_mode="SameStep")
    same_.reset(seed=0)
    for _ in range(H - 1):
        assert same_.step(np.ones(B, dtype=np.int64))[4] == {}
    _, r, _, tr, info = same_.step(np.ones(B, dtype=np.int64))
    assert tr.all() and info["_final_obs"].all() and info["final_obs"][0].shape == (4 + 5,)
    assert np.all(same_._core.t.numpy() == 0) and np.all(r != 0)

    nxt.reset(options={"reset_mask": np.array([True, False, False, False, True])})
    with pytest.raises(ValueError, match="autoreset_mode"):
        GlobalLocalVectorEnv(num_envs=2, autoreset_mode="Disabled")


# ---------------------------------------------------------------- Stable-Baselines3 baselines


@pytest.fixture(scope="module")
def queue_n4():
    from sqtorch.evaluation import initial_states
    from sqtorch.evaluation.exact import optimal_value, value_at

    env, n = make_env("queue"), 4
    s0 = initial_states(env, n, 64, seed=0)
    return env, n, s0, float(value_at(optimal_value(env, n), *s0, L=env.L).mean())


@pytest.mark.parametrize(
    "algo, obs, k, kw",
    [
        ("dqn", "counts", None, dict(learning_starts=100, target_update_interval=50)),
        ("ppo", "subsample", 2, dict(n_steps=128, batch_size=64, n_epochs=2)),
    ],
)
def test_sb3_artifact_exact_gap(one_thread, tmp_path, queue_n4, algo, obs, k, kw):
    pytest.importorskip("stable_baselines3")
    from sqtorch.baselines.sb3 import SB3Policy, train_sb3
    from sqtorch.evaluation import evaluate_mc
    from sqtorch.evaluation.exact import policy_value, value_at

    env, n, s0, v_star = queue_n4
    path = train_sb3(algo, {"name": "queue"}, n, obs=obs, k=k, total_timesteps=512, seed=0,
                     out_dir=tmp_path, horizon=40, algo_kwargs=kw)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["samples"] == meta["env_steps"] * n and meta["env_steps"] >= 512
    policy = SB3Policy.load(path)
    assert policy.k == (n if obs == "counts" else k)
    greedy = policy.greedy()
    # greedy() and act() are the same function of (s_g, counts)
    s_g, s_sub = torch.randint(env.G, (200,)), torch.randint(env.L, (200, policy.k))
    assert torch.equal(policy.act(s_g, s_sub), greedy[s_g, rank_states(s_sub, env.L)])
    v_pi = float(value_at(policy_value(env, n, greedy, policy.k), *s0, L=env.L).mean())
    gap = v_star - v_pi
    print(f"{algo}/{obs}: exact gap on queue n = {n}: {gap:.4f} (V* = {v_star:.4f})")
    assert -1e-9 <= gap < 50
    with pytest.raises(ValueError, match=r"has \(G, L, A\) = \(5, 25, 3\)"):
        policy.check_env(make_env("demand_response"))
    assert SB3Policy.load(path.with_suffix(".json"), k=3).greedy().shape == (env.G, num_counts(3, env.L))
    if obs == "subsample":  # same policy through the Monte Carlo evaluator (paper Algorithm 2)
        mc = evaluate_mc(env, policy, n, s0=s0, rollouts=16, seed=0)
        assert abs(mc.mean - v_pi) < 3 * mc.ci95


def test_count_features_normalize():
    x = count_features(torch.tensor([1, 0]), torch.tensor([[2, 0, 2], [0, 3, 0]]), G=2)
    assert torch.equal(x, torch.tensor([[0, 1, 0.5, 0, 0.5], [1, 0, 0, 1, 0]]))


def test_sb3_env_records_round_trip(tmp_path):
    pytest.importorskip("stable_baselines3")
    from dataclasses import replace

    from sqtorch.baselines.sb3 import _env_record, _load_env_record
    from sqtorch.envs import build_env

    preset = make_env("queue", Q=3, lam=0.4)
    rec = _env_record(preset, tmp_path / "a")
    assert rec == {"name": "queue", **preset.params} and not (tmp_path / "a.mdp.pt").exists()
    custom = replace(make_env("queue", Q=2), name="mine")
    rec = _env_record(custom, tmp_path / "b")
    assert rec == {"tensors": "b.mdp.pt", "name": "mine"}
    back = _load_env_record(rec, tmp_path)
    assert torch.equal(back.P_l, custom.P_l) and back.gamma == custom.gamma
    built = build_env({"_target_": "sqtorch.envs.queue", "Q": 2})
    assert torch.equal(built.P_l, custom.P_l)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(algo="a2c"), r"algo = 'a2c' is not supported; allowed: \['dqn', 'ppo'\]"),
        (dict(obs="agents"), r"obs = 'agents' is not supported for baselines"),
        (dict(obs="subsample"), "k = None is outside the allowed range 1 <= k <= n = 4 .obs = 'subsample' needs"),
        (dict(env_or_cfg={"Q": 2}), "env config needs ._target_. or .name."),
        (dict(total_timesteps=0), "total_timesteps = 0 is outside"),
    ],
)
def test_train_sb3_bad_arguments_are_named(tmp_path, kwargs, match):
    pytest.importorskip("stable_baselines3")
    from sqtorch.baselines.sb3 import train_sb3

    args = {"algo": "dqn", "env_or_cfg": "queue", "n": 4, "total_timesteps": 10, "out_dir": tmp_path, **kwargs}
    with pytest.raises(ValueError, match=match):
        train_sb3(**args)
    assert list(tmp_path.iterdir()) == []
