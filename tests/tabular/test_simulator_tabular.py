"""The tabular m-sample learner driven by a simulator's own methods (sqtorch/tabular/simulator_kernel.py):
its fixed point approaches the exact Q_k of the env behind the protocol as m grows, and it is seeded."""

from __future__ import annotations

import pytest
import torch

from sqtorch.envs import build_env
from sqtorch.tabular import learn
from sqtorch.tabular.exact import optimal_q
from tests.helpers.opaque import Opaque


@pytest.mark.parametrize("k", [1, 2, 3])
def test_samples_from_the_protocol_give_the_exact_q_up_to_sampling_error(k: int) -> None:
    """queue behind the protocol (no tensors reach the learner), m = 2000: within 1.5% of max|Q_k|."""
    env = build_env("queue")
    q_exact = optimal_q(env, k).q
    q = learn(Opaque(env), k, m=2000, seed=0).qtable.q
    assert q.shape == q_exact.shape
    assert ((q - q_exact).abs().max() / q_exact.abs().max()).item() < 0.015


def test_the_simulator_table_is_seeded() -> None:
    sim = Opaque(build_env("queue"))
    a, b, c = (learn(sim, 2, m=5, seed=s).qtable.q for s in (3, 3, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_the_exact_operator_needs_kernel_tensors() -> None:
    with pytest.raises(ValueError, match=r"algo.m = 'exact' needs the kernel tensors .* set algo.m="):
        learn(Opaque(build_env("queue")), 2, m="exact")
    with pytest.raises(ValueError, match=r"needs finite local states; env 'tcl'.* algo.bins"):
        learn(build_env("tcl"), 2, m=5)
