"""build_env: the one way every entry point builds an environment."""

import pytest
import torch

from sqtorch.envs import build_env, env_params, make_env, queue


def test_every_spec_builds_the_same_env():
    ref = queue(Q=2, lam=0.3)
    for built in (build_env("queue", Q=2, lam=0.3), build_env({"name": "queue", "Q": 2, "lam": 0.3}),
                  build_env({"_target_": "sqtorch.envs.queue", "Q": 2, "lam": 0.3}), make_env("queue", Q=2, lam=0.3)):
        assert all(torch.equal(getattr(built, f), getattr(ref, f)) for f in ("P_g", "P_l", "r_g", "r_l"))
    assert build_env(ref) is ref


@pytest.mark.parametrize(
    ("spec", "params", "match"),
    [
        ({"name": "queue", "lamda": 0.3}, {}, r"env.lamda is not a parameter of queue\(Q, G, mu_min"),
        ({"_target_": "sqtorch.envs.demand_response", "zeta": 1}, {},
         r"env.zeta is not a parameter of demand_response\("),
        ({"_target_": "sqtorch.envs.no_such_builder"}, {},
         r"env._target_ = 'sqtorch.envs.no_such_builder' cannot be imported"),
        ({"Q": 2}, {}, r"env config needs '_target_' or 'name'"),
        ("qeueu", {}, r"env = 'qeueu' is unknown; allowed: \["),
        (queue(), {"Q": 2}, r"env constants \['Q'\] given with a GlobalLocalMDP"),
        ({"_target_": "os.getcwd"}, {},
         r"env builder getcwd returned str, expected a GlobalLocalMDP, Simulator or LocalActionMDP"),
        (3, {}, r"env = 3 must be a GlobalLocalMDP"),
    ],
)
def test_bad_specs_are_named_before_the_builder_runs(spec, params, match):
    with pytest.raises(ValueError, match=match):
        build_env(spec, **params)


def test_a_required_parameter_is_named():
    def needs_p(p: float, gamma: float = 0.9):  # a user's builder with a required constant
        return queue(lam=p, gamma=gamma)

    assert list(env_params(needs_p)) == ["p", "gamma"]
    with pytest.raises(ValueError, match=r"env.p is required by needs_p_test\(p, gamma\) but not set"):
        _build_with(needs_p, {})
    assert _build_with(needs_p, {"p": 0.4}).params["lam"] == 0.4


def _build_with(builder, params):
    from sqtorch.envs import ENVS, register_env

    register_env("needs_p_test", builder)
    try:
        return build_env("needs_p_test", **params)
    finally:
        ENVS.pop("needs_p_test")
