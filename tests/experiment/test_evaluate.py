"""evaluate.py end to end on a tiny tabular multirun (subprocesses, as a user runs it)."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # subprocess runs and trainings: the whole module is slow
ROOT = Path(__file__).resolve().parents[2]
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


def _copy_with_one_job(multirun: Path, dst: Path, k: int) -> tuple[Path, Path]:
    """A copy of the fixture multirun and its job dir with ``k=<k>``."""
    shutil.copytree(multirun, dst)
    job = next(p.parent for p in dst.rglob("qtable.pt") if f"k={k}" in p.parent.name)
    return dst, job


@pytest.mark.parametrize(
    "corrupt, message",
    [
        ("qtable.pt", "artifact does not load"),
        ("metrics.json", "metrics.json: corrupt metrics.json"),
        ("config.yaml", "config.yaml: corrupt config.yaml"),
    ],
)
def test_corrupt_run_is_skipped_and_named(multirun, tmp_path, corrupt, message):
    broken, job = _copy_with_one_job(multirun, tmp_path / "broken", k=2)
    (job / corrupt).write_bytes(b"{not: [valid" if corrupt != "qtable.pt" else b"not a torch file")
    p = evaluate(tmp_path / "ev", f"runs={broken}")
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader(open(tmp_path / "ev" / "results.csv")))
    assert [int(r["k"]) for r in rows] == [1]  # the good run is evaluated
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert len(summary["skipped"]) == 1 and summary["skipped"][0]["path"] == str(job.resolve())
    reason = summary["skipped"][0]["reason"]
    assert message in reason and (corrupt == "qtable.pt" or str(job.resolve() / corrupt) in reason), reason
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "Skipped runs (corrupt)" in report and message in report


def test_corrupt_run_with_strict_aborts(multirun, tmp_path):
    broken, job = _copy_with_one_job(multirun, tmp_path / "broken", k=2)
    (job / "metrics.json").write_text('{"eval/return": ')
    p = evaluate(tmp_path / "ev", f"runs={broken}", "strict=true")
    _assert_clean_failure(p, tmp_path / "ev", f"{job / 'metrics.json'}: corrupt metrics.json")


def test_only_corrupt_runs_is_an_error(multirun, tmp_path):
    broken, job = _copy_with_one_job(multirun, tmp_path / "broken", k=2)
    (job / "qtable.pt").write_bytes(b"x")
    p = evaluate(tmp_path / "ev", f"runs='{job}'")  # quoted: the job dir's name has '=' and ','
    _assert_clean_failure(p, tmp_path / "ev", "none of the 1 run dirs is usable")


def test_the_same_run_given_twice_counts_once(multirun, tmp_path):
    job = next(p.parent for p in multirun.rglob("qtable.pt") if "k=1" in p.parent.name)
    p = evaluate(tmp_path / "ev", f"runs=['{job}','{job}','{multirun}']")
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader(open(tmp_path / "ev" / "results.csv")))
    assert sorted(int(r["k"]) for r in rows) == [1, 2]
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert all(s["seeds"] == 1 for s in summary["summary"])


def test_rerun_reproduces_committed_summary(multirun, tmp_path):
    """compare=: a rerun of the same runs reproduces every row; a perturbed committed summary fails."""
    assert evaluate(tmp_path / "a", f"runs={multirun}").returncode == 0
    committed = json.loads((tmp_path / "a" / "summary.json").read_text())
    env = committed["environment"]
    assert env["versions"]["torch"] and env["cpu_count"] and env["torch_cpu_capability"]
    assert "Hardware and libraries" in (tmp_path / "a" / "report.md").read_text()
    p = evaluate(tmp_path / "b", f"runs={multirun}", f"compare={tmp_path / 'a'}")
    assert p.returncode == 0, p.stdout + p.stderr
    check = json.loads((tmp_path / "b" / "summary.json").read_text())["compare"]
    assert [c["status"] for c in check] == ["identical", "identical"] and all(c["ok"] for c in check)
    committed["summary"][0]["gap_exact"] += 0.5  # a tabular row that no longer reproduces
    (tmp_path / "c.json").write_text(json.dumps(committed))
    p = evaluate(tmp_path / "d", f"runs={multirun}", f"compare={tmp_path / 'c.json'}")
    assert p.returncode == 1 and "1 of 2 rows ok" in p.stdout and "FAIL tabular m=2 k=1: differs" in p.stdout
    assert "Reproduction check" in (tmp_path / "d" / "report.md").read_text()


def test_compare_statuses():
    from sqtorch.experiment.study import compare

    def row(algo, k, mean, ci, seeds=3):
        return dict(env="queue", n=10, algo=algo, k=k, seeds=seeds, gap_reference="exact V*", gap_exact=mean,
                    gap_exact_ci95=ci, deterministic=algo.startswith("tabular"))

    committed = [row("deepsets", 1, 1.0, 0.2), row("deepsets", 2, 1.0, 0.2), row("deepsets", 3, 1.0, 0.2),
                 row("tabular m=20", 1, 0.5, 0.1), row("deepsets", 4, 1.0, 0.2)]
    rerun = [row("deepsets", 1, 1.1, 0.2), row("deepsets", 2, 1.25, 0.2), row("deepsets", 3, 1.5, 0.2),
             row("tabular m=20", 1, 0.55, 0.1), row("deepsets", 5, 1.0, 0.2)]
    got = {(c["algo"], c["k"]): (c["status"], c["ok"]) for c in compare(rerun, committed)}
    assert got == {
        ("deepsets", 1): ("inside", True),  # in the committed CI
        ("deepsets", 2): ("consistent", True),  # outside it, but within the CI of the difference
        ("deepsets", 3): ("differs", False),
        ("tabular m=20", 1): ("inside", False),  # a deterministic algorithm must reproduce exactly
        ("deepsets", 4): ("missing", False),
        ("deepsets", 5): ("new", True),
    }


def test_t_quantiles():
    from sqtorch.experiment.study import t95

    assert t95(2) == 4.303 and t95(9) == 2.262 and 1.96 < t95(200) < 1.975
    with pytest.raises(ValueError, match="dof = 0 is outside"):
        t95(0)


def _first_job(overrides: list[str]) -> list[str]:
    """The first job of a sweep: every sweep override (``k=1,2``, ``k=range(1,11)``, lists) at its first value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [f"{o.get_key_element()}={next(o.sweep_string_iterator())}" if o.is_sweep_override() else o.input_line
            for o in parsed]


@pytest.mark.parametrize("study", sorted(p.stem for p in (ROOT / "conf" / "study").glob("*.yaml")))
def test_study_sweeps_compose_and_validate(study):
    """Every study composes under evaluate.py, the first job of each sweep is a valid train.py config, and no
    sweep mixes an algo-group sweep with algo.* keys (Hydra checks algo.* against the default algo before it
    expands the sweep)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from sqtorch.experiment import validate_config
    from sqtorch.experiment.study import sweep_overrides

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        spec = compose("evaluate", overrides=[f"study={study}"]).study
        assert spec.name == study
        for name, overrides in sweep_overrides(spec).items():
            group_sweep = any(o.startswith("algo=") and "," in o for o in overrides)
            assert not (group_sweep and any(o.startswith("algo.") for o in overrides)), f"{study}.{name}"
            cfg = compose("config", overrides=["paths.output_dir=/nonexistent", *_first_job(overrides)])
            validate_config(cfg)
    GlobalHydra.instance().clear()


def test_gap_plot_when_every_gap_is_zero(tmp_path):
    """One k, every gap 0 (e.g. one config resumed many times): the log axis must not collapse."""
    from sqtorch.experiment.groups import REF_BEST
    from sqtorch.experiment.plots import plot_gap

    row = dict(env="demand_response", n=8, algo="tabular m=20", k=5, seeds=3, gap_reference=REF_BEST,
               gap_exact=float("nan"), gap_mc=0.0, gap_mc_ci95=0.0, mc_return=1.0, learn_seconds=1.0)
    plot_gap([row], "demand_response", 8, tmp_path / "gap.png")
    assert (tmp_path / "gap.png").stat().st_size > 5000
