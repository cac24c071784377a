"""Evaluate saved SUBSAMPLE-Q policies as k scales, or run a named study end to end (docs/model.md §5).

    python evaluate.py runs=logs/multirun/<date>            # every run in a (multi)run dir
    python evaluate.py 'runs=[<dir>,<dir>]' expect_env=queue      # several dirs, all must be queue runs
    python evaluate.py study=queue_k_scaling                # train the study's sweeps, then evaluate

Outputs in the evaluation's run dir: results.csv, summary.json, PNG plots, report.md and
TensorBoard scalars. Bad input (no runs, wrong env, an artifact that does not load) is one line on
stderr and exit code 2, with no output files written.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from sqtorch.experiment.report import write_outputs
from sqtorch.experiment.runs import StudyError, collect
from sqtorch.experiment.study import evaluate_runs, summarize
from sqtorch.runtime import torch_threads

TRAIN = Path(__file__).resolve().parent / "train.py"


def run_sweeps(study: DictConfig, out: Path) -> tuple[list[Path], dict[str, float]]:
    """Run every training sweep of ``study`` as ``train.py -m`` into ``out/train/<name>``."""
    roots, seconds = [], {}
    for name, overrides in study.sweeps.items():
        sweep_dir = out / "train" / name
        t0 = time.perf_counter()
        cmd = [sys.executable, str(TRAIN), "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]
        print(f"[evaluate] {name}: {' '.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, check=False)  # failed jobs show up as missing, the rest is evaluated
        seconds[name] = time.perf_counter() - t0
        roots.append(sweep_dir)
    return roots, seconds


def evaluate(cfg: DictConfig, out: Path) -> dict:
    """Collect (or first train) the runs of ``cfg``, evaluate them, write the outputs into ``out``."""
    meta: dict = {"evaluation": OmegaConf.to_container(cfg.eval, resolve=True)}
    study = cfg.get("study")
    if study is not None:
        roots, meta["train_seconds"] = run_sweeps(study, out)
        meta["title"], env = study.title, study.get("env")
    elif cfg.get("runs"):
        runs = cfg.runs
        roots = [Path(r) for r in (runs if OmegaConf.is_list(runs) else [runs])]
        meta["title"], env = f"k-scaling of {', '.join(map(str, roots))}", cfg.get("expect_env")
    else:
        raise StudyError("give runs=<dir> (or runs=[<dir>,...]) or study=<name> (see conf/study/)")
    t0 = time.perf_counter()
    runs, missing = collect(roots, env=env)
    with torch_threads(cfg.get("threads")):
        rows = evaluate_runs(runs, **OmegaConf.to_container(cfg.eval, resolve=True))
    meta["evaluate_seconds"] = time.perf_counter() - t0
    result = write_outputs(out, rows, summarize(rows), missing, meta)
    print(f"[evaluate] {len(rows)} policies, {len(missing)} missing jobs -> {out}/report.md", flush=True)
    return result


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        evaluate(cfg, Path(HydraConfig.get().runtime.output_dir))
    except StudyError as e:
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
