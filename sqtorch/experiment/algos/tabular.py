"""``algo=tabular``: SUBSAMPLE-Q's tabular learner (:func:`sqtorch.tabular.learn`, docs/model.md §2).

Leaves ``qtable.pt``; logs the Bellman error bound per sweep. Deterministic: a rerun of the same
command gives the same Q-table bit for bit, so there is no checkpoint to resume from.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from sqtorch import metrics as M
from sqtorch.envs import build_env
from sqtorch.envs.discretize import Discretized, DiscretizedPolicy
from sqtorch.evaluation.reference import build_reference, evaluate_return, exact_gap
from sqtorch.experiment.outputs import QTABLE, finish, logging_to
from sqtorch.experiment.registry import Algorithm, LoadedPolicy, TrainContext
from sqtorch.tabular.config import TabularConfig
from sqtorch.tabular.counts import num_counts
from sqtorch.tabular.learner import check_learnable, learn
from sqtorch.tabular.qtable import QTable

logger = logging.getLogger(__name__)
PROGRESS_EVERY_S = 10.0  # a progress line at most this often


class Tabular(Algorithm):
    name = "tabular"
    config = TabularConfig
    artifact = QTABLE
    simulators = True  # finite simulators by their samples (m-sample operator), continuous ones by algo.bins

    def train(self, ctx: TrainContext) -> dict[str, float]:
        """``learn(env, k, m, T, tol)``, then the Monte Carlo return and, where tractable, the exact gap."""
        with logging_to(ctx.cfg) as tb:
            spec, a, flag = ctx.spec, ctx.spec.algo, ctx.flag
            env = spec.env.to(spec.device)
            last_report = [0.0]

            def on_iteration(it: int, residual: float, elapsed: float) -> None:
                flag.check("the tabular learner is deterministic: rerunning the same command gives the same Q-table")
                if tb is not None:
                    tb.log_metrics({M.TABULAR_RESIDUAL: residual, M.TABULAR_ELAPSED: elapsed}, step=it)
                if elapsed - last_report[0] >= PROGRESS_EVERY_S:
                    last_report[0] = elapsed
                    logger.info("tabular iteration %d/%d: error bound %.3g (tol %g), %.0f s",
                                it + 1, a.T, residual, a.tol, elapsed)

            model = env if a.bins is None else Discretized(env, a.bins)  # the histogram model of a continuous env
            entries = model.G * num_counts(spec.k, model.L) * model.A
            logger.info("tabular: m = %s next states for %s entries (G*N*A) ...", a.m, f"{entries:,}")
            res = learn(model, spec.k, a.m, T=a.T, tol=a.tol, seed=spec.seed, n=spec.n, dtype=a.torch_dtype,
                        max_memory_gib=a.max_memory_gib, on_iteration=on_iteration)
            res.qtable.save(ctx.out / QTABLE)
            policy = res.qtable if a.bins is None else DiscretizedPolicy(res.qtable, model)
            mean, ci = evaluate_return(env, policy, spec.n, **spec.eval.mc_kwargs())
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
            return finish(ctx.cfg, spec, ctx.out, tb, metrics, res.iterations, details)

    def check_env(self, config: TabularConfig, env: Any, n: int, k: int) -> None:
        """Finite local states, or ``algo.bins`` for continuous ones; ``m = exact`` only with kernel tensors."""
        if config.bins is not None and env.local.is_finite:
            raise ValueError(f"algo.bins = {config.bins} discretizes continuous local states; env '{env.name}' has "
                             "finite ones: remove algo.bins")
        if config.bins is None:
            check_learnable(env, config.m)
        elif config.m == "exact":
            raise ValueError(f"algo.m = 'exact' needs kernel tensors; the {config.bins}-bin model of env "
                             f"'{env.name}' is sampled: set algo.m=<next-state samples per entry>, e.g. 20")

    def load(self, path: Path, cfg: dict, metrics: dict) -> LoadedPolicy:
        qtable = QTable.load(path / QTABLE)
        bins = cfg["algo"].get("bins")
        policy = qtable if bins is None else DiscretizedPolicy(qtable, Discretized(build_env(cfg["env"]), int(bins)))
        seconds = metrics[M.TABULAR_LEARN_SECONDS] + metrics.get(M.TABULAR_BUILD_SECONDS, 0.0)
        label = f"tabular m={cfg['algo']['m']}" + ("" if bins is None else f" bins={bins}")
        return LoadedPolicy(policy, label, qtable.k, qtable.q.numel(), float(seconds), deterministic=True)

    def samples(self, cfg: dict, metrics: dict, size: int) -> float:
        """Every entry ``(g, c, a)`` moves its k agents m times: ``G N_k A * m * k``; ``m = exact`` draws none."""
        m = cfg["algo"]["m"]
        return math.nan if m == "exact" else float(size * int(m) * int(cfg["k"]))
