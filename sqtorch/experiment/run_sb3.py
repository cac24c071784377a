"""One run of a Stable-Baselines3 baseline (``algo=sb3_dqn`` / ``algo=sb3_ppo``) from a Hydra config.

Called by :func:`sqtorch.experiment.run.run` after validation (SB3 itself, an optional extra, is
imported in :func:`run_sb3` only). Like the other algorithms it leaves
in the run dir: ``config.yaml``, the artifact (``policy.zip`` + ``policy.json``, loaded by
``evaluate.py`` with :meth:`sqtorch.baselines.sb3.SB3Policy.load`), TensorBoard event files in the
run dir itself (SB3's ``rollout/*``, ``train/*``, ``time/*`` scalars beside the final ``eval/*``
ones and the HPARAMS tab) and, last, ``metrics.json``. The final evaluation is the tabular one:
the same Monte Carlo evaluator and, where the n-count MDP is tractable, the same exact gap
(:func:`sqtorch.evaluation.reference.exact_gap`, docs/model.md §5).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from sqtorch import metrics as M
from sqtorch.baselines.config import ARTIFACT_STEM, Sb3Config
from sqtorch.evaluation.reference import build_reference, evaluate_return, exact_gap
from sqtorch.experiment.config import ConfigError, RunSpec
from sqtorch.experiment.outputs import finish, logging_to


def run_sb3(cfg: DictConfig, spec: RunSpec, out: Path) -> dict[str, float]:
    """Train SB3 DQN / PPO on the n-agent Gymnasium env, evaluate it like a tabular policy, write the run."""
    try:
        from sqtorch.baselines.sb3 import SB3Policy, train_sb3
    except ImportError as e:
        extra = "pip install -e '.[baselines]'"
        raise ConfigError(f"algo = '{spec.algo.name}' needs the baselines extra: {extra} ({e})") from e
    a: Sb3Config = spec.algo  # type: ignore[assignment]
    env = spec.env
    with logging_to(cfg) as logger:
        path = train_sb3(
            a.algo, env, spec.n, obs=a.obs, k=spec.k if a.obs == "subsample" else None,
            total_timesteps=a.total_timesteps, seed=spec.seed, out_dir=out, horizon=a.horizon,
            num_envs=a.num_envs, algo_kwargs=a.algo_kwargs(), device=spec.device.type, num_threads=spec.threads,
            stem=ARTIFACT_STEM, tensorboard_dir=out if logger is not None else None,
        )
        policy = SB3Policy.load(path)  # evaluate what evaluate.py will load
        env = env.to(spec.device)
        mean, ci = evaluate_return(env, policy, spec.n, **spec.eval.mc_kwargs())
        metrics = {
            M.EVAL_RETURN: mean,
            M.EVAL_RETURN_CI: ci,
            M.TRAIN_WALL_SECONDS: float(policy.meta["train_seconds"]),
            M.TRAIN_SAMPLES: float(policy.samples),
            M.TRAIN_PARAMETERS: float(policy.num_parameters()),
            M.TRAIN_GLOBAL_STEP: float(policy.meta["env_steps"]),
        }
        ref = build_reference(env, spec.n, policy.k, spec.eval, with_tabular=False)
        gap = exact_gap(env, spec.n, policy.greedy(), policy.k, ref) if ref.v_star is not None else None
        if gap is not None:
            metrics[M.EVAL_GAP] = gap
        details = f"obs={a.obs} env_steps={policy.meta['env_steps']} wall={policy.meta['train_seconds']:.1f}s"
        return finish(cfg, spec, out, logger, metrics, int(policy.meta["env_steps"]), details)
