"""The Gymnasium interface and the SB3 baselines on any simulator (sqtorch/gym.py, docs/model.md §1.1):
the protocol path reproduces the tensor path, continuous local states are observed as a histogram."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sqtorch.envs import TCLSimulator, build_env
from sqtorch.envs.discretize import Discretized
from sqtorch.gym import GlobalLocalEnv, GlobalLocalVectorEnv
from tests.helpers.opaque import Opaque


@pytest.mark.parametrize("obs", ["counts", "subsample", "agents"])
def test_a_simulator_behind_the_protocol_gives_the_same_trajectory(obs: str) -> None:
    k = 3 if obs == "subsample" else None
    a = GlobalLocalEnv(build_env("queue"), n=6, obs=obs, k=k)
    b = GlobalLocalEnv(Opaque(build_env("queue")), n=6, obs=obs, k=k)
    oa, ob = a.reset(seed=4)[0], b.reset(seed=4)[0]
    for t in range(12):
        assert np.array_equal(oa, ob), t
        oa, ra, *_ = a.step(t % 3)
        ob, rb, *_ = b.step(t % 3)
        assert ra == rb


def test_continuous_states_are_observed_as_the_histogram_of_their_bins() -> None:
    env = GlobalLocalVectorEnv(3, TCLSimulator(), n=40, obs="counts", bins=4)
    obs, _ = env.reset(seed=0)
    disc = Discretized(TCLSimulator(), 4)
    for _ in range(3):
        s_g, s_l = env._core.s_g, env._core.s_l
        counts = torch.nn.functional.one_hot(disc.bin_of(s_l), disc.L).sum(1).float() / 40
        np.testing.assert_allclose(obs[:, 3:], counts.numpy(), rtol=0, atol=1e-7)
        np.testing.assert_array_equal(obs[:, :3].argmax(1), s_g.numpy())
        obs, r, *_ = env.step(np.array([0, 1, 2]))
        assert r.shape == (3,) and np.isfinite(r).all()


def test_bad_gym_arguments_for_simulators_are_named() -> None:
    with pytest.raises(ValueError, match="continuous local states .* pass bins="):
        GlobalLocalEnv(TCLSimulator(), n=5)
    with pytest.raises(ValueError, match="bins = 4 bins continuous local states; env 'queue'"):
        GlobalLocalEnv("queue", n=5, bins=4)
    with pytest.raises(ValueError, match="obs = 'agents' needs finite local states"):
        GlobalLocalEnv(TCLSimulator(), n=5, obs="agents", bins=4)


@pytest.mark.slow
def test_sb3_ppo_trains_on_the_histogram_and_acts_on_continuous_states(tmp_path) -> None:
    pytest.importorskip("stable_baselines3", reason="needs the baselines extra: pip install -e '.[baselines]'")
    from sqtorch.baselines.sb3 import SB3Policy, train_sb3

    with pytest.raises(ValueError, match="is a simulator: pass its env config"):
        train_sb3("ppo", TCLSimulator(), 20, bins=4, total_timesteps=64, out_dir=tmp_path)
    path = train_sb3("ppo", "tcl", 20, obs="subsample", k=4, bins=4, total_timesteps=128, out_dir=tmp_path)
    policy = SB3Policy.load(path)
    s_g, s_l = TCLSimulator().initial(4, 6, torch.Generator().manual_seed(0))
    a = policy.act(s_g, s_l)
    assert a.shape == (6,) and ((a >= 0) & (a < 3)).all() and policy.k == 4
    with pytest.raises(ValueError, match="local space"):
        policy.check_env(build_env("queue"))
