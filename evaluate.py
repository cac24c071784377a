"""Evaluate saved SUBSAMPLE-Q policies as k scales, or run a named study end to end (docs/model.md §5).

    python evaluate.py runs=logs/multirun/<date>            # every run in a (multi)run dir
    python evaluate.py 'runs=[<dir>,<dir>]' expect_env=queue      # several dirs, all must be queue runs
    python evaluate.py study=queue_k_scaling                # train the study's sweeps, then evaluate
    python evaluate.py study=baselines                      # SUBSAMPLE-Q variants vs SB3 DQN / PPO
    python evaluate.py study=dr_n8 hydra/launcher=slurm hydra.launcher.partition=<p>   # sweeps as Slurm jobs
    python evaluate.py study=queue_k_scaling compare=docs/queue_k_scaling/summary.json   # reproduce?

A study is config only (``conf/study/<name>.yaml``, docs/results.md lists them): its ``sweeps``
(with ``common`` overrides merged into each) are trained by ``train.py -m``, then every run is
evaluated; ``label``, ``deploy`` and ``plots`` name variants, add evaluations at other k′ / n′ and
study-specific plots (:mod:`sqtorch.experiment.study`). A tabular job refused by its memory limit
is recorded as refused (report.md, summary.json), not as missing.

Outputs in the evaluation's run dir: results.csv, summary.json, PNG plots, report.md and
TensorBoard scalars. A corrupt run (its config.yaml, metrics.json or artifact does not load) is
skipped and listed with the file and reason in report.md and summary.json; ``strict=true`` aborts
instead. A run dir given twice counts once. Bad input (no usable runs, wrong env, a corrupt run
with strict=true) is one line on stderr and exit code 2, with no output files written.
``compare=<summary.json or its dir>`` checks every row against a committed summary (tabular
rows identical, neural and baseline means within the CIs) and exits 1 if any row fails.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from sqtorch.experiment.curves import study_curves
from sqtorch.experiment.groups import evaluate_runs
from sqtorch.experiment.report import write_outputs
from sqtorch.experiment.runs import StudyError, collect
from sqtorch.experiment.study import (
    CI_METHOD,
    check_study,
    compare,
    deployed,
    environment,
    label_runs,
    split_refused,
    summarize,
    sweep_overrides,
)
from sqtorch.runtime import torch_threads

TRAIN = Path(__file__).resolve().parent / "train.py"


def launcher_overrides() -> list[str]:
    """This command's ``hydra/launcher=...`` and ``hydra.launcher.*`` overrides: a study's sweeps run with them
    (``hydra/launcher=slurm``: every training run a Slurm job)."""
    if not HydraConfig.initialized():
        return []
    return [o for o in HydraConfig.get().overrides.hydra if o.startswith(("hydra/launcher=", "hydra.launcher."))]


def run_sweeps(study: DictConfig, out: Path, reuse: bool = False) -> tuple[list[Path], dict[str, float], list[str]]:
    """Run every training sweep of ``study`` as ``train.py -m`` into ``out/train/<name>``.

    ``reuse``: a sweep whose dir already holds a finished run (``metrics.json``) is not trained
    again; its training time is taken from ``out/summary.json`` of the earlier evaluation.
    """
    roots, seconds, reused = [], {}, []
    before = {}
    if reuse and (out / "summary.json").is_file():
        before = json.loads((out / "summary.json").read_text()).get("train_seconds", {})
    for name, overrides in sweep_overrides(study).items():
        sweep_dir = out / "train" / name
        if reuse and sweep_dir.is_dir() and any(sweep_dir.rglob("metrics.json")):
            print(f"[evaluate] {name}: reusing the runs in {sweep_dir} (reuse_trained=true)", flush=True)
            seconds[name] = before.get(name, float("nan"))
            roots.append(sweep_dir)
            reused.append(name)
            continue
        t0 = time.perf_counter()
        cmd = [sys.executable, str(TRAIN), "-m", *overrides, *launcher_overrides(), f"hydra.sweep.dir={sweep_dir}"]
        print(f"[evaluate] {name}: {' '.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, check=False)  # failed jobs show up as missing, the rest is evaluated
        seconds[name] = time.perf_counter() - t0
        roots.append(sweep_dir)
    return roots, seconds, reused


def load_committed(path: str | Path) -> tuple[Path, list[dict]]:
    """The ``summary`` rows of a committed ``summary.json`` (or of the one in directory ``path``)."""
    p = Path(path)
    p = p / "summary.json" if p.is_dir() else p
    try:
        return p, json.loads(p.read_text())["summary"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StudyError(f"compare = '{path}': {p} is not a readable summary.json ({type(e).__name__}: {e})") from e


def evaluate(cfg: DictConfig, out: Path) -> dict:
    """Collect (or first train) the runs of ``cfg``, evaluate them, write the outputs into ``out``."""
    t_start = time.perf_counter()
    meta: dict = {"evaluation": OmegaConf.to_container(cfg.eval, resolve=True), "ci95": CI_METHOD,
                  "environment": environment(), "command": "python " + shlex.join(sys.argv)}
    committed = None
    if cfg.get("compare"):
        meta["compare"], committed = load_committed(cfg.compare)
        meta["compare"] = str(meta["compare"])
    study = cfg.get("study")
    if study is not None:
        meta["study"] = check_study(study)
        roots, meta["train_seconds"], meta["reused_sweeps"] = run_sweeps(study, out, bool(cfg.get("reuse_trained")))
        meta["title"], env = study.title, study.get("env")
    elif cfg.get("runs"):
        runs = cfg.runs
        roots = [Path(r) for r in (runs if OmegaConf.is_list(runs) else [runs])]
        meta["title"], env = f"k-scaling of {', '.join(map(str, roots))}", cfg.get("expect_env")
    else:
        raise StudyError("give runs=<dir> (or runs=[<dir>,...]) or study=<name> (see conf/study/)")
    t0 = time.perf_counter()
    runs, missing, skipped = collect(roots, env=env, strict=bool(cfg.get("strict")))
    for s in skipped:
        print(f"[evaluate] skipped corrupt run: {s['reason']}", flush=True)
    spec = meta.get("study", {})
    refused, missing = split_refused(missing, spec.get("label"))
    for r in refused:
        print(f"[evaluate] refused: {r['algo']} k={r['k']} ({r['entries']:,} entries): {r['reason']}", flush=True)
    runs = label_runs(runs, spec.get("label"))
    deploy = spec.get("deploy") or {}
    runs += deployed(runs, k=deploy.get("k") or (), n=deploy.get("n") or (), train_k=deploy.get("train_k"))
    with torch_threads(cfg.get("threads")):
        rows = evaluate_runs(runs, **OmegaConf.to_container(cfg.eval, resolve=True))
    meta["evaluate_seconds"] = time.perf_counter() - t0
    meta["wall_seconds"] = time.perf_counter() - t_start
    summary = summarize(rows)
    comparison = compare(summary, committed) if committed is not None else None
    kinds = spec.get("plots") or ()
    curves = study_curves(runs) if "validation_curves" in kinds else None
    result = write_outputs(out, rows, summary, missing, meta, skipped, comparison, refused=refused,
                           plots=kinds, curves=curves)
    print(f"[evaluate] {len(rows)} policies, {len(missing)} missing jobs, {len(refused)} refused (memory), "
          f"{len(skipped)} skipped (corrupt) "
          f"-> {out}/report.md", flush=True)
    if comparison is not None:
        bad = [c for c in comparison if not c["ok"]]
        print(f"[evaluate] reproduction check against {meta['compare']}: {len(comparison) - len(bad)} of "
              f"{len(comparison)} rows ok" + "".join(f"\n  FAIL {c['algo']} k={c['k']}: {c['status']}" for c in bad),
              flush=True)
    return result


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        result = evaluate(cfg, Path(HydraConfig.get().runtime.output_dir))
    except StudyError as e:
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    if "compare" in result and not all(c["ok"] for c in result["compare"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
