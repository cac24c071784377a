"""``algo=sb3_dqn`` / ``algo=sb3_ppo``: Stable-Baselines3 baselines on the n-agent Gymnasium env.

Leaves ``policy.zip`` + ``policy.json`` (:class:`sqtorch.baselines.sb3.SB3Policy`) and SB3's own
TensorBoard scalars beside the final ``eval/*`` ones. Evaluated like every other policy: the same
Monte Carlo evaluator and, where the n-count MDP is tractable, the same exact gap (docs/model.md §5).
SB3 is an optional extra (``pip install -e '.[baselines]'``), imported only when a baseline runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqtorch import metrics as M
from sqtorch.baselines.config import ARTIFACT_STEM, Sb3DqnConfig, Sb3PpoConfig
from sqtorch.envs.base import GlobalLocalMDP
from sqtorch.evaluation.reference import build_reference, evaluate_return, exact_gap
from sqtorch.experiment.config import ConfigError
from sqtorch.experiment.outputs import finish, logging_to
from sqtorch.experiment.registry import BASELINE, Algorithm, LoadedPolicy, TrainContext


def _sb3():
    try:
        from sqtorch.baselines import sb3
    except ImportError as e:
        raise ConfigError(f"the SB3 baselines need the baselines extra: pip install -e '.[baselines]' ({e})") from e
    return sb3


class _Sb3(Algorithm):
    artifact = f"{ARTIFACT_STEM}.zip"
    interruptible = False  # SB3's loop has no safe stopping point: a signal ends it the default way
    simulators = True  # any simulator; continuous local states with algo.bins (the histogram observation)

    def check_env(self, config: Any, env: Any, n: int, k: int) -> None:
        """Continuous local states need ``algo.bins``; finite ones must not have it."""
        if env.local.is_finite and config.bins is not None:
            raise ValueError(f"algo.bins = {config.bins} bins continuous local states; env '{env.name}' has finite "
                             "ones: remove algo.bins")
        if not env.local.is_finite and config.bins is None:
            raise ValueError(f"env '{env.name}' has continuous local states ({env.local.describe()}): set "
                             "algo.bins=<bins per coordinate> (the policy observes their histogram)")

    def train(self, ctx: TrainContext) -> dict[str, float]:
        """Train SB3 DQN / PPO on the n-agent Gymnasium env, then evaluate it like any subsampled policy."""
        sb3 = _sb3()
        spec, a, out = ctx.spec, ctx.spec.algo, ctx.out
        with logging_to(ctx.cfg) as tb:
            env_arg = spec.env if isinstance(spec.env, GlobalLocalMDP) else spec.env_cfg  # a simulator: by config
            path = sb3.train_sb3(
                a.algo, env_arg, spec.n, obs=a.obs, k=spec.k if a.obs == "subsample" else None,
                total_timesteps=a.total_timesteps, seed=spec.seed, out_dir=out, horizon=a.horizon,
                num_envs=a.num_envs, algo_kwargs=a.algo_kwargs(), device=spec.device.type, num_threads=spec.threads,
                stem=ARTIFACT_STEM, tensorboard_dir=out if tb is not None else None, bins=a.bins,
            )
            policy = sb3.SB3Policy.load(path)  # evaluate what evaluate.py will load
            env = spec.env.to(spec.device)
            mean, ci = evaluate_return(env, policy, spec.n, **spec.eval.mc_kwargs())
            metrics = {
                M.EVAL_RETURN: mean,
                M.EVAL_RETURN_CI: ci,
                M.TRAIN_WALL_SECONDS: float(policy.meta["train_seconds"]),
                M.TRAIN_SAMPLES: float(policy.samples),
                M.TRAIN_PARAMETERS: float(policy.num_parameters()),
                M.TRAIN_GLOBAL_STEP: float(policy.meta["env_steps"]),
            }
            ref = build_reference(env, spec.n, policy.k, spec.eval, with_tabular=False)  # empty for a simulator
            gap = exact_gap(env, spec.n, policy.greedy(), policy.k, ref) if ref.v_star is not None else None
            if gap is not None:
                metrics[M.EVAL_GAP] = gap
            details = f"obs={a.obs} env_steps={policy.meta['env_steps']} wall={policy.meta['train_seconds']:.1f}s"
            return finish(ctx.cfg, spec, out, tb, metrics, int(policy.meta["env_steps"]), details)

    def load(self, path: Path, cfg: dict, metrics: dict) -> LoadedPolicy:
        """Every env step moves all n agents: the samples are ``train/samples`` (env steps * n)."""
        policy = _sb3().SB3Policy.load(path / self.artifact)
        return LoadedPolicy(policy, f"sb3 {policy.algo} {policy.obs}", policy.k, policy.num_parameters(),
                            float(metrics[M.TRAIN_WALL_SECONDS]), kind=BASELINE)


class Sb3Dqn(_Sb3):
    name = "sb3_dqn"
    config = Sb3DqnConfig


class Sb3Ppo(_Sb3):
    name = "sb3_ppo"
    config = Sb3PpoConfig
