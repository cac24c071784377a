"""Library side of ``train.py``: one run of tabular or DeepSets SUBSAMPLE-Q from a Hydra config.

:func:`run` validates the config (:func:`sqtorch.config.validate_config`) before any work, then
dispatches on ``cfg.algo.name``. Every run leaves in ``cfg.paths.output_dir``: the resolved
``config.yaml``, ``metrics.json`` (final metrics, names from :mod:`sqtorch.neural.metrics`), a
loadable artifact (``qtable.pt`` or ``checkpoints/final.ckpt``) and, with ``logger=tensorboard``,
TensorBoard event files; it prints one summary line and returns the metrics (SPEC §2, §3, §5).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from sqtorch.config import DTYPES, build_env, device_of, validate_config
from sqtorch.neural import metrics as M
from sqtorch.tabular.counts import num_counts

PROGRESS_EVERY_S = 10.0  # a tabular run prints a progress line at most this often


def _output_dir(cfg: DictConfig) -> Path:
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


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
    for key in ("k", "n", "seed"):
        walk(key, c.get(key))
    walk("env", c.get("env"))
    walk("algo", c.get("algo"))
    return flat


def _instantiate_logger(cfg: DictConfig) -> Any:
    from hydra.utils import instantiate

    if cfg.get("logger") is None or not cfg.logger.get("_target_"):
        return None
    return instantiate(cfg.logger)


def _log_final(logger: Any, cfg: DictConfig, metrics: dict[str, float], step: int) -> None:
    """Final metrics as scalars and, with the run's config, in the HPARAMS tab."""
    if logger is None:
        return
    logger.log_metrics(metrics, step=step)
    hp = {key: metrics[key] for key in M.HPARAM_METRICS if key in metrics}
    logger.log_hyperparams(_flat_hparams(cfg), metrics=hp, step=step)


def _finish(cfg: DictConfig, out: Path, metrics: dict[str, float], summary: str) -> dict[str, float]:
    metrics = {key: float(v) for key, v in metrics.items()}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    print(summary, flush=True)
    return metrics


def save_config(cfg: DictConfig, out: Path) -> None:
    """The resolved config of the run, next to its artifacts."""
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


# ---- DeepSets ------------------------------------------------------------------------------------
def build_module(cfg: DictConfig) -> Any:
    """The :class:`~sqtorch.neural.module.SubsampleQModule` described by ``cfg`` (SPEC §3)."""
    from sqtorch.neural.module import SubsampleQModule

    a = OmegaConf.to_container(cfg.algo, resolve=True)
    ev = OmegaConf.to_container(cfg.eval, resolve=True)
    return SubsampleQModule(
        env=OmegaConf.to_container(cfg.env, resolve=True),
        n=cfg.n,
        k=cfg.k,
        net=a["net"],
        m=a["m"],
        batch_size=a["batch_size"],
        lr=a["optim"]["lr"],
        weight_decay=a["optim"]["weight_decay"],
        lr_schedule=a["optim"]["lr_schedule"],
        max_steps=a["max_steps"],
        loss=a["loss"],
        huber_delta=a["huber_delta"],
        target_sync=a["target_sync"],
        tau=a["tau"],
        data=a["data"],
        eval={k: ev[k] for k in ("num_initial", "rollouts", "horizon", "seed", "reference", "max_states")},
        seed=cfg.seed,
    )


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


def run_deepsets(cfg: DictConfig, extra_callbacks: list | None = None) -> dict[str, float]:
    """Train the DeepSets Q-network with Lightning, evaluate it, write the run's artifacts."""
    import lightning.pytorch as pl
    from hydra.utils import instantiate

    from sqtorch.neural.deepsets import num_parameters

    out = _output_dir(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_module(cfg)
    logger = _instantiate_logger(cfg)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    callbacks += list(extra_callbacks or [])
    trainer = instantiate(cfg.trainer, logger=logger if logger is not None else False, callbacks=callbacks)
    try:
        t0 = time.perf_counter()
        trainer.fit(module, ckpt_path=resolve_ckpt(cfg.get("ckpt_path")))
        wall = time.perf_counter() - t0
        trainer.save_checkpoint(out / "checkpoints" / "final.ckpt")
        metrics = module.evaluate()
        metrics.update(
            {
                M.TRAIN_WALL_SECONDS: wall,
                M.TRAIN_PARAMETERS: num_parameters(module.net),
                M.TRAIN_GLOBAL_STEP: trainer.global_step,
                M.TRAIN_SAMPLES: module.samples,
            }
        )
        _log_final(logger, cfg, metrics, step=trainer.global_step)
    finally:
        if logger is not None:
            logger.finalize("success")
    summary = (
        f"[sqtorch] deepsets env={module.env.name} n={cfg.n} k={cfg.k} seed={cfg.seed} "
        f"steps={trainer.global_step} return={metrics[M.EVAL_RETURN]:.4f}"
        f"±{metrics[M.EVAL_RETURN_CI]:.4f}"
        + (f" gap={metrics[M.EVAL_GAP]:.4f}" if M.EVAL_GAP in metrics else "")
        + (f" agreement={metrics[M.EVAL_AGREEMENT]:.3f}" if M.EVAL_AGREEMENT in metrics else "")
        + f" wall={wall:.1f}s out={out}"
    )
    return _finish(cfg, out, metrics, summary)


# ---- tabular -------------------------------------------------------------------------------------
def run_tabular(cfg: DictConfig) -> dict[str, float]:
    """Tabular SUBSAMPLE-Q (``learn``), logging the Bellman residual per iteration (SPEC §2)."""
    from sqtorch.neural.validation import build_reference, evaluate_return, exact_gap
    from sqtorch.tabular.learner import learn

    out = _output_dir(cfg)
    a = cfg.algo
    device = device_of(cfg.trainer.get("accelerator"))
    env = build_env(OmegaConf.to_container(cfg.env, resolve=True)).to(device)
    logger = _instantiate_logger(cfg)
    metrics: dict[str, float] = {}
    try:

        last_print = [0.0]

        def on_iteration(it: int, residual: float, elapsed: float) -> None:
            if logger is not None:
                logger.log_metrics({M.TABULAR_RESIDUAL: residual, M.TABULAR_ELAPSED: elapsed}, step=it)
            if elapsed - last_print[0] >= PROGRESS_EVERY_S:  # progress lines on long runs only
                last_print[0] = elapsed
                print(f"[sqtorch] tabular iteration {it + 1}/{a.T}: residual {residual:.3g} "
                      f"(tol {a.tol:g}), {elapsed:.0f} s", flush=True)

        entries = env.G * num_counts(cfg.k, env.L) * env.A
        print(f"[sqtorch] tabular: m = {a.m} next states for {entries:,} entries (G*N*A) ...", flush=True)

        res = learn(
            env,
            cfg.k,
            a.m,
            T=a.T,
            tol=a.tol,
            seed=cfg.seed,
            n=cfg.n,
            dtype=DTYPES[a.dtype],
            max_memory_gib=a.max_memory_gib,
            on_iteration=on_iteration,
        )
        res.qtable.save(out / "qtable.pt")
        ev = cfg.eval
        eval_kwargs = dict(
            num_initial=ev.num_initial,
            rollouts=ev.rollouts,
            horizon=ev.horizon,
            seed=ev.seed,
            device=device,
        )
        mean, ci = evaluate_return(env, res.qtable, cfg.n, **eval_kwargs)
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
        ref = build_reference(
            env,
            cfg.n,
            cfg.k,
            mode=ev.reference,
            max_states=ev.max_states,
            eval_kwargs=eval_kwargs,
            with_tabular=False,
        )
        if ref.v_star is not None:
            gap = exact_gap(env, cfg.n, res.qtable.greedy(), cfg.k, ref)
            if gap is not None:
                metrics[M.EVAL_GAP] = gap
        _log_final(logger, cfg, metrics, step=res.iterations)
    finally:
        if logger is not None:
            logger.finalize("success")
    summary = (
        f"[sqtorch] tabular env={env.name} n={cfg.n} k={cfg.k} m={a.m} seed={cfg.seed} "
        f"iterations={res.iterations} converged={res.converged} "
        f"return={metrics[M.EVAL_RETURN]:.4f}±{metrics[M.EVAL_RETURN_CI]:.4f}"
        + (f" gap={metrics[M.EVAL_GAP]:.4f}" if M.EVAL_GAP in metrics else "")
        + f" learn={res.learn_seconds:.2f}s out={out}"
    )
    return _finish(cfg, out, metrics, summary)


def run(cfg: DictConfig, extra_callbacks: list | None = None) -> dict[str, float]:
    """Validate ``cfg`` (before any work), save it resolved, run the chosen algorithm."""
    validate_config(cfg)
    out = _output_dir(cfg)
    save_config(cfg, out)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    torch.manual_seed(int(cfg.seed))
    if cfg.algo.name == "tabular":
        return run_tabular(cfg)
    return run_deepsets(cfg, extra_callbacks)
