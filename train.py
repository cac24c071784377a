"""Hydra entry point for tabular and DeepSets SUBSAMPLE-Q (docs/model.md §2, §3).

    python train.py env=queue k=8                  # DeepSets (algo=deepsets is the default)
    python train.py algo=tabular env=queue k=8     # tabular learn(...)
    python train.py -m k=2,4 seed=0,1 debug=fast   # sweep; one run dir per job
    python train.py ... ckpt_path=<run dir>        # resume a killed DeepSets run

``train(cfg)`` is a plain function (tests call it with a composed config); ``main`` is the Hydra
wrapper that returns the validation metric to sweepers.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from sqtorch.experiment import run
from sqtorch.metrics import OPTIMIZED_METRIC


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one experiment described by ``cfg``; returns its final metrics."""
    return run(cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    metrics = train(cfg)
    return metrics[cfg.get("optimized_metric") or OPTIMIZED_METRIC]


if __name__ == "__main__":
    main()
