"""CUDA checks (marked ``gpu``; skipped without CUDA). Run them with ``bench/gpu_check.sh``.

The bitwise DeepSets resume on the GPU is the ``gpu`` case of tests/test_train.py; ``pytest -m gpu``
collects both files.
"""

from __future__ import annotations

import pytest
import torch

from sqtorch.envs import make_env
from sqtorch.evaluation import evaluate_mc
from sqtorch.experiment import ConfigError, run, validate_config
from sqtorch.tabular import learn, optimal_q
from sqtorch.tabular.bellman import NOISE_ULPS

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_exact_and_sampled_learners_on_cuda():
    env = make_env("queue")
    cpu, gpu = optimal_q(env, 3), optimal_q(env.to("cuda"), 3)
    torch.testing.assert_close(gpu.q.cpu(), cpu.q, rtol=0, atol=1e-10)
    a = learn(env.to("cuda"), 4, m=10, seed=0, T=50)
    b = learn(env.to("cuda"), 4, m=10, seed=0, T=50)
    assert a.qtable.q.is_cuda and torch.equal(a.qtable.q, b.qtable.q)  # reproducible per device type
    f32 = learn(env.to("cuda"), 3, m="exact", dtype=torch.float32)
    # the solver stops at its rounding floor NOISE_ULPS * eps * ||V|| (bellman.py); Q inherits gamma times that
    floor = (1 + env.gamma) * NOISE_ULPS * torch.finfo(torch.float32).eps * float(cpu.q.abs().max())
    assert f32.qtable.q.dtype == torch.float32
    torch.testing.assert_close(f32.qtable.q.double().cpu(), cpu.q, rtol=0, atol=floor)


def _syncs(horizon: int) -> int:
    """Host synchronizations of one evaluate_mc call (torch's sync debug mode, 'warn')."""
    env = make_env("queue").to("cuda")
    table = optimal_q(env, 4)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with pytest.warns(UserWarning) as record:
            evaluate_mc(env, table, 1000, num_initial=4, rollouts=8, horizon=horizon, seed=0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in record)


def test_monte_carlo_step_loop_has_no_host_sync():
    assert _syncs(5) == _syncs(25)  # only set-up and the first step's action check synchronize


def test_cpu_checkpoint_is_refused_on_the_gpu_in_one_line(make_cfg, tmp_path):
    run(make_cfg("debug=fast", "trainer=cpu", "logger=none", out=tmp_path / "cpu"))
    with pytest.raises(ConfigError, match="device: 'cpu' in the checkpoint, 'cuda' now"):
        validate_config(make_cfg("debug=fast", "trainer=gpu", "logger=none", f"ckpt_path='{tmp_path / 'cpu'}'"))
