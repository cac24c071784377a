"""evaluate.py end to end on a tiny tabular multirun (subprocesses, as a user runs it)."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))
FAST_EVAL = ["eval.num_initial=4", "eval.rollouts=8", "threads=1"]


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def multirun(tmp_path_factory) -> Path:
    """queue, n = 4: jobs k = 1, 9 (k > n: fails), 2."""
    d = tmp_path_factory.mktemp("multirun")
    p = run("train.py", "-m", "algo=tabular", "env=queue", "n=4", "k=1,9,2", "seed=0", "debug=fast",
            f"hydra.sweep.dir={d}")
    assert "k = 9 is outside the allowed range 1 <= k <= n = 4" in p.stdout + p.stderr
    assert not list(d.glob("1_*"))  # a job with a bad value leaves no directory
    killed = d / "3_k=3,seed=0"  # a job killed before it finished: config and checkpoints, no metrics.json
    shutil.copytree(next(d.glob("2_*")), killed)
    (killed / "metrics.json").unlink()
    return d


def evaluate(out: Path, *args: str) -> subprocess.CompletedProcess:
    return run("evaluate.py", *args, *FAST_EVAL, f"hydra.run.dir={out}")


def test_missing_job_is_reported_and_the_rest_evaluated(multirun, tmp_path):
    p = evaluate(tmp_path / "ev", f"runs={multirun}", "expect_env=queue")
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader(open(tmp_path / "ev" / "results.csv")))
    assert sorted(int(r["k"]) for r in rows) == [1, 2]
    for r in rows:  # exact V* at n = 4 is tractable: exact and MC agree within the MC CI (+ slack)
        assert r["gap_reference"] == "exact V*"
        assert abs(float(r["mc_return"]) - float(r["exact_return"])) <= 2 * float(r["mc_ci95"]) + 1e-9
        assert float(r["gap_exact"]) >= -1e-9
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert len(summary["missing"]) == 1 and "k=3" in summary["missing"][0]["path"]
    for png in summary["plots"]:
        assert (tmp_path / "ev" / png).stat().st_size > 5000
    assert "Missing jobs" in (tmp_path / "ev" / "report.md").read_text()


def test_seed_fixed_evaluation_reproduces_results_exactly(multirun, tmp_path):
    for name in ("a", "b"):
        assert evaluate(tmp_path / name, f"runs={multirun}").returncode == 0
    assert (tmp_path / "a" / "results.csv").read_text() == (tmp_path / "b" / "results.csv").read_text()


def _assert_clean_failure(p: subprocess.CompletedProcess, out: Path, message: str) -> None:
    assert p.returncode == 2
    err = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and message in err[0], p.stderr
    assert not (out / "results.csv").exists() and not (out / "summary.json").exists()


def test_directory_without_runs(tmp_path):
    (tmp_path / "empty").mkdir()
    p = evaluate(tmp_path / "ev", f"runs={tmp_path / 'empty'}")
    _assert_clean_failure(p, tmp_path / "ev", "no run dirs")


def test_run_from_another_env(multirun, tmp_path):
    p = evaluate(tmp_path / "ev", f"runs={multirun}", "expect_env=demand_response")
    _assert_clean_failure(p, tmp_path / "ev", "but env = 'demand_response' was requested")


def test_artifact_that_does_not_load(multirun, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(multirun, broken)
    job = next(p.parent for p in broken.rglob("qtable.pt"))
    (job / "qtable.pt").write_bytes(b"not a torch file")
    p = evaluate(tmp_path / "ev", f"runs={broken}")
    _assert_clean_failure(p, tmp_path / "ev", "artifact does not load")
