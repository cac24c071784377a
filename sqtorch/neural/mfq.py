"""DeepSets SUBSAMPLE-MFQ: local agents act (docs/model.md §7.9; arXiv 2412.00661, Algorithm 1).

The network is the :class:`~sqtorch.neural.deepsets.DeepSetsQ` of §3 over the k **(local state,
local action) pairs** ``p = x * Al + a`` of the sampled agents: ``Q_theta(s_g, z) in R^A`` with ``z``
the count table of the pairs (mean pooling, the count path). It learns on the pair MDP of
:func:`sqtorch.tabular.mfq.pair_env` (items: ``s_g``, k pairs, ``a_g``; successors: the agents' next
states, ``r_Delta`` the subsampled reward), with the mean-field Bellman target of §7.3:

    y = r_Delta + gamma/m sum_j V(g'_j, c'_j),   V(g, c) = max_{a_g} max_{z : c(z) = c} Q_target(g, z, a_g)

The max over the other agents' actions is **exact enumeration**: every pair-count table z
(``C(k + L Al - 1, k)`` of them) is evaluated for every ``g`` (one batched forward of the target
network on the count path, once per target update) and reduced by the segment max of
:func:`sqtorch.tabular.mfq.greedy_pair_backup`;
runs refuse ``G * C(k + L Al - 1, k) > algo.max_tables``. No approximation is made. The executed
policy is Algorithm 2 through :class:`~sqtorch.tabular.mfq_policy.MFQPolicy` built from the
network's table (:func:`mfq_policy_of`), evaluated like the tabular one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sqtorch.envs import build_env
from sqtorch.envs.local_actions import LocalActionMDP
from sqtorch.evaluation.reference import mfq_validation_metrics
from sqtorch.neural.checkpoint import load_checkpoint
from sqtorch.neural.config import DeepSetsMFQConfig
from sqtorch.neural.deepsets import DeepSetsQ
from sqtorch.neural.module import SubsampleQModule
from sqtorch.neural.policy import net_from_checkpoint
from sqtorch.tabular.counts import all_counts, rank
from sqtorch.tabular.mfq import greedy_pair_backup, pair_env, pair_index
from sqtorch.tabular.mfq_policy import MFQPolicy, greedy_tables

TIE_REL = 1e-6  # default tie tolerance of the executed policy, relative to q_scale (float32 outputs)


def check_enumeration(env: LocalActionMDP, k: int, max_tables: int) -> int:
    """``G * C(k + L Al - 1, k)`` (tables enumerated per target); ``ValueError`` above ``max_tables``."""
    NZ = pair_index(k, env.L, env.Al).NZ
    if env.G * NZ > max_tables:
        raise ValueError(f"k = {k}: the exact max over the other agents' actions enumerates G * C(k + L Al - 1, k) = "
                         f"{env.G} * {NZ:,} pair-count tables per target, more than algo.max_tables = {max_tables:,}; "
                         "lower k or raise algo.max_tables")
    return env.G * NZ


@torch.no_grad()
def q_on_tables(net: DeepSetsQ, Z: Tensor) -> Tensor:
    """The network at every ``s_g`` and every pair-count table of ``Z [NZ, L Al]``: ``q [G, A, NZ]``."""
    G, NZ = net.G, Z.shape[0]
    g = torch.arange(G, device=Z.device).repeat_interleave(NZ)
    return net.forward_counts(g, Z.repeat(G, 1)).reshape(G, NZ, -1).permute(0, 2, 1)


def q_all_tables(net: DeepSetsQ, k: int, L: int, Al: int) -> Tensor:
    """The network as a table ``q [G, A, NZ]`` over every pair-count table z of k agents (rank order)."""
    return q_on_tables(net, all_counts(k, L * Al, net.embed.weight.device))


def mfq_policy_of(net: DeepSetsQ, k: int, L: int, Al: int, tie_tol: float | None = None) -> MFQPolicy:
    """Algorithm 2's decentralized policy of the network's table (tie rule of §7.4; default tolerance
    ``TIE_REL * q_scale``)."""
    q = q_all_tables(net, k, L, Al).double()
    tie = TIE_REL * net.q_scale if tie_tol is None else float(tie_tol)
    g, loc = greedy_tables(q, k, L, Al, tie)
    return MFQPolicy(g, loc, k, L, Al, net.A, tie)


class MFQModule(SubsampleQModule):
    """The LightningModule of ``algo=deepsets_mfq``: :class:`SubsampleQModule` on the pair MDP, with the
    mean-field target (module docstring) and Algorithm 2's validation (§7.4, §7.5)."""

    config_class = DeepSetsMFQConfig

    def learning_env(self, task: Any) -> Any:
        if not isinstance(task, LocalActionMDP):
            raise ValueError(f"algo = 'deepsets_mfq' needs an env whose local agents act (LocalActionMDP); "
                             f"env '{getattr(task, 'name', '?')}' is a {type(task).__name__}")
        check_enumeration(task, int(self.hparams.k), self.algo.max_tables)
        L, Al = task.L, task.Al
        self._Z = all_counts(int(self.hparams.k), L * Al)  # every pair-count table, rank order
        self._backup = greedy_pair_backup(pair_index(int(self.hparams.k), L, Al))
        return pair_env(task)

    def target_values(self, device: torch.device) -> Tensor:
        """``V [G, NZ]``, ``V(g, c(z))`` of the target network at every z: the enumeration of the module
        docstring, done once per set of target weights (:meth:`DeepSetsQ.frozen`: the target is fixed between syncs)."""
        target = self.target_net
        return target.frozen("mfq_values", lambda: self._backup(q_on_tables(target, self._Z.to(device))))

    def td_target(self, r: Tensor, g_next: Tensor, c_next: Tensor | None, x_next: Tensor | None = None) -> Tensor:
        """``r + gamma/m sum_j V(g'_j, c'_j)``: ``c_next [B, m, L Al]`` holds the next state counts as pairs
        with action 0, i.e. the representative table ``z' = (c', 0)`` whose rank indexes ``V``."""
        assert c_next is not None
        B, m = g_next.shape
        V = self.target_values(g_next.device)
        v_next = V[g_next.reshape(-1), rank(c_next.reshape(B * m, -1))].reshape(B, m).mean(1)
        return r.to(v_next.dtype) + self.env.gamma * v_next

    def eval_metrics(self) -> dict[str, float]:
        """``eval/*`` of Algorithm 2 with the network's greedy tables on the n-agent system (exact gap if tractable)."""
        task = self.task.to(self._run_device())
        policy = mfq_policy_of(self.net, int(self.hparams.k), task.L, task.Al, self.algo.tie_tol)
        return mfq_validation_metrics(task, policy, self.hparams.n, self.eval_cfg)


def mfq_policy_from_checkpoint(path: str | Path, k: int | None = None) -> MFQPolicy:
    """Rebuild the executed policy of a ``deepsets_mfq`` checkpoint from the file alone (weights only)."""
    ckpt = load_checkpoint(path)
    hp = ckpt["hyper_parameters"]
    task = build_env(hp["env"])
    net = net_from_checkpoint(ckpt, pair_env(task), path)
    tie_tol = DeepSetsMFQConfig(**hp["algo"]).tie_tol
    return mfq_policy_of(net, hp["k"] if k is None else k, task.L, task.Al, tie_tol)


__all__ = ["MFQModule", "check_enumeration", "mfq_policy_from_checkpoint", "mfq_policy_of", "q_all_tables",
           "q_on_tables"]
