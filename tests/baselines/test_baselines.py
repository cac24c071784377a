"""SB3 baselines through train.py / evaluate.py: typed configs, run dirs, and the same exact evaluation as tabular."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.errors import HydraException

from sqtorch import metrics as M
from sqtorch.baselines.config import Sb3DqnConfig, Sb3PpoConfig
from sqtorch.envs import make_env
from sqtorch.experiment import ConfigError, run, validate_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # SB3 trainings: all slow


def _scalar_tags(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for f in run_dir.glob("events.out.tfevents.*"):
        ea = EventAccumulator(str(f))
        ea.Reload()
        tags |= set(ea.Tags()["scalars"])
    return tags


def test_sb3_configs_compose_with_one_default_each(make_cfg):
    cfg = make_cfg("algo=sb3_dqn")
    spec = validate_config(cfg)
    assert isinstance(spec.algo, Sb3DqnConfig) and spec.algo == Sb3DqnConfig()
    assert spec.algo.algo == "dqn" and spec.algo.algo_kwargs() == {"exploration_fraction": 0.3}
    spec = validate_config(make_cfg("algo=sb3_ppo", "algo.obs=subsample", "algo.n_steps=64", "k=3"))
    assert isinstance(spec.algo, Sb3PpoConfig) and spec.algo.algo_kwargs() == {"n_steps": 64}


@pytest.mark.parametrize(
    "override, match",
    [
        ("algo.obs=pixels", r"algo.obs = 'pixels' is unknown; allowed: \['counts', 'subsample'\]"),
        ("algo.total_timesteps=0", "algo.total_timesteps = 0 is outside the allowed range"),
        ("algo.learning_rate=-1", "algo.learning_rate = -1.0 is outside the allowed range"),
        ("algo.exploration_fraction=2", "algo.exploration_fraction = 2.0 is outside the allowed range 0 < x <= 1"),
    ],
)
def test_sb3_bad_values_are_named(make_cfg, override, match):
    with pytest.raises(ConfigError, match=match):
        validate_config(make_cfg("algo=sb3_dqn", override))


def test_sb3_unknown_key_is_refused(make_cfg):
    with pytest.raises(HydraException):
        make_cfg("algo=sb3_ppo", "algo.buffer_size=10")  # a DQN key


@pytest.fixture(scope="module")
def queue_runs(tmp_path_factory) -> dict[str, Path]:
    """queue, n = 10: a tiny DQN (counts), a tiny PPO (subsample, k = 3) and tabular m = exact (k = 3)."""
    pytest.importorskip("stable_baselines3", reason="needs the baselines extra: pip install -e '.[baselines]'")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    conf = Path(__file__).resolve().parents[2] / "conf"
    root = tmp_path_factory.mktemp("runs")
    jobs = {
        "dqn": ["algo=sb3_dqn", "algo.total_timesteps=400", "algo.learning_starts=50"],
        "ppo": ["algo=sb3_ppo", "algo.obs=subsample", "k=3", "algo.total_timesteps=256", "algo.n_steps=64",
                "algo.n_epochs=1"],
        "tabular": ["algo=tabular", "algo.m=exact", "k=3", "logger=none"],
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, overrides in jobs.items():
            GlobalHydra.instance().clear()
            with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
                cfg = compose("config", overrides=[f"paths.output_dir={root / name}", "threads=1", "eval.num_initial=4",
                                                   "eval.rollouts=4", *overrides])
            run(cfg)
    finally:
        GlobalHydra.instance().clear()
        torch.set_num_threads(threads)
    return {name: root / name for name in jobs}


def test_sb3_run_dir_has_artifact_metrics_and_tensorboard(queue_runs):
    d = queue_runs["dqn"]
    assert (d / "policy.zip").is_file() and (d / "policy.json").is_file() and (d / "config.yaml").is_file()
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics[M.TRAIN_SAMPLES] == metrics[M.TRAIN_GLOBAL_STEP] * 10 >= 4000
    assert metrics[M.EVAL_GAP] >= -1e-9 and M.EVAL_RETURN in metrics
    tags = _scalar_tags(d)  # SB3's scalars and sqtorch's, in the run dir itself (one TensorBoard run)
    assert {M.EVAL_RETURN, M.EVAL_GAP, M.TRAIN_SAMPLES, "rollout/exploration_rate"} <= tags


def test_baseline_exact_gap_uses_the_tabular_code_path(queue_runs, monkeypatch):
    """A trained baseline's exact gap on queue n = 10: same V*, same initial states, same policy_value."""
    import sqtorch.experiment.groups as study
    from sqtorch.evaluation.exact import optimal_value, policy_value, value_at
    from sqtorch.evaluation.execution import initial_states
    from sqtorch.experiment.runs import collect

    calls: list[tuple] = []
    real = study.policy_value

    def spy(env, n, greedy, k, *, kernel, max_states):
        calls.append((n, k, id(kernel), tuple(greedy.shape)))
        return real(env, n, greedy, k, kernel=kernel, max_states=max_states)

    monkeypatch.setattr(study, "policy_value", spy)
    runs, missing, skipped = collect(list(queue_runs.values()), env="queue")
    assert not missing and not skipped and len(runs) == 3
    rows = {r["algo"]: r for r in study.evaluate_runs(runs, num_initial=8, rollouts=4, seed=7)}
    assert set(rows) == {"sb3 dqn counts", "sb3 ppo subsample", "tabular m=exact"}
    assert len(calls) == 3 and len({c[2] for c in calls}) == 1  # one n-count kernel for everyone
    assert {c[1] for c in calls} == {10, 3}  # counts: the policy sees all n = 10 agents
    assert len({r["v_star"] for r in rows.values()}) == 1 and {r["gap_reference"] for r in rows.values()} == {
        "exact V*"
    }
    # and that path is the documented one: V*(s0) - V^pi(s0) on the same initial states
    env, n = make_env("queue"), 10
    s0 = initial_states(env, n, 8, seed=7)
    v_star = float(value_at(optimal_value(env, n), *s0, L=env.L).mean())
    for r in runs:
        v_pi = float(value_at(policy_value(env, n, r.policy.greedy(), r.k), *s0, L=env.L).mean())
        assert rows[r.algo]["v_star"] == pytest.approx(v_star, abs=1e-10)
        assert rows[r.algo]["gap_exact"] == pytest.approx(v_star - v_pi, abs=1e-10)
    assert rows["sb3 dqn counts"]["kind"] == "baseline" and rows["tabular m=exact"]["kind"] == "subsample-q"
    assert rows["sb3 dqn counts"]["samples"] > 0 and rows["tabular m=exact"]["samples"] != rows[
        "tabular m=exact"]["samples"]  # NaN: the exact operator draws no samples
