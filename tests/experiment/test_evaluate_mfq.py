"""evaluate.py on runs whose local agents act (sqtorch/experiment/groups.py, docs/model.md §7.5): the
decentralized Algorithm 2 by Monte Carlo and exactly, against the exact V* of the full system."""

from __future__ import annotations

import math

import pytest

from sqtorch.experiment import run
from sqtorch.experiment.groups import REF_EXACT, evaluate_runs
from sqtorch.experiment.runs import load_run

pytestmark = pytest.mark.usefixtures("one_thread")


def test_local_action_runs_get_exact_gaps_zero_at_k_equal_n(make_cfg, tmp_path) -> None:
    n = 3
    for k in (1, n):
        run(make_cfg("env=formation", "algo=tabular_mfq", f"n={n}", f"k={k}", "logger=none", "eval.num_initial=2",
                     "eval.rollouts=2", out=tmp_path / f"k{k}"))
    runs = [load_run(tmp_path / f"k{k}") for k in (1, n)]
    rows = evaluate_runs(runs, num_initial=8, rollouts=8, seed=5, max_states=200_000)
    assert [r["k"] for r in rows] == [1, n]
    for r in rows:
        assert r["gap_reference"] == REF_EXACT and math.isfinite(r["exact_return"])
        assert r["gap_exact"] >= -1e-9  # V* bounds every policy's value (theory), never the reverse
        # Monte Carlo agrees with the exact value up to its CI and the horizon's tail (gamma^H <= 1e-4)
        assert abs(r["mc_return"] - r["exact_return"]) <= 3 * r["mc_ci95"] + 1e-3 * abs(r["exact_return"])
    assert abs(rows[1]["gap_exact"]) < 1e-9  # k = n: Q_k is Q*, the executed policy optimal (formation: no ties)
