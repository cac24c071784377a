# ruff: noqa: E402  (the imports after the SIGUSR1 block below)
"""Hydra entry point for tabular and DeepSets SUBSAMPLE-Q (docs/model.md §2, §3).

    python train.py env=queue k=8                  # DeepSets (algo=deepsets is the default)
    python train.py algo=tabular env=queue k=8     # tabular learn(...)
    python train.py -m k=2,4 seed=0,1 debug=fast   # sweep; one run dir per job
    python train.py ... ckpt_path=<run dir>        # resume a killed DeepSets run

Exit status: 0 done; 2 bad config, artifact or request (one line on stderr, nothing written);
128 + signal number after SIGTERM/SIGINT/SIGUSR1 (the run saved a checkpoint first; under Slurm
SIGUSR1 also requeues the job, docs/training.md); 1 anything else.
``train(cfg)`` is a plain function (tests call it with a composed config); ``main`` is the Hydra
wrapper that returns the validation metric to sweepers.
"""

from __future__ import annotations

import shutil
import signal
import sys
from pathlib import Path

# Slurm's requeue signal (SIGUSR1) waits, blocked, until the run's handler is installed: arriving
# during start-up (the imports below take seconds) it would otherwise end the process and the job.
if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})

import hydra
from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from sqtorch.experiment import ConfigError, run, validate_config
from sqtorch.metrics import OPTIMIZED_METRIC
from sqtorch.runtime import Interrupted

CONF = Path(__file__).resolve().parent / "conf"
HYDRA_FILES = {".hydra", "train.log"}  # what Hydra itself writes into a job's dir


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one experiment described by ``cfg``; returns its final metrics."""
    return run(cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        metrics = train(cfg)
    except ConfigError:  # a sweep's job with a bad value: Hydra reports it, no directory is left
        out = Path(HydraConfig.get().runtime.output_dir)
        if {p.name for p in out.iterdir()} <= HYDRA_FILES:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return metrics[cfg.get("optimized_metric") or OPTIMIZED_METRIC]


def one_line(e: BaseException) -> str:
    """The message of a config error on one line, naming the key (OmegaConf's cause when there is one)."""
    cause = e.__cause__ if isinstance(e.__cause__, OmegaConfBaseException) else e
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        return f"{cause.full_key}: {str(cause.msg).splitlines()[0]}"
    lines = [line.strip() for line in str(e).split("Config search path")[0].splitlines() if line.strip()]
    return lines[0] + (f" {' '.join(lines[1:])}" if len(lines) > 1 else "")


def preflight(argv: list[str]) -> None:
    """Compose and validate a single run's config as Hydra will, before Hydra creates its run dir.

    Bad input then costs one line on stderr and exit status 2, and leaves no directory behind.
    Sweeps (``-m``) are validated per job by :func:`sqtorch.experiment.run` (a failing job is
    reported and the others run).
    """
    args = get_args_parser().parse_args(argv)
    if args.multirun or args.cfg or args.help or args.hydra_help or args.info or args.shell_completion:
        return
    overrides = [o for o in args.overrides if not o.lstrip("+~").startswith("hydra")]
    try:
        with initialize_config_dir(str(CONF), version_base="1.3"):
            validate_config(compose(args.config_name or "config", overrides=overrides))
    except (HydraException, OmegaConfBaseException, ConfigError) as e:
        print(f"train.py: error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    preflight(sys.argv[1:])
    try:
        main()
    except Interrupted as e:
        sweep = " (the sweep stops here: its later jobs did not start)" if "-m" in sys.argv[1:] else ""
        print(f"train.py: {e}{sweep}", file=sys.stderr)
        sys.exit(e.exit_code)
