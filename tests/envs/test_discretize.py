"""The histogram model of a continuous simulator (sqtorch/envs/discretize.py) and its policy wrapper."""

from __future__ import annotations

import pytest
import torch

from sqtorch.envs import TCLSimulator, build_env, check_simulator
from sqtorch.envs.discretize import Discretized, DiscretizedPolicy


def test_bins_partition_the_states_and_the_model_is_a_valid_simulator() -> None:
    sim = TCLSimulator()
    d = Discretized(sim, 4)
    assert d.L == 8  # 4 temperature bins x 2 modes (the mode flag keeps its two values)
    check_simulator(d)
    x = sim.initial(50, 4, torch.Generator().manual_seed(0))[1]
    idx = d.bin_of(x)
    theta_bin, mode = idx // 2, idx % 2
    assert torch.equal(mode, x[..., 1].long())
    edges = d.edges[0]
    lo = torch.cat([torch.tensor([-torch.inf]), edges.float()])[theta_bin]
    hi = torch.cat([edges.float(), torch.tensor([torch.inf])])[theta_bin]
    assert ((x[..., 0] >= lo) & (x[..., 0] < hi)).all()


def test_a_bins_reward_is_the_mean_reward_of_its_members_and_moves_go_through_members() -> None:
    sim = TCLSimulator()
    d = Discretized(sim, 4)
    g, a = torch.tensor([2]), torch.tensor([0])
    for x in range(d.L):
        members = d.table[x, : int(d.count[x])]  # [M, d]
        expected = sim.reward(g.repeat(len(members)), members[:, None, :], a.repeat(len(members))).mean()
        torch.testing.assert_close(d.reward(g, torch.tensor([[x]]), a)[0], expected)
        assert (d.bin_of(members) == x).all() or int(d.count[x]) == 1
    gen = torch.Generator().manual_seed(1)
    nxt = d.local_step(g.repeat(4), torch.arange(8).repeat(4, 1), a.repeat(4), gen)
    assert nxt.shape == (4, 8) and nxt.dtype == torch.int64 and ((nxt >= 0) & (nxt < d.L)).all()


def test_the_model_is_a_function_of_the_simulator_and_seed() -> None:
    a, b = Discretized(TCLSimulator(), 8), Discretized(TCLSimulator(), 8)
    assert torch.equal(a.table, b.table) and torch.equal(a.r_bin, b.r_bin)


def test_the_policy_acts_on_the_bins_of_the_sampled_agents() -> None:
    sim = TCLSimulator()
    d = Discretized(sim, 4)

    class Coldest:  # action 2 when the highest bin of any sampled agent is above 5, else 0
        k = 3

        def act(self, s_g, bins):
            return torch.where(bins.max(1).values > 5, 2, 0)

    pol = DiscretizedPolicy(Coldest(), d)
    s_g, x = sim.initial(3, 16, torch.Generator().manual_seed(2))
    assert torch.equal(pol.act(s_g, x), Coldest().act(s_g, d.bin_of(x))) and pol.k == 3


def test_only_continuous_simulators_are_discretized() -> None:
    with pytest.raises(ValueError, match="finite local states already"):
        Discretized(build_env("queue"), 4)
    with pytest.raises(ValueError, match="bins = 1"):
        Discretized(TCLSimulator(), 1)
