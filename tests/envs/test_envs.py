import math

import pytest
import torch

from sqtorch.envs import GlobalLocalMDP, make_env, register_env, sample_initial_state, step
from sqtorch.envs.simulator import make_generator


@pytest.mark.parametrize("name", ["queue", "demand_response", "demand_response_script"])
def test_presets_are_valid_mdps(name):
    env = make_env(name)
    assert torch.allclose(env.P_g.sum(-1), torch.ones(env.G, env.A, dtype=torch.float64))
    assert torch.allclose(env.P_l.sum(-1), torch.ones(env.G, env.A, env.L, dtype=torch.float64))


def test_queue_matches_spec_formulas():
    env = make_env("queue", Q=4, G=4, lam=0.5, mu_min=0.2, mu_max=0.8)
    mu = 0.6  # g = 2
    P = env.P_l[2, 1]
    assert P[0].tolist() == pytest.approx([0.5, 0.5, 0, 0, 0])  # empty queue: arrival only
    assert P[2].tolist() == pytest.approx([0, 0.5 * mu, 0.5 * mu + 0.5 * (1 - mu), 0.5 * (1 - mu), 0])
    assert P[4, 4] == pytest.approx(1 - 0.5 * mu)  # arrival to a full queue is lost
    assert env.r_l[0, 0].tolist() == pytest.approx([0, -1, -2, -3, -4 - 5 * 0.5])
    assert env.r_g[3].tolist() == pytest.approx([-2 * 0.8 - 0.1, -2 * 0.8, -2 * 0.8 - 0.1])
    assert env.P_g[0, 0, 0] == 1 and env.P_g[3, 2, 3] == 1 and env.P_g[1, 2, 2] == 1


def test_demand_response_matches_spec_formulas():
    env = make_env("demand_response_script")
    idx = lambda x, y: (x - 1) * 5 + (y - 1)  # noqa: E731
    # s_g = 2 has index 1
    # y <= s_g: x' = y; y' uniform
    assert env.P_l[1, 0, idx(4, 2)].reshape(5, 5)[1].tolist() == pytest.approx([0.2] * 5)
    # y > s_g: x' = y or clip(y + s_g - x, 1, 5), each w.p. 1/2
    P = env.P_l[1, 0, idx(1, 4)].reshape(5, 5).sum(-1)
    assert P.tolist() == pytest.approx([0, 0, 0, 0.5, 0.5])  # x' in {4, clip(4+2-1)=5}
    assert env.r_g[0].tolist() == pytest.approx([15 - 1, 15, 15])
    assert env.r_l[1, 0, idx(3, 1)] == pytest.approx(3 - 0.5)
    assert env.r_l[1, 0, idx(2, 5)] == pytest.approx(2)


def test_custom_env_in_a_few_lines():
    G, A, L = 2, 2, 3
    P_g = torch.eye(G)[None].expand(A, G, G).permute(1, 0, 2)  # action a moves to state a
    P_l = torch.full((G, A, L, L), 1 / L, dtype=torch.float64)
    env = GlobalLocalMDP(P_g, P_l, r_g=torch.zeros(G, A), r_l=torch.rand(G, A, L), gamma=0.95, name="toy")
    register_env("toy", lambda: env)
    assert make_env("toy").L == 3


@pytest.mark.parametrize(
    "field,kwargs,match",
    [
        ("gamma", dict(gamma=1.0), r"gamma = 1.0 is outside the allowed range \(0, 1\)"),
        ("gamma", dict(gamma=0.0), r"gamma"),
        ("P_l", dict(P_l=torch.full((2, 2, 3, 3), 0.3)), r"P_l\[0, 0, 0\] sums to 0.9.*must sum to 1"),
        ("P_l", dict(P_l=torch.tensor([1.5, -0.5, 0.0]).expand(2, 2, 3, 3)), r"P_l\[0, 0, 0, 1\].*negative"),
        ("r_l", dict(r_l=torch.tensor(math.nan).expand(2, 2, 3)), r"r_l\[0, 0, 0\].*not finite"),
        ("r_g", dict(r_g=torch.zeros(3, 2)), r"r_g has shape \(3, 2\), expected \(2, 2\)"),
        ("G", dict(P_g=torch.zeros(0, 2, 0), r_g=torch.zeros(0, 2)),
         r"G = 0 \(P_g.shape\[0\]\) is outside the allowed range G >= 1"),
        ("A", dict(P_g=torch.zeros(2, 0, 2)), r"A = 0 \(P_g.shape\[1\]\) is outside the allowed range A >= 1"),
        ("L", dict(P_l=torch.zeros(2, 2, 0, 0)), r"L = 0 \(P_l.shape\[-1\]\) is outside the allowed range L >= 1"),
    ],
)
def test_bad_mdp_is_rejected_naming_the_field(field, kwargs, match):
    base = dict(
        P_g=torch.full((2, 2, 2), 0.5),
        P_l=torch.full((2, 2, 3, 3), 1 / 3, dtype=torch.float64),
        r_g=torch.zeros(2, 2),
        r_l=torch.zeros(2, 2, 3),
        gamma=0.9,
    )
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        GlobalLocalMDP(**base)


def test_unknown_env_name():
    with pytest.raises(ValueError, match=r"env = 'nope' is unknown; allowed: .*queue"):
        make_env("nope")


def test_simulator_is_seeded_and_matches_kernel():
    env = make_env("queue")
    s_g = torch.full((100_000,), 2)
    s_l = torch.full((100_000, 1), 2)
    a_g = torch.ones(100_000, dtype=torch.int64)
    g1, l1, r1 = step(env, s_g, s_l, a_g, make_generator(0))
    g2, l2, r2 = step(env, s_g, s_l, a_g, make_generator(0))
    assert torch.equal(l1, l2) and torch.equal(g1, g2)
    freq = torch.bincount(l1[:, 0], minlength=env.L).double() / len(l1)
    assert torch.allclose(freq, env.P_l[2, 1, 2], atol=0.01)  # ~7 standard errors
    assert (g1 == 2).all()
    s_g0, s_l0 = sample_initial_state(env, n=7, batch=3, generator=make_generator(1))
    assert s_l0.shape == (3, 7) and s_l0.max() < env.L and s_g0.max() < env.G
