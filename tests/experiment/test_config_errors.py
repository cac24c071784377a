"""Bad input to train.py: one line on stderr, exit status 2, nothing written (docs/training.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import train  # noqa: E402  (the entry point's preflight is tested in-process: no interpreter start-up per case)

ROOT = Path(__file__).resolve().parents[2]
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


@pytest.mark.slow
def test_bad_config_end_to_end_leaves_no_run_dir(tmp_path):
    proc = _train([*FAST, "threads=0"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["train.py: error: threads = 0 is outside the allowed range "
                                                "threads >= 1 (torch CPU threads)"]
    assert not (tmp_path / "logs").exists()

