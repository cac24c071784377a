"""Bad constants of the built-in envs are named with their allowed range."""

from __future__ import annotations

import pytest

from sqtorch.envs import make_env


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (dict(Q=2.5), "Q = 2.5 is outside the allowed range Q >= 1"),
        (dict(h=float("inf")), r"h = inf is outside the allowed range \(-inf, inf\) \(a finite cost\)"),
        (dict(G=True), "G = True is outside the allowed range G >= 2"),
        (dict(lam=float("nan")), "lam = nan is outside the allowed range"),
    ],
)
def test_make_env_rejects_bad_parameters_naming_them(params, message):
    with pytest.raises(ValueError, match=message):
        make_env("queue", **params)
    with pytest.raises(ValueError, match="alpha = inf is outside the allowed range"):
        make_env("demand_response", alpha=float("inf"))

