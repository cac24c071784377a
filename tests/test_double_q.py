"""``algo.double_q`` (double Q-learning targets, docs/training.md): the target is
``r + gamma * mean_j Q_target(g'_j, c'_j, argmax_a' Q_theta(g'_j, c'_j, a'))``; off (the default) it is
today's ``max_a' Q_target``, unchanged; bad values are refused naming the key."""

from __future__ import annotations

import pytest
import torch

from sqtorch.envs import TCLSimulator
from sqtorch.neural.config import DeepSetsConfig, DeepSetsMFQConfig
from sqtorch.neural.data import DataConfig, GenerativeSource
from sqtorch.neural.module import SubsampleQModule
from sqtorch.neural.sim_data import SimulatorSource

pytestmark = pytest.mark.usefixtures("one_thread")
QUEUE = {"_target_": "sqtorch.envs.queue"}
TINY = {"m": 3, "net": {"hidden": 8, "embed_dim": 2}}


def _module(double_q: bool, env: dict = QUEUE, n: int = 10, k: int = 4) -> SubsampleQModule:
    torch.manual_seed(0)
    module = SubsampleQModule(env, n=n, k=k, algo={**TINY, "double_q": double_q})
    with torch.no_grad():  # a target network that differs from the online one (as between syncs)
        for p in module.target_net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return module


def _batch(module: SubsampleQModule, B: int = 6):
    return GenerativeSource(module.env, 10, 4, 3, DataConfig("simplex"), seed=1).sample(B)


def test_double_q_target_is_the_brute_force_one() -> None:
    module = _module(True)
    b = _batch(module)
    y = module.td_target(b.r, b.g_next, b.c_next)
    B, m = b.g_next.shape
    for i in range(B):
        v = []
        for j in range(m):
            g, c = b.g_next[i, j : j + 1], b.c_next[i, j : j + 1]
            a = int(module.net.forward_counts(g, c).argmax())  # the online net picks a'
            v.append(module.target_net.forward_counts(g, c)[0, a])  # the target net values it
        expected = b.r[i] + module.env.gamma * torch.stack(v).mean()
        torch.testing.assert_close(y[i], expected.to(y.dtype))
    # it is a different target than max_a' Q_target, and never above it
    module.algo.double_q = False
    y_max = module.td_target(b.r, b.g_next, b.c_next)
    assert (y <= y_max + 1e-6).all() and not torch.allclose(y, y_max)


def test_double_q_off_is_todays_target_bit_for_bit() -> None:
    module = _module(False)
    b = _batch(module)
    B, m = b.g_next.shape
    with torch.no_grad():
        q = module.target_net.forward_counts(b.g_next.reshape(-1), b.c_next.reshape(B * m, -1))
        today = b.r.to(q.dtype) + module.env.gamma * q.max(-1).values.reshape(B, m).mean(1)
    assert torch.equal(module.td_target(b.r, b.g_next, b.c_next), today)
    assert DeepSetsConfig().double_q is False


def test_double_q_equals_the_max_when_the_networks_agree() -> None:
    """Right after a sync (target = online) the online argmax is the target's: the same target."""
    module = _module(True)
    module.target_net.load_state_dict(module.net.state_dict())
    b = _batch(module)
    y = module.td_target(b.r, b.g_next, b.c_next)
    module.algo.double_q = False
    assert torch.equal(y, module.td_target(b.r, b.g_next, b.c_next))


def test_double_q_on_continuous_successors() -> None:
    """Successor states ``x_next [B, m, k, d]`` (a simulator): the same rule through ``net(s_g, x)``."""
    module = _module(True, {"_target_": "sqtorch.envs.tcl"}, n=20, k=4)
    source = SimulatorSource(TCLSimulator(), 20, 4, 3, DataConfig("visited", pool_size=8), seed=0)
    b = source.sample(5, lambda g, x: module.net.q_states(g, x).argmax(-1))
    assert b.x_next is not None
    y = module.td_target(b.r, b.g_next, None, b.x_next)
    for i in range(5):
        v = []
        for j in range(3):
            g, x = b.g_next[i, j : j + 1], b.x_next[i, j : j + 1]
            a = int(module.net(g, x).argmax())
            v.append(module.target_net(g, x)[0, a])
        torch.testing.assert_close(y[i], (b.r[i] + module.env.gamma * torch.stack(v).mean()).to(y.dtype))
    module.algo.double_q = False
    assert not torch.allclose(y, module.td_target(b.r, b.g_next, None, b.x_next))


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_a_bad_value_names_the_key(value) -> None:
    with pytest.raises(ValueError, match=r"algo\.double_q"):
        DeepSetsConfig(double_q=value)


def test_deepsets_mfq_refuses_double_q() -> None:
    with pytest.raises(ValueError, match=r"algo\.double_q = True is not supported by deepsets_mfq"):
        DeepSetsMFQConfig(double_q=True)


def test_hydra_composes_the_key(make_cfg) -> None:
    assert make_cfg("algo.double_q=true").algo.double_q is True
    assert make_cfg().algo.double_q is False
    with pytest.raises(Exception, match=r"double_q"):
        make_cfg("algo.double_q=maybe")
