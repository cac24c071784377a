"""Validation curves of a study (sqtorch/experiment/curves.py): read from TensorBoard files, tabled and drawn."""

import math
from pathlib import Path
from types import SimpleNamespace

from torch.utils.tensorboard import SummaryWriter

from sqtorch.experiment.curves import read_curves, study_curves, tail_spread
from sqtorch.experiment.plots import plot_validation_curves
from sqtorch.experiment.report import write_outputs


def _log(run_dir: Path, points: dict[str, list[tuple[int, float]]], suffix: str) -> None:
    w = SummaryWriter(str(run_dir), filename_suffix=suffix)
    for key, values in points.items():
        for step, v in values:
            w.add_scalar(key, v, global_step=step)
    w.close()


def _run(path: Path, k: int = 4) -> SimpleNamespace:
    return SimpleNamespace(path=path, env_name="queue", n=10, algo="deepsets", k=k, seed=0)


def _trained_run(tmp_path: Path) -> Path:
    """Validations at 249, 499, 749 (as Lightning logs them), the final metrics at 1000 (= the last validation)."""
    d = tmp_path / "run"
    ret = [(249, -30.0), (499, -25.0), (749, -24.0), (999, -23.5), (1000, -23.5)]
    _log(d, {"eval/return": ret, "eval/return_ci95": [(s, 0.5) for s, _ in ret], "train/td_loss": [(10, 1.0)]}, ".a")
    return d


def test_read_curves_merges_files_and_keeps_the_last_value_of_a_step(tmp_path):
    d = _trained_run(tmp_path)
    _log(d, {"eval/return": [(499, -26.0)]}, ".b")  # a resumed run re-logs step 499 in a later file
    curves = read_curves(d)
    assert set(curves) == {"eval/return", "eval/return_ci95"}  # eval/gap was not logged
    assert [s for s, _ in curves["eval/return"]] == [249, 499, 749, 999, 1000]
    assert dict(curves["eval/return"])[499] == -26.0
    assert read_curves(tmp_path / "nothing") == {}


def test_study_curves_one_per_run_dir_with_the_final_point_merged(tmp_path):
    d = _trained_run(tmp_path)
    runs = [_run(d), _run(d, k=16), _run(tmp_path / "no_logs")]  # a deployed copy shares the dir; no logs: skipped
    (tmp_path / "no_logs").mkdir()
    (c,) = study_curves(runs)
    assert c["steps"] == [249, 499, 749, 1000] and c["k"] == 4
    assert c["return"] == [-30.0, -25.0, -24.0, -23.5] and c["return_ci95"] == [0.5] * 4
    assert "gap" not in c
    assert math.isclose(c["tail_spread"], -23.5 - -24.0)  # from the validation nearest step 750


def test_tail_spread_needs_two_points():
    assert math.isnan(tail_spread([(10, 1.0)]))
    assert tail_spread([(0, 1.0), (100, 3.0)]) == 2.0
    assert tail_spread([(0, 0.0), (50, 1.0), (75, 4.0), (90, 3.0), (100, 4.5)], frac=0.25) == 1.5


def test_curves_are_drawn_and_tabled(tmp_path):
    (c,) = study_curves([_run(_trained_run(tmp_path))])
    gap = dict(c, k=8, gap=[0.5, 0.1, 0.0, 0.0], path="other")
    plot_validation_curves([c, gap], "queue", 10, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 5000
    row = dict(env="queue", n=10, algo="deepsets", k=4, seeds=1, gap_reference="exact V*", gap_exact=0.1,
               gap_exact_ci95=0.0, gap_mc=0.1, gap_mc_ci95=0.0, mc_return=-23.5, exact_return=-23.4,
               learn_seconds=1.0, samples=1e5, size=100, kind="subsample-q", v_star=-23.3)
    out = tmp_path / "study"
    result = write_outputs(out, [row], [row], [], {"title": "t"}, plots=["validation_curves"], curves=[c])
    assert result["curves"] == [c]
    assert "validation_curves_queue_n10.png" in result["plots"]
    report = (out / "report.md").read_text()
    assert "## Validation curves" in report
    assert "| queue | 10 | deepsets | 4 | 0 | 1000 | 4 | -30 | -23.5 | 0.5 | 6.5 | 0.5 |" in report
