"""``algo=fixed``: a fixed global policy ``a_g = actions[s_g]`` (:mod:`sqtorch.baselines.fixed`).

Nothing is learned: the run writes ``policy.json`` and evaluates it like every other policy (the same
Monte Carlo evaluator; the exact gap where the n-count MDP is tractable), so a study puts the
heuristic beside the learners on the same random numbers. Works on any simulator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqtorch import metrics as M
from sqtorch.baselines.fixed import FixedConfig, FixedPolicy
from sqtorch.envs.base import GlobalLocalMDP
from sqtorch.evaluation.reference import build_reference, evaluate_return, exact_gap
from sqtorch.experiment.outputs import finish, logging_to
from sqtorch.experiment.registry import BASELINE, Algorithm, LoadedPolicy, TrainContext

ARTIFACT = "policy.json"


class Fixed(Algorithm):
    name = "fixed"
    config = FixedConfig
    artifact = ARTIFACT
    simulators = True

    def check_env(self, config: FixedConfig, env: Any, n: int, k: int) -> None:
        config.check_env(env.G, env.A)

    def train(self, ctx: TrainContext) -> dict[str, float]:
        """Write the policy, then its Monte Carlo return and, where tractable, its exact gap."""
        spec = ctx.spec
        env = spec.env.to(spec.device)
        finite = env.local.is_finite
        policy = FixedPolicy(spec.algo.actions, env.G, env.L if finite else None)
        with logging_to(ctx.cfg) as tb:
            policy.save(ctx.out / ARTIFACT)
            mean, ci = evaluate_return(env, policy, spec.n, **spec.eval.mc_kwargs())
            metrics = {M.EVAL_RETURN: mean, M.EVAL_RETURN_CI: ci, M.TRAIN_WALL_SECONDS: 0.0, M.TRAIN_SAMPLES: 0.0}
            if isinstance(env, GlobalLocalMDP):
                gap = exact_gap(env, spec.n, policy.greedy(), 1, build_reference(env, spec.n, 1, spec.eval,
                                                                                  with_tabular=False))
                if gap is not None:
                    metrics[M.EVAL_GAP] = gap
            return finish(ctx.cfg, spec, ctx.out, tb, metrics, 0, f"actions={spec.algo.actions}")

    def load(self, path: Path, cfg: dict, metrics: dict) -> LoadedPolicy:
        policy = FixedPolicy.load(path / ARTIFACT)
        return LoadedPolicy(policy, f"fixed {policy.table.tolist()}", 1, 0, 0.0, kind=BASELINE, deterministic=True)
