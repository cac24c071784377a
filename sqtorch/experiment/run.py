"""Library side of ``train.py``: one run of tabular or DeepSets SUBSAMPLE-Q from a Hydra config.

:func:`run` validates the whole config (:func:`sqtorch.experiment.config.validate_config`) before
anything is written, then dispatches on ``algo.name``. Every run leaves in ``paths.output_dir``:
the resolved ``config.yaml``, a loadable artifact (``qtable.pt`` or ``checkpoints/final.ckpt``),
TensorBoard event files (``logger=tensorboard``) and, last, ``metrics.json`` (final metrics, names
from :mod:`sqtorch.metrics`): a run dir is complete exactly when it has ``metrics.json``. Every file
is written whole or not at all (:func:`sqtorch.runtime.atomic_write`). It prints one summary line
and returns the metrics (docs/model.md §2, §3, §5).
"""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from sqtorch import metrics as M
from sqtorch.baselines.config import Sb3Config
from sqtorch.evaluation.reference import build_reference, evaluate_return, exact_gap
from sqtorch.experiment import slurm
from sqtorch.experiment.config import RunSpec, validate_config
from sqtorch.experiment.outputs import CONFIG, FINAL_CKPT, LAST_CKPT, QTABLE, finish, logging_to
from sqtorch.experiment.run_sb3 import run_sb3
from sqtorch.neural.deepsets import num_parameters
from sqtorch.neural.module import SubsampleQModule
from sqtorch.runtime import SignalFlag, catch_signals, torch_threads, write_text_atomic
from sqtorch.tabular.counts import num_counts
from sqtorch.tabular.learner import learn

PROGRESS_EVERY_S = 10.0  # a tabular run prints a progress line at most this often
class StopOnSignal(pl.Callback):
    """After the optimizer step in which SIGTERM/SIGINT/SIGUSR1 arrived: save ``last.ckpt`` and stop training.

    The checkpoint is taken at a step boundary, exactly like the periodic ones, so resuming from it
    gives the same weights as an uninterrupted run (docs/training.md, "When things go wrong").
    """

    def __init__(self, flag: SignalFlag, path: Path) -> None:
        self.flag, self.path = flag, path

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.flag.signum is not None and not trainer.should_stop:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


# ---- DeepSets ------------------------------------------------------------------------------------
def run_deepsets(
    cfg: DictConfig, spec: RunSpec, out: Path, flag: SignalFlag, extra_callbacks: list | None = None
) -> dict[str, float]:
    """Train the DeepSets Q-network with Lightning, evaluate it, write the run's artifacts."""
    pl.seed_everything(spec.seed, workers=True, verbose=False)
    module = SubsampleQModule(spec.env_cfg, spec.n, spec.k, spec.algo, spec.eval, spec.seed)
    with logging_to(cfg) as logger:
        return _fit(cfg, spec, out, module, logger, flag, extra_callbacks)


def _fit(
    cfg: DictConfig,
    spec: RunSpec,
    out: Path,
    module: SubsampleQModule,
    logger: Any,
    flag: SignalFlag,
    extra_callbacks: list | None,
) -> dict[str, float]:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    callbacks += [StopOnSignal(flag, out / LAST_CKPT), *(extra_callbacks or [])]
    trainer = instantiate(cfg.trainer, logger=logger if logger is not None else False, callbacks=callbacks,
                          **slurm.trainer_kwargs())  # Slurm: no Lightning auto-requeue (experiment/slurm.py)
    t0 = time.perf_counter()
    try:
        trainer.fit(module, ckpt_path=spec.ckpt_path, weights_only=True)  # no code from the file runs
    except SIGTERMException:  # Lightning's own SIGTERM exit (status 0): ours, with the checkpoint, follows
        pass
    flag.check(f"checkpoint {out / LAST_CKPT}; resume with ckpt_path={out}")
    wall = time.perf_counter() - t0
    module.to(spec.device)  # Lightning's teardown moved it to the CPU; evaluate where the simulator runs
    trainer.save_checkpoint(out / FINAL_CKPT)
    metrics = module.evaluate()
    flag.check(f"after training, before the final metrics; resume with ckpt_path={out}")
    metrics.update(
        {
            M.TRAIN_WALL_SECONDS: wall,
            M.TRAIN_PARAMETERS: num_parameters(module.net),
            M.TRAIN_GLOBAL_STEP: trainer.global_step,
            M.TRAIN_SAMPLES: module.samples,
        }
    )
    details = f"steps={trainer.global_step}" + (
        f" agreement={metrics[M.EVAL_AGREEMENT]:.3f}" if M.EVAL_AGREEMENT in metrics else ""
    )
    return finish(cfg, spec, out, logger, metrics, trainer.global_step, f"{details} wall={wall:.1f}s")


# ---- tabular -------------------------------------------------------------------------------------
def run_tabular(cfg: DictConfig, spec: RunSpec, out: Path, flag: SignalFlag) -> dict[str, float]:
    """Tabular SUBSAMPLE-Q (``learn``), logging the Bellman error bound per sweep (docs/model.md §2)."""
    with logging_to(cfg) as logger:
        return _learn(cfg, spec, out, logger, flag)


def _learn(cfg: DictConfig, spec: RunSpec, out: Path, logger: Any, flag: SignalFlag) -> dict[str, float]:
    a, env = spec.algo, spec.env.to(spec.device)
    last_print = [0.0]

    def on_iteration(it: int, residual: float, elapsed: float) -> None:
        flag.check("the tabular learner is deterministic: rerunning the same command gives the same Q-table")
        if logger is not None:
            logger.log_metrics({M.TABULAR_RESIDUAL: residual, M.TABULAR_ELAPSED: elapsed}, step=it)
        if elapsed - last_print[0] >= PROGRESS_EVERY_S:  # progress lines on long runs only
            last_print[0] = elapsed
            print(f"[sqtorch] tabular iteration {it + 1}/{a.T}: error bound {residual:.3g} "
                  f"(tol {a.tol:g}), {elapsed:.0f} s", flush=True)

    entries = env.G * num_counts(spec.k, env.L) * env.A
    print(f"[sqtorch] tabular: m = {a.m} next states for {entries:,} entries (G*N*A) ...", flush=True)
    res = learn(env, spec.k, a.m, T=a.T, tol=a.tol, seed=spec.seed, n=spec.n, dtype=a.torch_dtype,
                max_memory_gib=a.max_memory_gib, on_iteration=on_iteration)
    res.qtable.save(out / QTABLE)
    mean, ci = evaluate_return(env, res.qtable, spec.n, **spec.eval.mc_kwargs())
    flag.check("after learning, before the final metrics; rerun the same command")
    metrics = {
        M.EVAL_RETURN: mean,
        M.EVAL_RETURN_CI: ci,
        M.TABULAR_TABLE_SIZE: res.qtable.q.numel(),
        M.TABULAR_LEARN_SECONDS: res.learn_seconds,
        M.TABULAR_BUILD_SECONDS: res.build_seconds,
        M.TABULAR_ITERATIONS: res.iterations,
        M.TABULAR_CONVERGED: float(res.converged),
        M.TABULAR_RESIDUAL: res.residuals[-1] if res.residuals else math.nan,
    }
    ref = build_reference(env, spec.n, spec.k, spec.eval, with_tabular=False)
    gap = exact_gap(env, spec.n, res.qtable.greedy(), spec.k, ref)
    if gap is not None:
        metrics[M.EVAL_GAP] = gap
    details = f"m={a.m} iterations={res.iterations} converged={res.converged} learn={res.learn_seconds:.2f}s"
    return finish(cfg, spec, out, logger, metrics, res.iterations, details)


def run(cfg: DictConfig, extra_callbacks: list | None = None) -> dict[str, float]:
    """Validate ``cfg`` (before anything is written), save it resolved, run the chosen algorithm."""
    spec = validate_config(cfg)
    out = Path(cfg.paths.output_dir)
    spec = slurm.resume_in_place(spec, out)  # Slurm: a requeued job resumes from its own run dir
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
    with torch_threads(spec.threads), catch_signals(slurm.SIGNALS) as flag, slurm.requeue_on_signal():
        torch.manual_seed(spec.seed)
        if spec.algo.name == "tabular":
            return run_tabular(cfg, spec, out, flag)
        if isinstance(spec.algo, Sb3Config):  # not interruptible: a signal ends it as usual
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            return run_sb3(cfg, spec, out)
        return run_deepsets(cfg, spec, out, flag, extra_callbacks)
