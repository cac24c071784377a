"""CUDA checks (marked ``gpu``; skipped without CUDA). Run them with ``bench/gpu_check.sh``.

No GPU has been available to this project so far: these tests have not run yet.
"""

from __future__ import annotations

import pytest
import torch

from sqtorch.envs import make_env
from sqtorch.evaluation import evaluate_mc
from sqtorch.experiment import run
from sqtorch.tabular import learn, optimal_q

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_exact_and_sampled_learners_on_cuda():
    env = make_env("queue")
    cpu, gpu = optimal_q(env, 3), optimal_q(env.to("cuda"), 3)
    torch.testing.assert_close(gpu.q.cpu(), cpu.q, rtol=0, atol=1e-10)
    a = learn(env.to("cuda"), 4, m=10, seed=0, T=50)
    b = learn(env.to("cuda"), 4, m=10, seed=0, T=50)
    assert a.qtable.q.is_cuda and torch.equal(a.qtable.q, b.qtable.q)  # reproducible per device type
    f32 = learn(env.to("cuda"), 3, m="exact", dtype=torch.float32)
    torch.testing.assert_close(f32.qtable.q.double().cpu(), cpu.q, rtol=0, atol=1e-3)


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


def test_deepsets_resume_on_gpu_is_bitwise(make_cfg, tmp_path):
    common = ("debug=fast", "trainer=gpu", "trainer.deterministic=true", "logger=none", "seed=3")
    full = run(make_cfg(*common, out=tmp_path / "full"))
    run(make_cfg(*common, "algo.max_steps=20", out=tmp_path / "part"))
    resumed = run(make_cfg(*common, f"ckpt_path={tmp_path / 'part'}", out=tmp_path / "part"))
    assert resumed["eval/return"] == full["eval/return"]
    a = torch.load(tmp_path / "full/checkpoints/final.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "part/checkpoints/final.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[key], b[key]) for key in a)
