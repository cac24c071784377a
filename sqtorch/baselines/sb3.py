"""Stable-Baselines3 DQN / PPO baselines on the Gymnasium env (docs/model.md §5).

The baselines learn from interaction with the n-agent simulator (``sqtorch.gym``), not from
the generative model of SUBSAMPLE-Q (Anand & Qu, arXiv 2403.00222, docs/model.md §2). Two inputs:

- ``obs="counts"``: ``[onehot(s_g), C / n]``, the lossless count lumping of all n agents; the
  saved policy acts on all agents, so its ``k`` is n (function approximation only).
- ``obs="subsample"``: ``[onehot(s_g), c / k]`` of a fresh k-subset every step, SUBSAMPLE-Q's
  input (subsampling and function approximation), so the two effects can be told apart.

Both are functions of ``(s_g, empirical distribution)``, so :class:`SB3Policy` fits the
``SubsampledPolicy`` protocol of ``sqtorch.evaluation.execution`` (``k``, ``act``) and has
``greedy()``: its deterministic action table over ``(s_g, count vector of k agents)`` in
``sqtorch.tabular.counts`` rank order, for exact evaluation with
``sqtorch.evaluation.exact.policy_value(env, n, policy.greedy(), policy.k)``.

An artifact is the SB3 zip ``<stem>.zip`` plus a JSON sidecar ``<stem>.json`` (env, n, k, obs,
horizon, steps, ``samples`` = local-agent transitions drawn from the simulator = n per env step,
wall time). Custom envs that are not a preset are saved as tensors in ``<stem>.mdp.pt``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

try:
    import gymnasium
    import stable_baselines3
    from stable_baselines3 import DQN, PPO
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.logger import configure
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "sqtorch.baselines.sb3 needs stable-baselines3 and gymnasium: pip install -e '.[baselines]'"
    ) from e

from sqtorch.checks import check_int
from sqtorch.envs import ENVS, GlobalLocalMDP, Simulator, build_env, make_env
from sqtorch.envs.discretize import Discretized
from sqtorch.evaluation.execution import horizon_for
from sqtorch.gym import GlobalLocalEnv, count_features, preset_params
from sqtorch.metrics import SAMPLES_PER_SECOND, TRAIN_SAMPLES
from sqtorch.runtime import atomic_write, torch_threads, write_text_atomic
from sqtorch.tabular.counts import all_counts, counts_of, num_counts

ALGOS: dict[str, type[BaseAlgorithm]] = {"dqn": DQN, "ppo": PPO}
OBS = ("counts", "subsample")
FORMAT = "sqtorch-sb3/1"
CHUNK = 1 << 16  # rows per forward pass in greedy()



def _same_mdp(a: GlobalLocalMDP, b: GlobalLocalMDP) -> bool:
    return a.gamma == b.gamma and all(
        torch.equal(getattr(a, f).cpu(), getattr(b, f).cpu()) for f in ("P_g", "P_l", "r_g", "r_l")
    )


def _env_record(mdp: Simulator, stem: Path, cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """JSON description that rebuilds ``mdp``: preset name + constants, else a tensor file; a simulator
    without kernel tensors is recorded by its env config ``cfg`` (``{"config": cfg}``)."""
    if not isinstance(mdp, GlobalLocalMDP):
        if cfg is None:
            raise ValueError(f"env '{mdp.name}' is a simulator: pass its env config (a name or mapping), not the "
                             "object, so that the saved policy can rebuild it")
        return {"config": dict(cfg)}
    if mdp.name in ENVS and set(mdp.params) <= set(preset_params(mdp.name)):
        try:
            rebuilt = make_env(mdp.name, **mdp.params)
        except (TypeError, ValueError):
            rebuilt = None
        if rebuilt is not None and _same_mdp(rebuilt, mdp):
            return {"name": mdp.name, **mdp.params}
    path = stem.with_suffix(".mdp.pt")
    tensors = {f: getattr(mdp, f).cpu() for f in ("P_g", "P_l", "r_g", "r_l")}
    atomic_write(path, lambda f: torch.save({**tensors, "gamma": mdp.gamma, "name": mdp.name}, f))
    return {"tensors": path.name, "name": mdp.name}


def _load_env_record(rec: Mapping[str, Any], folder: Path) -> Simulator:
    if "config" in rec:
        return build_env(rec["config"])
    if "tensors" in rec:
        d = torch.load(folder / rec["tensors"], weights_only=True)
        return GlobalLocalMDP(d["P_g"], d["P_l"], d["r_g"], d["r_l"], d["gamma"], name=d["name"])
    return build_env(rec)


def default_algo_kwargs(algo: str, total_timesteps: int, num_envs: int) -> dict[str, Any]:
    """Defaults scaled to the run length (SB3's own defaults assume runs of ~10^6 steps)."""
    if algo == "dqn":
        return dict(
            buffer_size=min(100_000, max(1_000, total_timesteps)),
            learning_starts=min(1_000, total_timesteps // 10),
            target_update_interval=max(1, min(1_000, total_timesteps // 20)),
            exploration_fraction=0.3,
        )
    n_steps = max(8, min(2048, total_timesteps // (4 * num_envs)))
    if n_steps >= 64:  # a multiple of the minibatch size: no partial minibatch per epoch
        n_steps -= n_steps % 64
    return dict(n_steps=n_steps, batch_size=max(8, min(64, n_steps * num_envs)))


def train_sb3(
    algo: str,
    env_or_cfg: Simulator | str | Mapping[str, Any],
    n: int,
    obs: str = "counts",
    k: int | None = None,
    total_timesteps: int = 100_000,
    seed: int = 0,
    out_dir: str | Path = ".",
    *,
    horizon: int | None = None,
    num_envs: int = 1,
    algo_kwargs: Mapping[str, Any] | None = None,
    device: str = "cpu",
    num_threads: int | None = 1,
    verbose: int = 0,
    stem: str | None = None,
    tensorboard_dir: str | Path | None = None,
    bins: int | None = None,
) -> Path:
    """Train SB3 ``algo`` (``dqn`` / ``ppo``) on the n-agent env; returns the saved zip's path.

    ``obs``: ``counts`` (all n agents) or ``subsample`` (fresh k-subset each step, needs k).
    The discount is the env's gamma; episodes are truncated at ``horizon`` (default: smallest H with
    ``gamma^H <= 1e-4``). ``algo_kwargs`` override :func:`default_algo_kwargs` and go to the SB3
    constructor. ``num_envs`` copies run in SB3's ``DummyVecEnv``. The sidecar ``<stem>.json``
    records ``samples = env steps x n`` (local-agent transitions drawn from the simulator).
    ``tensorboard_dir``: SB3's scalars (``rollout/*``, ``train/*``, ``time/*``) plus
    ``train/samples`` and ``charts/samples_per_second`` (sqtorch.metrics names) go there as
    TensorBoard events; ``None``: no logging. Artifacts are written atomically. A simulator with
    continuous local states needs ``bins`` (the histogram observation, :mod:`sqtorch.gym`) and is
    given by its config (a name or mapping), which the artifact records.
    """
    if algo not in ALGOS:
        raise ValueError(f"algo = {algo!r} is not supported; allowed: {sorted(ALGOS)}")
    if obs not in OBS:
        raise ValueError(f"obs = {obs!r} is not supported for baselines; allowed: {list(OBS)}")
    check_int("n", n, 1, "number of local agents")
    check_int("total_timesteps", total_timesteps, 1, "env steps")
    check_int("num_envs", num_envs, 1, "parallel envs")
    check_int("seed", seed, 0, "random seed")
    mdp = build_env(env_or_cfg)
    horizon = horizon_for(mdp.gamma) if horizon is None else check_int("horizon", horizon, 1, "steps")
    env_kw = dict(mdp=mdp, n=n, obs=obs, k=k if obs == "subsample" else None, horizon=horizon, bins=bins)
    L_obs = GlobalLocalEnv(**env_kw)._core.L  # validates n / obs / k / bins before SB3 builds anything
    cfg = None if isinstance(env_or_cfg, Simulator) else ({"name": env_or_cfg} if isinstance(env_or_cfg, str)
                                                          else env_or_cfg)
    if cfg is None and not isinstance(mdp, GlobalLocalMDP):  # refused before anything is trained
        _env_record(mdp, Path(out_dir), cfg)
    kwargs = {**default_algo_kwargs(algo, total_timesteps, num_envs), **dict(algo_kwargs or {})}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = stem or f"{algo}_{obs}_n{n}" + (f"_k{k}" if obs == "subsample" else "") + f"_seed{seed}"
    path = out / f"{stem}.zip"
    with torch_threads(num_threads):
        venv = make_vec_env(GlobalLocalEnv, n_envs=num_envs, seed=seed, env_kwargs=env_kw)
        model = ALGOS[algo]("MlpPolicy", venv, gamma=mdp.gamma, seed=seed, device=device, verbose=verbose, **kwargs)
        if tensorboard_dir is not None:
            model.set_logger(configure(str(tensorboard_dir), ["tensorboard"]))
        t0 = time.perf_counter()
        model.learn(total_timesteps=total_timesteps, callback=_SamplesCallback(n))
        seconds = time.perf_counter() - t0
        atomic_write(path, model.save)
        venv.close()
    meta = {
        "format": FORMAT,
        "algo": algo,
        "obs": obs,
        "n": n,
        "k": n if obs == "counts" else k,
        "env": _env_record(mdp, out / stem, cfg),
        "bins": bins,
        "G": mdp.G,
        "L": L_obs,
        "A": mdp.A,
        "gamma": mdp.gamma,
        "horizon": horizon,
        "seed": seed,
        "num_envs": num_envs,
        "total_timesteps": total_timesteps,
        "env_steps": int(model.num_timesteps),
        "samples": int(model.num_timesteps) * n,
        "train_seconds": seconds,
        "algo_kwargs": kwargs,
        "versions": {
            "stable_baselines3": stable_baselines3.__version__,
            "gymnasium": gymnasium.__version__,
            "torch": torch.__version__,
        },
    }
    write_text_atomic(out / f"{stem}.json", json.dumps(meta, indent=2, default=repr) + "\n")  # last: complete
    return path


class _SamplesCallback(BaseCallback):
    """Records ``train/samples`` (env steps x n local-agent transitions) and their rate with SB3's logger."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self._t0 = time.perf_counter()

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        samples = self.num_timesteps * self.n
        self.logger.record(TRAIN_SAMPLES, samples)
        self.logger.record(SAMPLES_PER_SECOND, samples / max(time.perf_counter() - self._t0, 1e-9))


class SB3Policy:
    """A trained SB3 model as a ``SubsampledPolicy``: ``k`` and ``act(s_g [B], s_sub [B, k])``.

    Acts greedily (``deterministic=True``: DQN's argmax Q, PPO's most likely action) on
    ``[onehot(s_g), c / k]`` with ``c`` the counts of the given agents. For ``obs="counts"``
    ``k = n`` (it sees every agent); ``load(path, k=...)`` may override k, the policy is a
    function of the empirical distribution, but it was trained on the recorded one.
    """

    def __init__(self, model: BaseAlgorithm, mdp: Simulator, meta: dict[str, Any], k: int | None = None) -> None:
        self.model, self.mdp, self.meta = model, mdp, meta
        bins = meta.get("bins")
        self.disc = None if bins is None else Discretized(mdp, int(bins))  # the histogram it was trained on
        self.L = int(meta["L"])
        self.k = check_int("k", meta["k"] if k is None else k, 1, "agents the policy sees")
        self.n, self.obs, self.algo = int(meta["n"]), str(meta["obs"]), str(meta["algo"])
        self.samples = int(meta.get("samples", 0))

    @classmethod
    def load(cls, path: str | Path, k: int | None = None, device: str = "cpu") -> SB3Policy:
        """Load ``<stem>.zip`` (or its ``<stem>.json``) written by :func:`train_sb3`.

        Uses SB3's own ``load``, which unpickles parts of the zip with cloudpickle: load only
        artifacts you trust, with compatible SB3 / Python versions.
        """
        path = Path(path)
        zip_path, json_path = path.with_suffix(".zip"), path.with_suffix(".json")
        for p in (zip_path, json_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p} not found; an SB3 artifact is <stem>.zip + <stem>.json from train_sb3")
        meta = json.loads(json_path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{json_path} has format {meta.get('format')!r}, expected {FORMAT!r}")
        mdp = _load_env_record(meta["env"], json_path.parent)
        model = ALGOS[meta["algo"]].load(zip_path, device=device)
        return cls(model, mdp, meta, k)

    def check_env(self, env: Simulator) -> None:
        """Raise ``ValueError`` unless ``env`` has the trained (G, local space, A)."""
        if self.mdp.local.is_finite and env.local.is_finite:
            want = (self.mdp.G, self.mdp.L, self.mdp.A)
            if (env.G, env.L, env.A) != want:
                raise ValueError(
                    f"env '{env.name}' has (G, L, A) = {(env.G, env.L, env.A)}, this policy was trained on {want}"
                )
            return
        want, have = (self.mdp.G, self.mdp.local, self.mdp.A), (env.G, env.local, env.A)
        if have != want:
            raise ValueError(f"env '{env.name}' has (G, local space, A) = ({env.G}, {env.local.describe()}, {env.A}), "
                             f"this policy was trained on ({want[0]}, {self.mdp.local.describe()}, {want[2]})")

    def _predict(self, features: Tensor) -> Tensor:
        out = []
        for start in range(0, features.shape[0], CHUNK):  # memory chunks of rows
            a, _ = self.model.predict(features[start : start + CHUNK].cpu().numpy(), deterministic=True)
            out.append(torch.as_tensor(a, dtype=torch.int64).reshape(-1))
        return torch.cat(out)

    def act(self, s_g: Tensor, s_sub: Tensor) -> Tensor:
        """Greedy ``a_g [B]`` for ``s_g [B]`` and sampled local states ``s_sub [B, k]`` (paper Alg. 2)."""
        bins = s_sub if self.disc is None else self.disc.bin_of(s_sub)
        x = count_features(s_g, counts_of(bins, self.L), self.mdp.G)
        return self._predict(x).to(s_g.device)

    def greedy(self) -> Tensor:
        """Action table ``[G, C(k+L-1, k)]`` over count vectors in ``sqtorch.tabular.counts`` rank order."""
        if self.disc is not None:
            raise ValueError("greedy() needs finite local states (this policy bins continuous ones)")
        G, L = self.mdp.G, self.L
        c = all_counts(self.k, L)  # [N, L]
        N = c.shape[0]
        s_g = torch.arange(G).repeat_interleave(N)
        x = count_features(s_g, c.repeat(G, 1), G)
        return self._predict(x).reshape(G, N)

    def num_parameters(self) -> int:
        """Parameters of the acting network (DQN: the online Q-network; PPO: actor and critic)."""
        net = getattr(self.model.policy, "q_net", self.model.policy)
        return sum(p.numel() for p in net.parameters())

    def table_size(self) -> int:
        """Entries of :meth:`greedy` (``G * C(k+L-1, k)``)."""
        return self.mdp.G * num_counts(self.k, self.L)

    def __repr__(self) -> str:
        return f"SB3Policy(algo={self.algo!r}, obs={self.obs!r}, n={self.n}, k={self.k}, env={self.mdp.name!r})"


__all__ = ["ALGOS", "SB3Policy", "default_algo_kwargs", "train_sb3"]
