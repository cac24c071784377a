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

import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sqtorch import metrics as M
from sqtorch.evaluation.reference import build_reference, evaluate_return, exact_gap
from sqtorch.experiment.config import RunSpec, validate_config
from sqtorch.neural.deepsets import num_parameters
from sqtorch.neural.module import SubsampleQModule
from sqtorch.runtime import torch_threads, write_text_atomic
from sqtorch.tabular.counts import num_counts
from sqtorch.tabular.learner import learn

PROGRESS_EVERY_S = 10.0  # a tabular run prints a progress line at most this often
CONFIG, METRICS, QTABLE, FINAL_CKPT = "config.yaml", "metrics.json", "qtable.pt", "checkpoints/final.ckpt"


def _flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """Flat ``{dotted.key: scalar}`` view of the run's config for the HPARAMS tab."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, val in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), val)
        elif node is None or isinstance(node, (int, float, str, bool)):
            flat[prefix] = "null" if node is None else node

    c = OmegaConf.to_container(cfg, resolve=True)
    for key in ("k", "n", "seed", "env", "algo"):
        walk(key, c.get(key))
    return flat


@contextmanager
def _logging(cfg: DictConfig) -> Iterator[Any]:
    """The run's logger (``None`` with ``logger=none``), finalized as failed if the run raises."""
    logger = instantiate(cfg.logger) if cfg.get("logger") and cfg.logger.get("_target_") else None
    try:
        yield logger
    except BaseException:
        if logger is not None:
            logger.finalize("failed")
        raise


def _finish(
    cfg: DictConfig, spec: RunSpec, out: Path, logger: Any, metrics: dict[str, float], step: int, details: str
) -> dict[str, float]:
    """Log the final metrics (scalars + HPARAMS), close the logger, write ``metrics.json`` last, print a summary."""
    metrics = {key: float(v) for key, v in metrics.items()}
    if logger is not None:
        logger.log_metrics(metrics, step=step)
        hp = {key: metrics[key] for key in M.HPARAM_METRICS if key in metrics}
        logger.log_hyperparams(_flat_hparams(cfg), metrics=hp, step=step)
        logger.finalize("success")
    write_text_atomic(out / METRICS, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    gap = f" gap={metrics[M.EVAL_GAP]:.4f}" if M.EVAL_GAP in metrics else ""
    print(
        f"[sqtorch] {spec.algo.name} env={spec.env.name} n={spec.n} k={spec.k} seed={spec.seed} {details} "
        f"return={metrics[M.EVAL_RETURN]:.4f}±{metrics[M.EVAL_RETURN_CI]:.4f}{gap} out={out}",
        flush=True,
    )
    return metrics


def resolve_ckpt(path: str | None) -> str | None:
    """``ckpt_path``: a checkpoint file, or a run dir (then its ``checkpoints/last.ckpt``)."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoints" / "last.ckpt" if (p / "checkpoints").is_dir() else p / "last.ckpt"
    if not p.is_file():
        raise FileNotFoundError(f"ckpt_path = '{path}': no checkpoint file at {p}")
    return str(p)


# ---- DeepSets ------------------------------------------------------------------------------------
def run_deepsets(cfg: DictConfig, spec: RunSpec, out: Path, extra_callbacks: list | None = None) -> dict[str, float]:
    """Train the DeepSets Q-network with Lightning, evaluate it, write the run's artifacts."""
    pl.seed_everything(spec.seed, workers=True, verbose=False)
    module = SubsampleQModule(spec.env_cfg, spec.n, spec.k, spec.algo, spec.eval, spec.seed)
    with _logging(cfg) as logger:
        return _fit(cfg, spec, out, module, logger, extra_callbacks)


def _fit(
    cfg: DictConfig, spec: RunSpec, out: Path, module: SubsampleQModule, logger: Any, extra_callbacks: list | None
) -> dict[str, float]:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    callbacks += list(extra_callbacks or [])
    trainer = instantiate(cfg.trainer, logger=logger if logger is not None else False, callbacks=callbacks)
    t0 = time.perf_counter()
    trainer.fit(module, ckpt_path=resolve_ckpt(cfg.get("ckpt_path")))
    wall = time.perf_counter() - t0
    trainer.save_checkpoint(out / FINAL_CKPT)
    metrics = module.evaluate()
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
    return _finish(cfg, spec, out, logger, metrics, trainer.global_step, f"{details} wall={wall:.1f}s")


# ---- tabular -------------------------------------------------------------------------------------
def run_tabular(cfg: DictConfig, spec: RunSpec, out: Path) -> dict[str, float]:
    """Tabular SUBSAMPLE-Q (``learn``), logging the Bellman error bound per sweep (docs/model.md §2)."""
    with _logging(cfg) as logger:
        return _learn(cfg, spec, out, logger)


def _learn(cfg: DictConfig, spec: RunSpec, out: Path, logger: Any) -> dict[str, float]:
    a, env = spec.algo, spec.env.to(spec.device)
    last_print = [0.0]

    def on_iteration(it: int, residual: float, elapsed: float) -> None:
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
    return _finish(cfg, spec, out, logger, metrics, res.iterations, details)


def run(cfg: DictConfig, extra_callbacks: list | None = None) -> dict[str, float]:
    """Validate ``cfg`` (before anything is written), save it resolved, run the chosen algorithm."""
    spec = validate_config(cfg)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
    with torch_threads(spec.threads):
        torch.manual_seed(spec.seed)
        if spec.algo.name == "tabular":
            return run_tabular(cfg, spec, out)
        if spec.algo.name.startswith("sb3_"):  # SB3 baselines (sqtorch/experiment/run_sb3.py)
            from sqtorch.experiment.run_sb3 import run_sb3

            return run_sb3(cfg, spec, out)
        return run_deepsets(cfg, spec, out, extra_callbacks)
