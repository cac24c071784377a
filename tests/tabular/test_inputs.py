"""Bad input to the tabular API is named: Q-table files, states, learn's arguments; float32 tables."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from sqtorch.envs import make_env
from sqtorch.tabular import QTable, learn, optimal_q


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_qtable_load_never_runs_code_and_checks_the_format(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"q": _RunsCode()}, f)
    with pytest.raises(ValueError, match=r"evil\.pt: not a readable Q-table"):
        QTable.load(tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED").exists()
    torch.save({"q": torch.zeros(4, 5, 3), "k": 2, "L": 5, "env_name": "queue", "meta": {}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"q has 5 count vectors but k = 2, L = 5 needs C\(k\+L-1, k\) = 15"):
        QTable.load(tmp_path / "bad.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.pt: not a readable Q-table"):
        QTable.load(tmp_path / "empty.pt")


def test_qtable_act_rejects_out_of_range_states():
    env = make_env("queue", Q=2, G=3)
    table = optimal_q(env, 2)
    with pytest.raises(ValueError, match=r"s_sub\[0, 1\] = -1 is outside the state space \{0..2\}"):
        table.act(torch.tensor([0]), torch.tensor([[0, -1]]))
    with pytest.raises(ValueError, match=r"s_g\[0\] = -1 is outside the state space \{0..2\}"):
        table.act(torch.tensor([-1]), torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match=r"s_g\[0\] = 3 is outside the state space"):
        table.act(torch.tensor([3]), torch.tensor([[0, 1]]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(k=True), "k = True is outside the allowed range k >= 1"),
        (dict(k=2.5), "k = 2.5 is outside the allowed range k >= 1"),
        (dict(k=2, seed=-1), "seed = -1 is outside the allowed range seed >= 0"),
        (dict(k=2, dtype=torch.int64), "dtype = torch.int64 is not supported"),
        (dict(k=2, m=0), "m = 0 is outside the allowed range m >= 1"),
        (dict(k=2, max_memory_gib=float("nan")), "max_memory_gib = nan is outside the allowed range"),
        (dict(k=2, tol=float("inf")), "tol = inf is outside the allowed range"),
    ],
)
def test_learn_rejects_bad_arguments_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        learn(make_env("queue", Q=2, G=3), **kwargs)


def test_learn_and_make_env_accept_numpy_integers():
    env = make_env("queue", Q=np.int64(2), G=np.int32(3))
    res = learn(env, np.int64(2), m=np.int64(3), T=np.int64(5), seed=np.int64(1))
    assert res.qtable.k == 2 and isinstance(res.qtable.k, int)


def test_exact_learner_in_float32_matches_float64():
    env = make_env("queue", Q=2, G=3)
    q64 = learn(env, 3, m="exact", tol=1e-10).qtable.q
    q32 = learn(env, 3, m="exact", dtype=torch.float32, tol=1e-4).qtable.q
    assert q32.dtype == torch.float32
    torch.testing.assert_close(q32.double(), q64, rtol=0, atol=1e-3)

