"""Library side of ``train.py``: one run of any registered algorithm from a Hydra config.

:func:`run` validates the whole config (:func:`sqtorch.experiment.config.validate_config`) before
anything is written, saves it resolved as ``config.yaml``, and hands the run to its algorithm
(:mod:`sqtorch.experiment.registry`). Every run leaves in ``paths.output_dir``: ``config.yaml``,
the algorithm's artifact, TensorBoard event files (``logger=tensorboard``) and, last,
``metrics.json`` (names from :mod:`sqtorch.metrics`): a run dir is complete exactly when it has
``metrics.json``. Every file is written whole or not at all (:func:`sqtorch.runtime.atomic_write`).
"""

from __future__ import annotations

import signal
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from sqtorch.experiment import slurm
from sqtorch.experiment.config import validate_config
from sqtorch.experiment.outputs import CONFIG
from sqtorch.experiment.registry import TrainContext, get_algorithm
from sqtorch.runtime import catch_signals, torch_threads, write_text_atomic


def run(cfg: DictConfig, extra_callbacks: list | None = None) -> dict[str, float]:
    """Validate ``cfg`` (before anything is written), save it resolved, train with its algorithm.

    Returns the final metrics. SIGTERM/SIGINT (and SIGUSR1 under Slurm, which then requeues the
    job) end an interruptible algorithm at a safe point with its state saved and raise
    :class:`sqtorch.runtime.Interrupted` (docs/training.md; :mod:`sqtorch.experiment.slurm`).
    """
    spec = validate_config(cfg)
    algo = get_algorithm(spec.algo.name)
    out = Path(cfg.paths.output_dir)
    spec = slurm.resume_in_place(algo, spec, out)  # Slurm: a requeued job resumes from its own run dir
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
    with torch_threads(spec.threads), catch_signals(slurm.SIGNALS) as flag, slurm.requeue_on_signal():
        if not algo.interruptible:  # a signal ends it the default way
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
        torch.manual_seed(spec.seed)
        return algo.train(TrainContext(cfg, spec, out, flag, list(extra_callbacks or [])))
