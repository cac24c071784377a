"""Hydra launchers for sweeps beyond one process (conf/hydra/launcher/, extra `.[launchers]`)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sqtorch import metrics as M

pytestmark = pytest.mark.slow  # subprocess runs and trainings: the whole module is slow
ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "1"}


def test_joblib_multirun_two_parallel_jobs_two_complete_separate_runs(tmp_path) -> None:
    """`train.py -m hydra/launcher=parallel k=2,3`: 2 worker processes, 2 complete run dirs."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2",
        "k=2,3", "debug=fast", f"hydra.sweep.dir={sweep}",
        "hydra.job_logging.formatters.simple.format='[pid %(process)d] %(message)s'",
    ]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-3000:]
    pids = set()
    for num, k in enumerate((2, 3)):
        d = sweep / f"{num}_k={k}"
        assert OmegaConf.load(d / "config.yaml").k == k
        assert OmegaConf.load(d / ".hydra" / "hydra.yaml").hydra.launcher.n_jobs == 2
        metrics = json.loads((d / "metrics.json").read_text())
        assert metrics[M.TRAIN_GLOBAL_STEP] > 0 and metrics[M.EVAL_RETURN] < 0
        assert (d / "checkpoints" / "final.ckpt").is_file()
        assert list(d.glob("events.out.tfevents.*")), d
        job_pids = set(re.findall(r"^\[pid (\d+)\]", (d / "train.log").read_text(), re.M))
        assert len(job_pids) == 1, job_pids  # one process per job ...
        pids |= job_pids
    assert len(pids) == 2 and str(proc.pid) not in pids, pids  # ... two workers, not the launcher
    assert log.count("[sqtorch] deepsets") == 2


def test_slurm_launcher_config_composes(tmp_path) -> None:
    """`hydra/launcher=slurm` selects submitit's Slurm launcher with our defaults (no cluster needed)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cmd = [
        sys.executable, str(ROOT / "train.py"), "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
        "--cfg", "hydra", "--package", "hydra.launcher",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = OmegaConf.create(proc.stdout.split("\n", 1)[1] if proc.stdout.startswith("#") else proc.stdout)
    cfg = cfg.hydra.launcher if "hydra" in cfg else cfg
    assert cfg._target_.endswith("SlurmLauncher")
    assert cfg.partition == "gpu" and cfg.timeout_min == 60 and cfg.tasks_per_node == 1
