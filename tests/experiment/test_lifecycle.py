"""The run lifecycle under faults: unique run dirs, signals, resume, bad checkpoints; each case asserts
the exit status, the one-line message and the files left on disk (docs/training.md, "When things go wrong")."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sqtorch.experiment import ConfigError, run
from sqtorch.neural import DeepSetsPolicy
from sqtorch.neural.checkpoint import latest_checkpoint

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
FAST = ["debug=fast", "logger=none"]
pytestmark = pytest.mark.usefixtures("one_thread")


def _train(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=300, **kw)


@pytest.mark.slow
def test_runs_started_in_the_same_second_never_share_a_directory(tmp_path):
    procs = [subprocess.Popen([sys.executable, str(ROOT / "train.py"), "algo=tabular", *FAST, "k=2", f"seed={s}"],
                              cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for s in (0, 1)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    dirs = sorted((tmp_path / "logs" / "runs").iterdir())
    assert len(dirs) == 2
    assert sorted(int(json.loads(json.dumps(_cfg_seed(d)))) for d in dirs) == [0, 1]
    assert all((d / "metrics.json").is_file() and (d / "qtable.pt").is_file() for d in dirs)


def _cfg_seed(run_dir: Path) -> int:
    from omegaconf import OmegaConf

    return OmegaConf.load(run_dir / "config.yaml").seed


def _start_deepsets(tmp_path: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    args = ["algo.max_steps=100000", "algo.checkpoint_every=100000", "eval.every=100000", *FAST, "k=2",
            f"hydra.run.dir={run_dir}", *extra]
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_training(proc: subprocess.Popen, run_dir: Path, pattern: str = "config.yaml") -> Path:
    """Wait until a run dir matching ``run_dir / pattern`` exists and training has started; returns it."""
    deadline = time.time() + 120
    while not list(run_dir.glob(pattern)) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(4.0)  # past Lightning's set-up, into the optimizer steps
    assert proc.poll() is None
    return next(run_dir.glob(pattern)).parent


@pytest.mark.slow
def test_sigterm_after_a_validation_saves_the_next_steps_checkpoint(tmp_path):
    """A SIGTERM that arrives after the step's batch hooks (here: at the end of a training-time validation,
    before Lightning's loop checks its own SIGTERM flag) still ends the run with last.ckpt, one step later."""
    run_dir = tmp_path / "run"
    kill = ["+callbacks.kill._target_=tests.helpers.signals.SignalAfterValidation", "+callbacks.kill.step=20"]
    res = _train(["algo.max_steps=100000", "algo.checkpoint_every=100000", "eval.every=20", *FAST, "k=2",
                  f"hydra.run.dir={run_dir}", *kill], tmp_path)
    assert res.returncode == 128 + signal.SIGTERM, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1].startswith(f"train.py: interrupted by SIGTERM: checkpoint {run_dir}")
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 21  # the step after the validation at step 20


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_and_exits_nonzero(tmp_path, signum):
    run_dir = tmp_path / "run"
    proc = _start_deepsets(tmp_path, run_dir)
    _wait_for_training(proc, run_dir)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"train.py: interrupted by {signal.Signals(signum).name}: checkpoint {run_dir}"), last
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not (run_dir / "metrics.json").exists()  # the run is not complete


@pytest.mark.slow
def test_a_sweep_that_loses_a_job_to_a_signal_exits_nonzero_and_says_which(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "seed=0,1", "algo.max_steps=100000", "algo.checkpoint_every=100000", "eval.every=100000", *FAST,
            "k=2", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job = _wait_for_training(proc, sweep, "0_*/config.yaml")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert f"checkpoint {job}" in err and "later jobs did not start" in err, err[-2000:]
    assert (job / "checkpoints" / "last.ckpt").is_file()
    assert not list(sweep.glob("1_*"))


def test_resume_from_a_run_dir_takes_the_highest_step_and_keeps_last_ckpt_newest(make_cfg, tmp_path):
    common = ("debug=fast", "trainer=cpu", "logger=none", "seed=3")
    run(make_cfg(*common, "algo.max_steps=20", out=tmp_path))
    (tmp_path / "checkpoints" / "final.ckpt").unlink()
    os.replace(tmp_path / "checkpoints" / "last.ckpt", tmp_path / "checkpoints" / "zz-renamed.ckpt")
    assert latest_checkpoint(tmp_path).name in ("step-20.ckpt", "zz-renamed.ckpt")
    run(make_cfg(*common, "algo.max_steps=40", f"ckpt_path={tmp_path}", out=tmp_path))
    files = sorted(p.name for p in (tmp_path / "checkpoints").glob("last*.ckpt"))
    assert files == ["last.ckpt"]  # rewritten in place, never last-v1.ckpt
    step = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert step == 40 and latest_checkpoint(tmp_path).name in ("last.ckpt", "step-40.ckpt", "final.ckpt")


def test_checkpoint_of_another_run_is_refused_naming_the_keys(make_cfg, tmp_path):
    run(make_cfg("debug=fast", "trainer=cpu", "logger=none", "k=2", out=tmp_path / "a"))
    with pytest.raises(ConfigError, match=r"differing keys: k: 2 in the checkpoint, 3 now") as e:
        run(make_cfg("debug=fast", "k=3", f"ckpt_path={tmp_path / 'a'}", out=tmp_path / "b"))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"algo.net.hidden: 16 in the checkpoint, 32 now"):
        run(make_cfg("debug=fast", "k=2", "algo.net.hidden=32", f"ckpt_path={tmp_path / 'a'}", out=tmp_path / "c"))
    with pytest.raises(ConfigError, match=r"env.lam: 0.5 in the checkpoint, 0.6 now"):
        run(make_cfg("debug=fast", "k=2", "env.lam=0.6", f"ckpt_path={tmp_path / 'a'}", out=tmp_path / "d"))
    assert not (tmp_path / "b" / "checkpoints").exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", None])
def test_truncated_or_foreign_checkpoint_is_one_clear_error(tmp_path, content, make_cfg):
    path = tmp_path / "bad.ckpt"
    if content is None:  # a real torch file of something else
        torch.save({"state_dict": {}, "hello": 1}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=r"bad\.ckpt: not a (readable|sqtorch DeepSets) checkpoint") as e:
        DeepSetsPolicy.from_checkpoint(path)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"bad\.ckpt: not a"):
        run(make_cfg("debug=fast", f"ckpt_path={path}", out=tmp_path / "r"))


def test_checkpoint_with_mismatched_weights_is_one_clear_error(make_cfg, tmp_path):
    run(make_cfg("debug=fast", "trainer=cpu", "logger=none", "k=2", out=tmp_path))
    ckpt = torch.load(tmp_path / "checkpoints" / "final.ckpt", weights_only=True)
    ckpt["hyper_parameters"]["algo"]["net"]["hidden"] = 8  # weights of 16, hyper-parameters say 8
    torch.save(ckpt, tmp_path / "edited.ckpt")
    with pytest.raises(ValueError, match="weights do not fit the network") as e:
        DeepSetsPolicy.from_checkpoint(tmp_path / "edited.ckpt")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="k = 2.5 is outside the allowed range"):
        DeepSetsPolicy.from_checkpoint(tmp_path / "checkpoints" / "final.ckpt", k=2.5)

