"""``algo=deepsets_mfq``: DeepSets SUBSAMPLE-MFQ for envs whose local agents act (docs/model.md §7.9).

Trained with Lightning exactly like ``algo=deepsets`` (checkpoints, exact resume, TensorBoard,
signals), by :class:`sqtorch.neural.mfq.MFQModule`; evaluated as Algorithm 2 with local actions
(Monte Carlo with common random numbers, the exact gap where the pair-count MDP is tractable).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqtorch import metrics as M
from sqtorch.experiment.algos.deepsets import DeepSets
from sqtorch.experiment.outputs import FINAL_CKPT
from sqtorch.experiment.registry import LoadedPolicy
from sqtorch.neural.config import DeepSetsMFQConfig
from sqtorch.neural.mfq import MFQModule, check_enumeration, mfq_policy_from_checkpoint


class DeepSetsMFQ(DeepSets):
    name = "deepsets_mfq"
    config = DeepSetsMFQConfig
    local_actions = True
    simulators = False
    module_class = MFQModule

    def check_env(self, config: DeepSetsMFQConfig, env: Any, n: int, k: int) -> None:
        """The exact enumeration of the other agents' actions must fit ``algo.max_tables``."""
        check_enumeration(env, k, config.max_tables)

    def load(self, path: Path, cfg: dict, metrics: dict) -> LoadedPolicy:
        policy = mfq_policy_from_checkpoint(path / FINAL_CKPT, k=int(cfg["k"]))
        return LoadedPolicy(policy, self.name, policy.k, int(metrics[M.TRAIN_PARAMETERS]),
                            float(metrics[M.TRAIN_WALL_SECONDS]))

    def samples(self, cfg: dict, metrics: dict, size: int) -> float:
        """Per optimizer step ``batch_size * m`` successors of k agents (no pool: items are drawn over pairs)."""
        a = cfg["algo"]
        return float(metrics[M.TRAIN_GLOBAL_STEP] * a["batch_size"] * a["m"] * int(cfg["k"]))
