"""Fault and bad-input cases of the run lifecycle: each asserts the exit status, the one-line
message and the files left on disk (docs/training.md, "When things go wrong")."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sqtorch.envs import make_env
from sqtorch.experiment import ConfigError, run
from sqtorch.neural import DeepSetsPolicy
from sqtorch.neural.checkpoint import latest_checkpoint
from sqtorch.runtime import atomic_write
from sqtorch.tabular import QTable, optimal_q

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import train  # noqa: E402  (the entry point's preflight is tested in-process: no interpreter start-up per case)

pytestmark = pytest.mark.usefixtures("one_thread")
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
FAST = ["debug=fast", "logger=none"]


def _train(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=300, **kw)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["threads=0"], "threads = 0 is outside the allowed range threads >= 1"),
        (["algo=tabular", "algo.max_memory_gib=nan"], "algo.max_memory_gib = nan is outside the allowed range"),
        (["algo=tabular", "algo.max_memory_gib=-1"], "algo.max_memory_gib = -1.0 is outside the allowed range"),
        (["eval.horizon=-5"], "eval.horizon = -5 is outside the allowed range"),
        (["eval.reference=bogus"], "eval.reference = 'bogus' is unknown; allowed: ['auto', 'none']"),
        (["algo.net.hidden=0"], "algo.net.hidden = 0 is outside the allowed range"),
        (["algo.data.reset_prob=2"], "algo.data.reset_prob = 2.0 is outside the allowed range [0, 1]"),
        (["eval.max_states=-1"], "eval.max_states = -1 is outside the allowed range"),
        (["algo.batch_size=abc"], "algo.batch_size: Value 'abc' of type 'str' could not be converted to Integer"),
        (["algo.nett.hidden=3"], "algo.nett: Key 'nett' not in 'DeepSetsConfig'"),
        (["k=11"], "k = 11 is outside the allowed range 1 <= k <= n = 10"),
        (["seed=-1"], "seed = -1 is outside the allowed range seed >= 0"),
        (["algo=nosuch"], "Could not find 'algo/nosuch'"),
        (["ckpt_path=/no/such/run"], "ckpt_path = '/no/such/run': no checkpoint file"),
        (["algo=tabular", "ckpt_path=/tmp"], "ckpt_path is not supported by algo = 'tabular'"),
        (["trainer.accelerator=mps"], "trainer.accelerator = 'mps' is not supported; allowed: ['cpu', 'gpu', 'cuda']"),
        (["trainer.accelerator=auto"], "trainer.accelerator = 'auto' is not supported"),
        (["+env.not_a_param=1"],
         "env.not_a_param is not a parameter of queue(Q, G, mu_min, mu_max, lam, h, b, c, s, gamma)"),
        (["env.lam=1.5"], "lam = 1.5 is outside the allowed range [0, 1]"),
        (["~n"], "n is not set: the env preset sets it"),
    ],
)
def test_bad_config_is_one_line_exit_2_before_anything_is_written(overrides, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        train.preflight([*FAST, *overrides])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("train.py: error: ") and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_bad_config_end_to_end_leaves_no_run_dir(tmp_path):
    proc = _train([*FAST, "threads=0"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["train.py: error: threads = 0 is outside the allowed range "
                                                "threads >= 1 (torch CPU threads)"]
    assert not (tmp_path / "logs").exists()


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


def test_deepsets_act_rejects_out_of_range_states(make_cfg, tmp_path):
    run(make_cfg("debug=fast", "trainer=cpu", "logger=none", "k=2", out=tmp_path))
    policy = DeepSetsPolicy.from_checkpoint(tmp_path / "checkpoints" / "final.ckpt")
    with pytest.raises(ValueError, match=r"s_sub\[0, 0\] = 5 is outside the state space \{0..4\}"):
        policy.act(torch.tensor([0]), torch.tensor([[5, 0]]))
    with pytest.raises(ValueError, match=r"s_g\[0\] = -1 is outside"):
        policy.act(torch.tensor([-1]), torch.tensor([[0, 0]]))


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "qtable.pt"
    table = QTable(torch.zeros(2, 3, 2), 2, 2)
    table.save(path)
    before = path.read_bytes()

    def torn(f):
        f.write(b"partial")
        raise KeyboardInterrupt  # a kill in the middle of the write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, torn)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qtable.pt"]  # no temporary file left


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
    from sqtorch.tabular import learn

    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        learn(make_env("queue", Q=2, G=3), **kwargs)


def test_learn_and_make_env_accept_numpy_integers():
    import numpy as np

    from sqtorch.tabular import learn

    env = make_env("queue", Q=np.int64(2), G=np.int32(3))
    res = learn(env, np.int64(2), m=np.int64(3), T=np.int64(5), seed=np.int64(1))
    assert res.qtable.k == 2 and isinstance(res.qtable.k, int)


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


def test_exact_learner_in_float32_matches_float64():
    from sqtorch.tabular import learn

    env = make_env("queue", Q=2, G=3)
    q64 = learn(env, 3, m="exact", tol=1e-10).qtable.q
    q32 = learn(env, 3, m="exact", dtype=torch.float32, tol=1e-4).qtable.q
    assert q32.dtype == torch.float32
    torch.testing.assert_close(q32.double(), q64, rtol=0, atol=1e-3)
