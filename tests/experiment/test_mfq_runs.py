"""algo=tabular_mfq through train.py's library path: local-action envs and their algorithms fit each other only."""

import math

import pytest

from sqtorch import metrics as M
from sqtorch.experiment import ConfigError, run, validate_config
from sqtorch.experiment.runs import collect

FAST_EVAL = ("eval.num_initial=4", "eval.rollouts=8", "logger=none")


@pytest.mark.parametrize(("algo", "env", "fits"), [("tabular", "formation", "'tabular_mfq'"),
                                                    ("deepsets", "formation", "'tabular_mfq'"),
                                                    ("tabular_mfq", "queue", "'deepsets'")])
def test_an_algorithm_refuses_an_env_of_the_other_kind_in_one_line(make_cfg, algo, env, fits):
    match = rf"algo = '{algo}' does not fit env '{env}'.*algorithms for it: \[.*{fits}"
    with pytest.raises(ConfigError, match=match) as e:
        validate_config(make_cfg(f"algo={algo}", f"env={env}", "n=3", "k=2"))
    assert "\n" not in str(e.value)


def test_tabular_mfq_run_exact_gap_is_zero_at_k_equal_n(make_cfg, tmp_path):
    n = 3
    gaps = {}
    for k in (1, n):
        out = tmp_path / f"k{k}"
        metrics = run(make_cfg("algo=tabular_mfq", "env=formation", f"n={n}", f"k={k}", *FAST_EVAL, out=out))
        assert (out / "mfq_table.pt").is_file() and (out / "metrics.json").is_file()
        assert metrics[M.TABULAR_CONVERGED] == 1.0 and math.isfinite(metrics[M.EVAL_RETURN])
        gaps[k] = metrics[M.EVAL_GAP]
    assert gaps[n] == pytest.approx(0.0, abs=1e-9)  # k = n: Q_k is Q* of the n-agent system
    assert gaps[1] >= -1e-9
    [r], missing, skipped = collect([tmp_path / "k1"])
    assert (r.algo, r.k, r.deterministic, missing, skipped) == ("tabular_mfq m=exact", 1, True, [], [])
    assert math.isnan(r.samples)  # the exact operator draws no samples
