"""The Hydra entry point (train.py / sqtorch.experiment): artifacts, TensorBoard tags, exact
resume, config errors, multirun (docs/model.md §3, docs/training.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra.errors import HydraException
from omegaconf import OmegaConf

from sqtorch import metrics as M
from sqtorch.envs import build_env
from sqtorch.experiment import ConfigError, run, validate_config
from sqtorch.tabular.qtable import QTable

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_thread")


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for f in sorted(run_dir.glob("events.out.tfevents.*")):
        ea = EventAccumulator(str(f))
        ea.Reload()
        for tag in ea.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in ea.Scalars(tag))
    return out


def test_fast_run_leaves_artifacts_and_tensorboard_tags(make_cfg, tmp_path) -> None:
    metrics = run(make_cfg("debug=fast", "k=2"))
    for name in (
        "config.yaml",
        "metrics.json",
        "checkpoints/final.ckpt",
        "checkpoints/step-20.ckpt",
    ):
        assert (tmp_path / name).exists(), name
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved[M.EVAL_RETURN] == pytest.approx(metrics[M.EVAL_RETURN])
    assert OmegaConf.load(tmp_path / "config.yaml").k == 2
    tags = _scalars(tmp_path)
    for tag in (
        M.TRAIN_TD_LOSS,
        M.TRAIN_Q_MEAN,
        M.EVAL_RETURN,
        M.SAMPLES_PER_SECOND,
        M.LEARNING_RATE,
        M.TRAIN_SAMPLES,
    ):
        assert tag in tags, (tag, sorted(tags))
    assert "hp_metric" not in tags
    assert set(tags) - {"epoch"} <= set(M.ALL_TAGS), set(tags) - set(M.ALL_TAGS)
    assert len(tags[M.EVAL_RETURN]) >= 2  # periodic validation + final


def test_hparams_tab_has_real_metrics(make_cfg, tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run(make_cfg("debug=fast"))
    found = False
    for f in tmp_path.glob("events.out.tfevents.*"):
        ea = EventAccumulator(str(f))
        ea.Reload()
        try:
            content = ea.PluginTagToContent("hparams")
        except KeyError:  # an event file without hparams summaries
            continue
        if "_hparams_/experiment" in content:
            data = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
            names = {m.name.tag for m in data.experiment.metric_infos}
            hps = {h.name for h in data.experiment.hparam_infos}
            assert M.EVAL_RETURN in names and "k" in hps and "algo.optim.lr" in hps
            found = True
    assert found


class _Kill(pl.Callback):
    """Simulates a killed run: raises after ``step`` optimizer steps."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("killed")


CUDA = pytest.param(
    ("trainer=gpu", "trainer.deterministic=true"),
    marks=(pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
    id="gpu",
)


@pytest.mark.parametrize("trainer", [pytest.param(("trainer=cpu",), id="cpu"), CUDA])
@pytest.mark.parametrize("state_dist", ["visited", "simplex"])
@pytest.mark.slow
def test_resume_from_checkpoint_equals_uninterrupted(make_cfg, tmp_path, state_dist, trainer) -> None:
    """Bitwise, per device type (the CPU and CUDA generators differ; a checkpoint resumes on its own type)."""
    common = ("debug=fast", *trainer, "logger=none", f"algo.data.state_dist={state_dist}", "seed=3")
    full = run(make_cfg(*common, out=tmp_path / "full"))
    with pytest.raises(RuntimeError, match="killed"):
        run(make_cfg(*common, out=tmp_path / "killed"), extra_callbacks=[_Kill(27)])
    ckpt = tmp_path / "killed" / "checkpoints" / "step-20.ckpt"
    assert ckpt.exists()
    resumed = run(make_cfg(*common, f"ckpt_path='{ckpt}'", out=tmp_path / "killed"))
    for key in (M.EVAL_RETURN, M.TRAIN_SAMPLES, M.TRAIN_GLOBAL_STEP):
        assert resumed[key] == full[key], key
    a = torch.load(tmp_path / "full/checkpoints/final.ckpt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "killed/checkpoints/final.ckpt", weights_only=False)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_resume_on_another_device_type_is_refused_in_one_line(make_cfg, tmp_path) -> None:
    """A CUDA checkpoint's generator state cannot continue on the CPU (nor the reverse): refused before training."""
    run(make_cfg("debug=fast", "trainer=cpu", "logger=none", out=tmp_path / "a"))
    ckpt = tmp_path / "a" / "checkpoints" / "final.ckpt"
    state = torch.load(ckpt, weights_only=True)
    state["sqtorch"]["device"] = "cuda"  # as written by a run with trainer=gpu
    torch.save(state, ckpt)
    with pytest.raises(ConfigError, match="device: 'cuda' in the checkpoint, 'cpu' now"):
        validate_config(make_cfg("debug=fast", "trainer=cpu", "logger=none", f"ckpt_path='{ckpt}'"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("k=11",), "k = 11 is outside the allowed range 1 <= k <= n = 10"),
        (("k=0",), "k = 0 is outside the allowed range"),
        (("algo.batch_size=0",), "algo.batch_size = 0"),
        (("algo.optim.lr=-0.1",), "algo.optim.lr = -0.1"),
        (("algo.m=0",), "algo.m = 0"),
        (("algo=tabular", "algo.m=fast"), "algo.m = 'fast'"),
        (("algo=tabular", "algo.tol=-1"), "algo.tol = -1"),
        (("algo.name=ppo",), "algo = 'ppo' is unknown"),
        (("algo.net.pooling=attention",), "pooling = 'attention' is unknown"),
    ],
)
def test_bad_config_fails_before_training(make_cfg, tmp_path, overrides, message) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("+", r"\+")):
        run(make_cfg("debug=fast", *overrides))
    assert not (tmp_path / "checkpoints").exists()


def test_unknown_env_or_algo_group_is_a_clear_error(make_cfg) -> None:
    with pytest.raises(HydraException, match="env/nosuchenv"):
        make_cfg("env=nosuchenv")
    with pytest.raises(HydraException, match="algo/nosuchalgo"):
        make_cfg("algo=nosuchalgo")
    cfg = make_cfg("debug=fast", "env._target_=sqtorch.envs.nosuchenv")
    with pytest.raises(ConfigError, match="nosuchenv"):
        run(cfg)
    with pytest.raises(ValueError, match="env = 'nosuchenv' is unknown; allowed"):
        build_env({"name": "nosuchenv"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_gpu_without_cuda_says_how_to_fall_back(make_cfg) -> None:
    with pytest.raises(ConfigError, match="trainer=cpu"):
        validate_config(make_cfg("debug=fast", "trainer=gpu"))
    with pytest.raises(ConfigError, match="trainer=cpu"):
        validate_config(make_cfg("trainer=gpu"))


def test_tabular_run(make_cfg, tmp_path) -> None:
    metrics = run(make_cfg("algo=tabular", "debug=fast", "k=2", "algo.m=exact"))
    table = QTable.load(tmp_path / "qtable.pt")
    assert table.k == 2 and table.q.shape == (4, 15, 3)
    assert M.EVAL_RETURN in metrics and (tmp_path / "metrics.json").exists()
    tags = _scalars(tmp_path)
    assert M.TABULAR_RESIDUAL in tags and len(tags[M.TABULAR_RESIDUAL]) >= 2
    assert M.EVAL_RETURN in tags and M.TABULAR_TABLE_SIZE in tags
    assert set(tags) <= set(M.ALL_TAGS), set(tags) - set(M.ALL_TAGS)


@pytest.mark.slow
def test_multirun_isolates_jobs_and_survives_a_failing_job(tmp_path) -> None:
    """`train.py -m k=2,4,11 seed=0,1 debug=fast`: k = 11 > n fails, the other four finish,
    each in its own dir named by its overrides with its own TensorBoard run and metrics.json."""
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        "k=2,4,11",
        "seed=0,1",
        "debug=fast",
        f"hydra.sweep.dir={sweep}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log  # the failing jobs are reported at the end
    assert "k = 11 is outside the allowed range" in log, log[-3000:]
    dirs = {p.name: p for p in sweep.iterdir() if p.is_dir()}
    for num, (k, seed) in enumerate([(2, 0), (2, 1), (4, 0), (4, 1)]):
        d = dirs[f"{num}_k={k},seed={seed}"]
        assert json.loads((d / "metrics.json").read_text())[M.EVAL_RETURN] < 0
        assert list(d.glob("events.out.tfevents.*")), d
        assert OmegaConf.load(d / "config.yaml").k == k
    for num in (4, 5):
        assert f"{num}_k=11,seed={num - 4}" not in dirs  # a job with a bad value leaves no directory
    assert log.count("[sqtorch] deepsets") == 4


def test_reference_metrics_when_exact_solutions_exist(make_cfg, tmp_path) -> None:
    """eval.reference=auto on a small problem: agreement / Q error / gap vs the exact tabular Q,
    and the exact gap V* - V^pi once sqtorch.evaluation is present (docs/model.md §5)."""
    metrics = run(make_cfg("debug=fast", "k=2", "eval.reference=auto"))
    for key in (M.EVAL_AGREEMENT, M.EVAL_Q_REL_ERROR, M.EVAL_GAP_TABULAR):
        assert key in metrics, key
    assert 0.0 <= metrics[M.EVAL_AGREEMENT] <= 1.0
    assert metrics[M.EVAL_GAP] >= -1e-9
    assert M.EVAL_GAP in _scalars(tmp_path)


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")))
def test_experiment_presets_compose_and_validate(make_cfg, name) -> None:
    cfg = make_cfg(f"experiment={name}")
    validate_config(cfg)
    assert cfg.algo.name in ("deepsets", "tabular") and 1 <= cfg.k <= cfg.n


@pytest.mark.slow
def test_default_deepsets_run_is_bitwise_reproducible_with_two_threads(make_cfg, tmp_path) -> None:
    """The default trainer is deterministic: with it off, 2 CPU threads made two runs of this config differ."""
    common = ("threads=2", "logger=none", "algo.max_steps=40", "eval.every=40", "eval.num_initial=4",
              "eval.rollouts=4", "eval.horizon=20", "eval.reference=none")
    states = []
    for name in ("a", "b"):
        run(make_cfg(*common, out=tmp_path / name))
        states.append(torch.load(tmp_path / name / "checkpoints/final.ckpt", weights_only=True)["state_dict"])
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])


def test_progress_bar_refreshes_on_logging_steps_unless_the_run_brings_its_own() -> None:
    """algo=deepsets adds a StepProgressBar refreshed every log_every_n_steps; none when the Trainer shows
    no bar (Lightning refuses a bar callback then) or when the callbacks already hold a bar."""
    from lightning.pytorch.callbacks import TQDMProgressBar

    from sqtorch.experiment.algos.deepsets import progress_bar
    from sqtorch.neural.progress import StepProgressBar

    (bar,) = progress_bar(OmegaConf.create({"enable_progress_bar": True, "log_every_n_steps": 25}), [])
    assert isinstance(bar, StepProgressBar) and bar.refresh_rate == 25
    assert progress_bar(OmegaConf.create({"enable_progress_bar": False, "log_every_n_steps": 25}), []) == []
    assert progress_bar(OmegaConf.create({"log_every_n_steps": 25}), [TQDMProgressBar()]) == []
