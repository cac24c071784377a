"""``algo=deepsets``: the DeepSets Q-network trained with Lightning (docs/model.md §3).

Leaves ``checkpoints/final.ckpt`` (plus the periodic ``step-N.ckpt`` / ``last.ckpt`` of
``conf/callbacks``). SIGTERM/SIGINT save ``checkpoints/last.ckpt`` at an optimizer-step boundary
and end the run; ``ckpt_path=<run dir>`` resumes from the newest checkpoint, bit-identical to an
uninterrupted run on the same device type.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException

from sqtorch import metrics as M
from sqtorch.experiment import slurm
from sqtorch.experiment.outputs import FINAL_CKPT, LAST_CKPT, finish, logging_to
from sqtorch.experiment.registry import Algorithm, LoadedPolicy, TrainContext
from sqtorch.neural.checkpoint import check_compatible, latest_checkpoint
from sqtorch.neural.config import DeepSetsConfig
from sqtorch.neural.deepsets import num_parameters
from sqtorch.neural.module import SubsampleQModule
from sqtorch.neural.policy import DeepSetsPolicy
from sqtorch.neural.progress import StepProgressBar
from sqtorch.neural.sim_data import check_state_dist
from sqtorch.runtime import SignalFlag


class StopOnSignal(pl.Callback):
    """After the optimizer step in which SIGTERM/SIGINT/SIGUSR1 arrived: save ``last.ckpt`` and stop training.

    The checkpoint is taken at a step boundary, exactly like the periodic ones, so resuming from it
    gives the same weights as an uninterrupted run (docs/training.md, "When things go wrong").

    Lightning's own SIGTERM handler (installed by ``fit``) ends the loop with ``SIGTERMException``
    after the batch hooks, e.g. after a validation: a SIGTERM that arrived once this callback had
    looked at the flag would end the run without the checkpoint. From the start of training SIGTERM
    therefore only sets the flag (and is forwarded to a launcher's child processes, as Lightning
    does); ``fit`` restores the previous handlers when it ends.
    """

    def __init__(self, flag: SignalFlag, path: Path) -> None:
        self.flag, self.path = flag, path
        self.saved = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set in the main thread
        launcher = trainer.strategy.launcher

        def on_sigterm(signum: int, frame: Any) -> None:
            if self.flag.signum is None and launcher is not None:
                launcher.kill(signum)
            self.flag(signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.flag.signum is not None and not trainer.should_stop:
            trainer.save_checkpoint(self.path, weights_only=False)  # full state: resumable
            self.saved = True
            trainer.should_stop = True


def progress_bar(trainer_cfg: Any, callbacks: list) -> list[pl.Callback]:
    """``[StepProgressBar]`` refreshed every ``trainer.log_every_n_steps`` steps, when the Trainer shows a bar
    and ``callbacks`` bring none of their own (else ``[]``).

    The bar's TD loss changes on logging steps only; Lightning's default bar, refreshed on every step
    and fed through ``self.log``, adds a large share of a fast CPU step (bench/RESULTS.md, run L).
    """
    if not trainer_cfg.get("enable_progress_bar", True) or any(isinstance(c, ProgressBar) for c in callbacks):
        return []
    return [StepProgressBar(refresh_rate=max(int(trainer_cfg.get("log_every_n_steps") or 1), 1))]


class DeepSets(Algorithm):
    name = "deepsets"
    config = DeepSetsConfig
    artifact = FINAL_CKPT
    resumable = True
    simulators = True  # samples only: any Simulator, continuous local states included (docs/model.md §3)
    module_class: type = SubsampleQModule

    def train(self, ctx: TrainContext) -> dict[str, float]:
        """Fit :class:`SubsampleQModule` with the configured Trainer, then evaluate it on n agents."""
        spec, cfg, out, flag = ctx.spec, ctx.cfg, ctx.out, ctx.flag
        pl.seed_everything(spec.seed, workers=True, verbose=False)
        module = self.module_class(spec.env_cfg, spec.n, spec.k, spec.algo, spec.eval, spec.seed)
        with logging_to(cfg) as tb:
            callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
            stop = StopOnSignal(flag, out / LAST_CKPT)
            callbacks += [stop, *ctx.extra_callbacks, *progress_bar(cfg.trainer, callbacks)]
            trainer = instantiate(cfg.trainer, logger=tb if tb is not None else False, callbacks=callbacks,
                                  **slurm.trainer_kwargs())  # Slurm: no Lightning auto-requeue
            t0 = time.perf_counter()
            try:
                trainer.fit(module, ckpt_path=spec.ckpt_path, weights_only=True)  # no code from the file runs
            except SIGTERMException:  # Lightning's own SIGTERM exit (status 0): ours, with the checkpoint, follows
                pass
            if flag.signum is not None and not stop.saved:  # after the last step: the final state is the checkpoint
                module.to(spec.device)
                trainer.save_checkpoint(out / LAST_CKPT, weights_only=False)
            flag.check(f"checkpoint {out / LAST_CKPT}; resume with ckpt_path={out}")
            wall = time.perf_counter() - t0
            module.to(spec.device)  # Lightning's teardown moved it to the CPU; evaluate where the simulator runs
            trainer.save_checkpoint(out / FINAL_CKPT, weights_only=False)  # full state, like last.ckpt
            metrics = module.evaluate()
            flag.check(f"after training, before the final metrics; resume with ckpt_path={out}")
            metrics.update({
                M.TRAIN_WALL_SECONDS: wall,
                M.TRAIN_PARAMETERS: num_parameters(module.net),
                M.TRAIN_GLOBAL_STEP: trainer.global_step,
                M.TRAIN_SAMPLES: module.samples,
            })
            details = f"steps={trainer.global_step}" + (
                f" agreement={metrics[M.EVAL_AGREEMENT]:.3f}" if M.EVAL_AGREEMENT in metrics else ""
            )
            return finish(cfg, spec, out, tb, metrics, trainer.global_step, f"{details} wall={wall:.1f}s")

    def load(self, path: Path, cfg: dict, metrics: dict) -> LoadedPolicy:
        policy = DeepSetsPolicy.from_checkpoint(path / FINAL_CKPT, k=int(cfg["k"]))
        return LoadedPolicy(policy, self.name, policy.k, num_parameters(policy.net),
                            float(metrics[M.TRAIN_WALL_SECONDS]))

    def samples(self, cfg: dict, metrics: dict, size: int) -> float:
        """Per optimizer step ``batch_size * m`` successors of k agents (none with ``trajectory``), plus
        (``visited``, ``trajectory``) one step of the ``pool_size`` n-agent systems (docs/model.md §3)."""
        a, k, n = cfg["algo"], int(cfg["k"]), int(cfg["n"])
        dist = a["data"]["state_dist"]
        per_step = 0 if dist == "trajectory" else a["batch_size"] * a["m"] * k  # trajectory: observed steps only
        if dist in ("visited", "trajectory"):
            per_step += a["data"]["pool_size"] * n
        return float(metrics[M.TRAIN_GLOBAL_STEP] * per_step)

    def check_env(self, config: DeepSetsConfig, env: Any, n: int, k: int) -> None:
        """The state distribution must fit the env's local states (``uniform``/``simplex``: finite only)."""
        check_state_dist(config.data.state_dist, env)

    def resume_from(self, ckpt_path: Any, cfg: dict, n: int, k: int, device: str) -> str:
        """The checkpoint of ``ckpt_path`` (a file, or a run dir: its highest step), checked against the run."""
        path = latest_checkpoint(str(ckpt_path))
        check_compatible(path, cfg["env"], n, k, cfg["algo"]["net"], device)
        return str(path)
