"""examples/my_simulator.py: a user's simulator outside the package runs, trains through train.py and is
evaluated through evaluate.py with the commands of its docstring (shortened by debug=fast)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "examples" / "my_simulator.py").read_text()


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_docstring_commands_train_and_evaluate_the_example(tmp_path) -> None:
    train = ("python train.py env=custom env._target_=examples.my_simulator.EVFleet n=1000 k=8 "
             "hydra.run.dir=logs/ev_fleet")
    assert train in DOC and "python evaluate.py runs=logs/ev_fleet" in DOC
    out = tmp_path / "ev_fleet"
    p = _run("train.py", *train.split()[2:-1], "n=200", "debug=fast", f"hydra.run.dir={out}")
    assert p.returncode == 0, p.stderr[-2000:]
    assert (out / "checkpoints" / "final.ckpt").exists()
    p = _run("evaluate.py", f"runs={out}", "eval.num_initial=2", "eval.rollouts=2", f"hydra.run.dir={tmp_path / 'ev'}")
    assert p.returncode == 0, p.stderr[-2000:]
    rows = json.loads((tmp_path / "ev" / "summary.json").read_text())["summary"]
    assert len(rows) == 1 and rows[0]["env"] == "EVFleet" and rows[0]["k"] == 8


@pytest.mark.slow
def test_the_example_script_compares_two_policies() -> None:
    p = _run("examples/my_simulator.py")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "V(aware) = " in p.stdout and "difference" in p.stdout


def test_an_unset_custom_env_is_refused_in_one_line(tmp_path) -> None:
    p = _run("train.py", "env=custom", f"hydra.run.dir={tmp_path / 'run'}")
    assert p.returncode != 0 and "env._target_ is not set" in p.stderr
    assert not (tmp_path / "run").exists()
