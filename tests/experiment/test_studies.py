"""Studies as config: common overrides, labels, deployment at other k′ / n′, refused tables, extra plots.

End to end on ``conf/study/debug.yaml`` (queue, n = 4; seconds), as a user runs it.
"""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)


def test_common_overrides_merge_and_the_sweep_wins():
    from sqtorch.experiment.study import sweep_overrides

    study = {"common": ["n=8", "eval.reference=none", "seed=0"],
             "sweeps": {"a": ["algo=tabular", "seed=0,1"], "b": ["+env.extra=1", "n=10"]}}
    assert sweep_overrides(study) == {
        "a": ["n=8", "eval.reference=none", "algo=tabular", "seed=0,1"],
        "b": ["eval.reference=none", "seed=0", "+env.extra=1", "n=10"],
    }
    assert sweep_overrides({"sweeps": {"a": ["k=1"]}}) == {"a": ["k=1"]}


def test_the_memory_check_is_the_learners_refusal():
    """``check_memory`` refuses exactly the tables ``learn`` refuses, with the same message."""
    import torch

    from sqtorch.envs import queue
    from sqtorch.tabular import learn
    from sqtorch.tabular.learner import check_memory

    env = queue()
    need_2 = check_memory(env, 2, 2, torch.float64, 1.0, torch.get_num_threads())
    limit = need_2 * 1.5  # k = 2 fits, k = 3 (35 count vectors instead of 15) does not
    with pytest.raises(ValueError) as direct:
        check_memory(env, 3, 2, torch.float64, limit, torch.get_num_threads())
    with pytest.raises(ValueError) as learner:
        learn(env, 3, 2, T=2, max_memory_gib=limit)
    assert str(direct.value) == str(learner.value) and "max_memory_gib" in str(direct.value)
    assert learn(env, 2, 2, T=2, max_memory_gib=limit).qtable.q.shape == (env.G, 15, env.A)


@pytest.fixture(scope="module")
def debug_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "debug"
    p = run("evaluate.py", "study=debug", "threads=1", f"hydra.run.dir={out}")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return out


@pytest.mark.slow
def test_debug_study_writes_every_output(debug_study):
    summary = json.loads((debug_study / "summary.json").read_text())
    for name in ("results.csv", "report.md", *summary["plots"]):
        assert (debug_study / name).stat().st_size > 500, name
    kinds = {p.split("_queue")[0].split("_n")[0] for p in summary["plots"]}
    assert {"deploy", "size_vs_k", "return_vs_samples", "return_vs_time", "gap_vs_k_by_env",
            "validation_curves"} <= kinds
    # one validation curve per trained net (validations every 10 steps), none per deployed copy
    curves = {c["algo"]: c for c in summary["curves"]}
    assert set(curves) == {"deepsets max_steps=20", "deepsets max_steps=40"}
    assert curves["deepsets max_steps=40"]["steps"] == [9, 19, 29, 40]
    assert all(len(c["return"]) == len(c["steps"]) for c in curves.values())
    assert "## Validation curves" in (debug_study / "report.md").read_text()
    # the tabular k = 3 job was refused by its memory limit: recorded with the learner's message, not missing
    assert summary["missing"] == [] and [r["k"] for r in summary["refused"]] == [3]
    assert "max_memory_gib = 2e-05" in summary["refused"][0]["reason"]
    assert "Refused tables" in (debug_study / "report.md").read_text()
    rows = list(csv.DictReader(open(debug_study / "results.csv")))
    got = {(r["algo"], int(r["n"]), int(r["k"]), int(r["train_k"])) for r in rows}
    want = {("tabular m=2", n, k, k) for n in (4, 6) for k in (1, 2)}
    for steps in (20, 40):  # label: the two step budgets are two algos; deploy: k′ = 1, 3, 4 and n′ = 6
        want |= {(f"deepsets max_steps={steps}", n, 2, 2) for n in (4, 6)}
        want |= {(f"deepsets max_steps={steps} trained at k=2", n, k, 2) for n in (4, 6) for k in (1, 3, 4)}
    assert got == want
    for r in rows:  # every policy is evaluated exactly (n = 4 and 6 are tractable) and by Monte Carlo
        assert r["gap_reference"] == "exact V*" and float(r["gap_exact"]) >= -1e-9
    # a deployed net is the trained net: same size, training cost and samples as the run it comes from
    trained = {(r["algo"], r["n"]): r for r in rows if r["k"] == r["train_k"]}
    for r in rows:
        if r["k"] != r["train_k"]:
            src = trained[(r["algo"].split(" trained at")[0], r["n"])]
            assert (r["size"], r["samples"], r["learn_seconds"], r["path"]) == (
                src["size"], src["samples"], src["learn_seconds"], src["path"])


@pytest.mark.slow
def test_debug_study_rerun_reproduces_its_tabular_rows(debug_study, tmp_path):
    """compare=: the tabular sweep retrained from scratch reproduces its committed rows bit for bit."""
    out = tmp_path / "rerun"
    shutil.copytree(debug_study / "train", out / "train")
    shutil.copy(debug_study / "summary.json", out / "summary.json")
    shutil.rmtree(out / "train" / "tabular")  # retrained; the DeepSets sweep is reused
    p = run("evaluate.py", "study=debug", "threads=1", "reuse_trained=true",
            f"compare={debug_study / 'summary.json'}", f"hydra.run.dir={out}")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    check = json.loads((out / "summary.json").read_text())["compare"]
    tabular = [c for c in check if c["algo"].startswith("tabular")]
    assert len(tabular) == 4 and all(c["status"] == "identical" for c in tabular)
    assert all(c["ok"] for c in check)


def test_a_bad_study_key_is_one_line_before_training(tmp_path):
    out = tmp_path / "bad"
    p = run("evaluate.py", "study=debug", "+study.plot=[size_vs_k]", f"hydra.run.dir={out}")
    assert p.returncode == 2 and "study has ['plot']; allowed:" in p.stderr
    assert not (out / "train").exists()


@pytest.mark.parametrize("key, value, message", [
    ("plots", ["sizes"], "study.plots has ['sizes']; allowed: deploy_heatmap"),
    ("deploy", {"kk": [1]}, "study.deploy has ['kk']; allowed: k, n, train_k"),
    ("label", {"seed": ["seed"]}, "study.label has ['seed']; allowed: env, algo"),
    ("sweeps", {}, "study.sweeps is empty"),
])
def test_study_keys_are_checked(key, value, message):
    from sqtorch.experiment.runs import StudyError
    from sqtorch.experiment.study import check_study

    good = {"name": "x", "sweeps": {"a": ["k=1"]}, "plots": ["size_vs_k"], "deploy": {"k": [2]}}
    assert check_study(good) == good
    with pytest.raises(StudyError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_study(dict(good, **{key: value}))
