"""What every run leaves in its directory, written the same way by every algorithm.

``config.yaml`` first, the artifact, TensorBoard scalars and the HPARAMS tab, then ``metrics.json``
last (atomically: a run dir is complete exactly when it has one), and one summary line logged
(``[sqtorch] <algo> env=... return=...``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sqtorch import metrics as M
from sqtorch.experiment.config import RunSpec
from sqtorch.runtime import write_text_atomic

CONFIG, METRICS, QTABLE, FINAL_CKPT = "config.yaml", "metrics.json", "qtable.pt", "checkpoints/final.ckpt"
LAST_CKPT = "checkpoints/last.ckpt"
log = logging.getLogger(__name__)


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
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
def logging_to(cfg: DictConfig) -> Iterator[Any]:
    """The run's logger (``None`` with ``logger=none``), finalized as failed if the run raises."""
    logger = instantiate(cfg.logger) if cfg.get("logger") and cfg.logger.get("_target_") else None
    try:
        yield logger
    except BaseException:
        if logger is not None:
            logger.finalize("failed")
        raise


def finish(
    cfg: DictConfig, spec: RunSpec, out: Path, logger: Any, metrics: dict[str, float], step: int, details: str
) -> dict[str, float]:
    """Log the final metrics (scalars + HPARAMS), close the logger, write ``metrics.json`` last, print a summary."""
    metrics = {key: float(v) for key, v in metrics.items()}
    if logger is not None:
        logger.log_metrics(metrics, step=step)
        hp = {key: metrics[key] for key in M.HPARAM_METRICS if key in metrics}
        logger.log_hyperparams(flat_hparams(cfg), metrics=hp, step=step)
        logger.finalize("success")
    write_text_atomic(out / METRICS, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    gap = f" gap={metrics[M.EVAL_GAP]:.4f}" if M.EVAL_GAP in metrics else ""
    log.info(
        "%s env=%s n=%d k=%d seed=%d %s return=%.4f±%.4f%s out=%s", spec.algo.name, spec.env.name, spec.n, spec.k,
        spec.seed, details, metrics[M.EVAL_RETURN], metrics[M.EVAL_RETURN_CI], gap, out,
    )
    return metrics
