"""Slurm jobs: preemption and requeue with one checkpoint mechanism (docs/training.md, "Running on a Slurm cluster").

Inside a Slurm job (``SLURM_JOB_ID`` set) a run's directory is the same after a requeue
(``logs/runs/slurm-<job id>[_<task>]/``, :func:`sqtorch.experiment.config.run_name`; a sweep job's
dir is fixed by its launcher), and every stop goes through the run's own step-boundary checkpoint
(``StopOnSignal`` of :mod:`sqtorch.experiment.algos.deepsets`):

- SIGTERM (preemption, ``scontrol requeue``, ``scancel``): finish the optimizer step, save
  ``checkpoints/last.ckpt``, exit ``143``. If Slurm requeues the job, it resumes.
- SIGUSR1 (``#SBATCH --signal=SIGUSR1@90``, ``scancel --signal=USR1``): the same checkpoint, then
  the job requeues itself (:func:`requeue`) and exits ``138``.
- On every (re)start a resumable (DeepSets) run whose directory already holds checkpoints resumes from the one
  with the highest step that loads (:func:`resume_in_place`). A tabular run is deterministic and
  runs again from the start: the same Q-table, bit for bit.

Lightning's own SLURM auto-requeue saves ``hpc_ckpt_<n>.ckpt`` from inside its signal handler,
wherever the step happens to be (weights updated, step counter or sampler state not yet), which
can resume into a different run; :func:`trainer_kwargs` switches it off.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from sqtorch.experiment.config import ConfigError, RunSpec
from sqtorch.experiment.outputs import LAST_CKPT
from sqtorch.experiment.registry import Algorithm
from sqtorch.neural.checkpoint import checkpoint_step
from sqtorch.runtime import Interrupted

logger = logging.getLogger(__name__)

REQUEUE_SIGNAL = signal.SIGUSR1
SIGNALS = (signal.SIGTERM, signal.SIGINT, REQUEUE_SIGNAL)  # what a run catches to stop at a step boundary
REQUEUE_ATTEMPTS = 3
SRUN_WARNING = r"The `srun` command is available on your system but is not used"
SCONTROL_REQUEUE = "trap '' TERM; exec scontrol requeue \"$1\""  # SIGTERM ignored (inherited through exec)


def job_id() -> str | None:
    """This process's Slurm job (``<array job>_<task>`` for an array task), or ``None`` outside Slurm."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None


def newest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint in ``folder`` with the highest step among those that load (ties: ``last.ckpt``, then newest).

    An unreadable file (torn by a kill) is skipped with a warning: the next older one is complete.
    """
    found = []
    for f in sorted(folder.glob("*.ckpt")) if folder.is_dir() else []:
        try:
            found.append((checkpoint_step(f), f.name == Path(LAST_CKPT).name, f.stat().st_mtime, f))
        except (OSError, ValueError) as e:
            logger.warning("skipping checkpoint %s: %s", f, e)
    return max(found)[3] if found else None


def resume_in_place(algorithm: Algorithm, spec: RunSpec, out: Path) -> RunSpec:
    """``spec`` resuming from its own run dir ``out`` when this is a Slurm job that ran there before.

    Only for resumable algorithms without an explicit ``ckpt_path`` (which wins); the checkpoint is
    checked by the algorithm (:meth:`~sqtorch.experiment.registry.Algorithm.resume_from`: same env,
    n, k and network, else :class:`ConfigError` naming the differing keys).
    """
    if job_id() is None or spec.ckpt_path is not None or not algorithm.resumable:
        return spec
    path = newest_checkpoint(out / "checkpoints")
    if path is None:
        return spec
    try:
        cfg = {"env": spec.env_cfg, "algo": asdict(spec.algo)}
        path = Path(algorithm.resume_from(path, cfg, spec.n, spec.k, spec.device.type))
    except ValueError as e:
        raise ConfigError(f"Slurm job {job_id()}: {e}") from e
    logger.info("Slurm job %s (restart %s): resuming from %s (step %d)", job_id(),
                os.environ.get("SLURM_RESTART_COUNT", "0"), path, checkpoint_step(path))
    return replace(spec, ckpt_path=str(path))


def trainer_kwargs() -> dict[str, Any]:
    """Extra ``lightning.Trainer`` arguments for this process: inside Slurm, no Lightning auto-requeue.

    Under ``srun`` Lightning would detect SLURM and handle SIGUSR1 itself; it gets the SLURM
    environment with ``auto_requeue=False`` instead. A single-process job run without ``srun``
    needs none, and Lightning's warning that ``srun`` is unused is silenced.
    """
    if job_id() is None:
        return {}
    from lightning.fabric.plugins.environments.slurm import SLURMEnvironment, _is_srun_used

    if _is_srun_used():
        return {"plugins": [SLURMEnvironment(auto_requeue=False)]}
    warnings.filterwarnings("ignore", message=SRUN_WARNING)
    return {}


def requeue() -> str:
    """Requeue this Slurm job (``scontrol requeue``); returns what happened, in words.

    Called after the run's checkpoint is on disk. Slurm answers the request by sending SIGTERM to
    the whole job, ``scontrol`` included, so ``scontrol`` ignores SIGTERM (else it could die
    before its answer arrives and a requeue that happened would look failed), and the run keeps
    catching it until this returns. A failed request is retried; if it still fails, the message
    says how to resume by hand.
    """
    jid = os.environ["SLURM_JOB_ID"]
    error = ""
    for attempt in range(REQUEUE_ATTEMPTS):
        try:
            proc = subprocess.run(["sh", "-c", SCONTROL_REQUEUE, "sh", jid], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            error = f"{type(e).__name__}: {e}"
        else:
            if proc.returncode == 0:
                return f"requeued Slurm job {jid}: it resumes from its newest checkpoint"
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            error = lines[-1] if lines else f"exit {proc.returncode}"
        logger.warning("scontrol requeue %s failed (attempt %d of %d): %s", jid, attempt + 1, REQUEUE_ATTEMPTS, error)
        time.sleep(1.0)
    return f"Slurm job {jid} was NOT requeued ({error}): resume by hand, a new job with that ckpt_path"


@contextmanager
def requeue_on_signal() -> Iterator[None]:
    """Inside a Slurm job, a run stopped by SIGUSR1 (:class:`Interrupted`) requeues the job, then exits."""
    try:
        yield
    except Interrupted as e:
        if e.signum != REQUEUE_SIGNAL or job_id() is None:
            raise
        raise Interrupted(e.signum, f"{e.detail}; {requeue()}") from None
