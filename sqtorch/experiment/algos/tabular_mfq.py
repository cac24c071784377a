"""``algo=tabular_mfq``: tabular SUBSAMPLE-MFQ for envs whose local agents act (docs/model.md §7).

Learns ``Q_k`` on counts of (local state, local action) pairs with :func:`sqtorch.tabular.mfq.learn_mfq`
(exact or m samples, the one solver), leaves ``mfq_table.pt``, and evaluates the decentralized
policy of Algorithm 2 (:class:`sqtorch.tabular.mfq_policy.MFQPolicy`) on the n-agent system: Monte
Carlo with common random numbers and, where the pair-count MDP is tractable, the exact gap
``mean_s0 V*(s0) - V^pi(s0)``. Deterministic like ``tabular``: rerun the command instead of resuming.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sqtorch import metrics as M
from sqtorch.envs import build_env
from sqtorch.evaluation.reference import mfq_validation_metrics
from sqtorch.experiment.config import RunSpec
from sqtorch.experiment.outputs import QTABLE, finish, logging_to
from sqtorch.experiment.registry import Algorithm, LoadedPolicy, TrainContext
from sqtorch.tabular.config import TabularLocalRuleConfig, TabularMFQConfig
from sqtorch.tabular.learner import learn
from sqtorch.tabular.mfq import MFQTable, learn_mfq
from sqtorch.tabular.mfq_policy import MFQPolicy
from sqtorch.tabular.qtable import QTable

logger = logging.getLogger(__name__)
ARTIFACT = "mfq_table.pt"
OnIteration = Callable[[int, float, float], None]  # (sweep, error bound, seconds) after every sweep


@dataclass
class Fitted:
    """What a tabular fit leaves: its artifact writer and what the metrics report."""

    save: Callable[[Path], None]
    size: int
    seconds: float
    iterations: int
    converged: bool
    residuals: list[float]


class TabularMFQ(Algorithm):
    name = "tabular_mfq"
    config = TabularMFQConfig
    artifact = ARTIFACT
    local_actions = True

    def _learn(self, spec: RunSpec, on_iteration: OnIteration) -> tuple[MFQPolicy, Fitted]:
        """``learn_mfq(env, k, m, T, tol)`` and the decentralized greedy policy of its table."""
        a, env = spec.algo, spec.env.to(spec.device)
        res = learn_mfq(env, spec.k, a.m, T=a.T, tol=a.tol, seed=spec.seed, n=spec.n, dtype=a.torch_dtype,
                        max_memory_gib=a.max_memory_gib, on_iteration=on_iteration)
        fitted = Fitted(res.table.save, res.table.q.numel(), res.seconds, res.iterations, res.converged, res.residuals)
        return MFQPolicy.from_table(res.table, a.tie_tol), fitted

    def train(self, ctx: TrainContext) -> dict[str, float]:
        """Learn (:meth:`_learn`), then Algorithm 2's return on n agents and the exact gap if tractable."""
        spec, a, flag = ctx.spec, ctx.spec.algo, ctx.flag
        env, ev = spec.env.to(spec.device), spec.eval
        with logging_to(ctx.cfg) as tb:

            def on_iteration(it: int, residual: float, elapsed: float) -> None:
                flag.check("the tabular learner is deterministic: rerunning the same command gives the same Q-table")
                if tb is not None:
                    tb.log_metrics({M.TABULAR_RESIDUAL: residual, M.TABULAR_ELAPSED: elapsed}, step=it)

            policy, fit = self._learn(spec, on_iteration)
            fit.save(ctx.out / self.artifact)
            metrics = mfq_validation_metrics(env, policy, spec.n, ev)  # return, and the exact gap if tractable
            flag.check("after learning, before the final metrics; rerun the same command")
            metrics |= {
                M.TABULAR_TABLE_SIZE: fit.size,
                M.TABULAR_LEARN_SECONDS: fit.seconds,
                M.TABULAR_ITERATIONS: fit.iterations,
                M.TABULAR_CONVERGED: float(fit.converged),
                M.TABULAR_RESIDUAL: fit.residuals[-1] if fit.residuals else math.nan,
            }
            details = f"m={a.m} iterations={fit.iterations} converged={fit.converged} learn={fit.seconds:.2f}s"
            return finish(ctx.cfg, spec, ctx.out, tb, metrics, fit.iterations, details)

    def load(self, path: Path, cfg: dict, metrics: dict) -> LoadedPolicy:
        table = MFQTable.load(path / ARTIFACT)
        policy = MFQPolicy.from_table(table, cfg["algo"].get("tie_tol"))
        return LoadedPolicy(policy, f"tabular_mfq m={cfg['algo']['m']}", policy.k, table.q.numel(),
                            float(metrics[M.TABULAR_LEARN_SECONDS]), deterministic=True)

    def samples(self, cfg: dict, metrics: dict, size: int) -> float:
        """Every entry ``(g, a_g, z)`` moves its k agents m times; ``m = exact`` draws none."""
        m = cfg["algo"]["m"]
        return math.nan if m == "exact" else float(size * int(m) * int(cfg["k"]))


class TabularLocalRule(TabularMFQ):
    """``algo=tabular_local_rule``: SUBSAMPLE-Q for the global agent while every local agent plays a fixed
    rule ``a_i = rule[s_i]`` (docs/model.md §7.8), the comparator of SUBSAMPLE-MFQ: tabular SUBSAMPLE-Q
    (:func:`sqtorch.tabular.learn`) on :meth:`LocalActionMDP.with_local_rule`, executed and evaluated
    like ``tabular_mfq`` (:meth:`MFQPolicy.with_local_rule`). Leaves ``qtable.pt``."""

    name = "tabular_local_rule"
    config = TabularLocalRuleConfig
    artifact = QTABLE

    def check_env(self, config: TabularLocalRuleConfig, env: Any, n: int, k: int) -> None:
        config.rule_for(env.L, env.Al)

    def _learn(self, spec: RunSpec, on_iteration: OnIteration) -> tuple[MFQPolicy, Fitted]:
        a, env = spec.algo, spec.env.to(spec.device)
        rule = torch.tensor(a.rule_for(env.L, env.Al), device=env.device)
        res = learn(env.with_local_rule(rule), spec.k, a.m, T=a.T, tol=a.tol, seed=spec.seed, n=spec.n,
                    dtype=a.torch_dtype, max_memory_gib=a.max_memory_gib, on_iteration=on_iteration)
        fitted = Fitted(res.qtable.save, res.qtable.q.numel(), res.learn_seconds + res.build_seconds,
                        res.iterations, res.converged, res.residuals)
        return MFQPolicy.with_local_rule(res.qtable.greedy(), rule, spec.k, env.Al, env.A), fitted

    def load(self, path: Path, cfg: dict, metrics: dict) -> LoadedPolicy:
        qtable = QTable.load(path / QTABLE)
        env = build_env(cfg["env"])
        rule = TabularLocalRuleConfig(**cfg["algo"]).rule_for(env.L, env.Al)
        policy = MFQPolicy.with_local_rule(qtable.greedy(), torch.tensor(rule), qtable.k, env.Al, env.A)
        return LoadedPolicy(policy, f"tabular_local_rule m={cfg['algo']['m']} rule={rule}", qtable.k,
                            qtable.q.numel(), float(metrics[M.TABULAR_LEARN_SECONDS]), deterministic=True)
