"""Hydra's submitit Slurm launcher for sqtorch sweeps (``hydra/launcher=slurm``, conf/hydra/launcher/slurm.yaml).

The same launcher as ``hydra_submitit_launcher``'s (one Slurm array job per sweep, each job in
its own dir ``<sweep dir>/<num>_<overrides>/``, ``array_parallelism`` jobs at once), with:

- **Failures named.** The launcher waits for every job, then, if any failed (an exception in the
  run, or a job that ended without a result: cancelled, killed, node lost), prints one line per
  failed job (its number, overrides, Slurm job id, state, reason and log file) and
  exits with status 1 (``SystemExit``: no traceback).
- **No sacct noise.** submitit asks ``sacct`` for job states and warns on every poll when the
  cluster keeps no accounting. Here one line says so and the states come from ``squeue``.
- **One preemption mechanism.** Slurm's warning signal before the time limit is SIGUSR1
  (``--signal=USR1@<signal_delay_s>``), handled by the run itself like a ``train.py`` job's
  (sqtorch/experiment/slurm.py: step-boundary checkpoint, ``scontrol requeue``, resume in the
  same job dir); each job holds SIGUSR1 blocked until the run's handler is installed, and its
  batch shell ignores SIGUSR1 (``scancel --full`` signals it too; its death would end the job).
"""

from __future__ import annotations

import getpass
import logging
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf

try:  # the extra `.[launchers]`; without it there is no Slurm launcher (and Hydra's plugin scan stays quiet)
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
except ImportError:
    SubmititSlurmLauncher = object

log = logging.getLogger(__name__)

REQUEUE_SIGNAL = "USR1"  # sqtorch.experiment.slurm.REQUEUE_SIGNAL
ENDED = "ENDED"  # the state of a job that left squeue's listing (it ended long ago)


def _one_line(e: BaseException | str) -> str:
    """The gist of a job's failure: the exception line of its traceback, else the first line."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Interrupted)\b", line)]
    text = errors[-1] if errors else (lines[0] if lines else "")
    return f"{type(e).__name__}: {text}" if isinstance(e, BaseException) and not errors else text


def squeue_watcher(delay_s: int = 60) -> Any:
    """A submitit job watcher that reads ``sacct``, or ``squeue`` once ``sacct`` has failed (one warning)."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    class Watcher(SlurmInfoWatcher):
        sacct_ok = True

        def _make_command(self) -> list[str] | None:
            if self.sacct_ok:
                return super()._make_command()
            if not (self._registered - self._finished):
                return None
            return ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T|%N", "--user", getpass.getuser()]

        def update(self) -> None:
            command = self._make_command()
            if command is None:
                return
            self._num_calls += 1
            proc = subprocess.run(command, capture_output=True, text=True)
            if proc.returncode != 0 and self.sacct_ok:
                reason = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
                log.warning("sacct failed (%s): job states come from squeue", reason)
                self.sacct_ok = False
                return self.update()
            if proc.returncode == 0:
                text = proc.stdout if self.sacct_ok else "JobID|State|NodeList\n" + proc.stdout
                info = self.read_info(text)
                if not self.sacct_ok:  # a job squeue no longer lists has ended (MinJobAge)
                    for job in self._registered - self._finished - set(info):
                        info[job] = {"JobID": job, "State": ENDED, "NodeList": ""}
                self._info_dict.update(info)
            self._last_status_check = time.time()
            for job in self._registered - self._finished:
                if self.is_done(job, mode="cache"):
                    self._finished.add(job)

    return Watcher(delay_s=delay_s)


class SlurmLauncher(SubmititSlurmLauncher):
    """``hydra_submitit_launcher``'s Slurm launcher with named failures, no sacct noise, SIGUSR1 preemption."""

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:  # runs in the Slurm job
        signal.pthread_sigmask(signal.SIG_BLOCK, {getattr(signal, f"SIG{REQUEUE_SIGNAL}")})
        return super().__call__(*args, **kwargs)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit
        from submitit.slurm import slurm as submitit_slurm

        assert self.config is not None
        submitit_slurm.SlurmJobEnvironment.USR_SIG = REQUEUE_SIGNAL  # sbatch --signal=USR1@<signal_delay_s>
        submitit_slurm.SlurmJob.watcher = squeue_watcher()
        params = dict(self.params)
        # the batch shell ignores SIGUSR1: `scancel --full` signals it too, and its death would end the job
        params["setup"] = ["trap '' USR1", *(params.get("setup") or [])]
        init_params = {"folder": params["submitit_folder"]}
        init_params.update({f"{self._EXECUTOR}_{x}": y for x, y in params.items() if x in {"max_num_timeout"}})
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{x if x in base else f"{self._EXECUTOR}_{x}": y for x, y in params.items()
                                      if x not in {"max_num_timeout", "submitit_folder"}})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        nums, job_params = [], []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            nums.append(idx)
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*job_params, strict=True))
        log.info(f"Slurm job {jobs[0].job_id.split('_')[0]}: {len(jobs)} jobs, "
                 f"at most {params.get('array_parallelism')} at once; logs in {jobs[0].paths.folder.parent}")
        results, failed = [], []
        for num, overrides, job in zip(nums, job_overrides, jobs, strict=True):
            name = f"#{num} {' '.join(filter_overrides(overrides))} (Slurm job {job.job_id}"
            try:
                ret = job.results()[0]
            except Exception as e:  # the job ended without a result, or submitit failed in it
                failed.append(f"{name}, {job.state}): {_one_line(e)}; log: {job.paths.stderr}")
                continue
            if ret.status == JobStatus.FAILED:
                failed.append(f"{name}): {type(ret._return_value).__name__}: {_one_line(str(ret._return_value))}; "
                              f"log: {job.paths.stderr}")
            results.append(ret)
        if failed:
            for line in failed:
                log.error(f"failed: {line}")
            raise SystemExit(f"{len(failed)} of {len(jobs)} Slurm jobs failed:\n" + "\n".join(failed))
        return results
