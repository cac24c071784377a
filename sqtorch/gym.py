"""Gymnasium interface to the n-agent global-local system (docs/model.md §1, §4).

The global agent is the Gymnasium agent: it observes the system, picks ``a_g in {0..A-1}``
(``Discrete(A)``), and all n local agents move (Anand & Qu, arXiv 2403.00222, Algorithm 2
dynamics). The reward is ``r_g[s_g, a_g] + (1/n) sum_i r_l[s_g, a_g, s_i]`` over **all n**
agents, exactly ``GlobalLocalMDP.reward``. The task is continuing (``terminated`` is always
False); episodes are truncated after ``horizon`` steps (default: the evaluation horizon, the
smallest H with ``gamma^H <= 1e-4``, docs/model.md §5). Initial states are uniform, as in
``sqtorch.envs.simulator.sample_initial_state``.

Observation modes (``obs=``), all accepted by Stable-Baselines3 DQN/PPO:

- ``"counts"``: ``Box(0, 1, (G + L,), float32)`` = ``[onehot(s_g), C / n]`` with ``C [L]`` the
  count vector of all n local states (the lossless lumping of docs/model.md §2; ``C / n`` is the
  empirical distribution, so the scale does not depend on n).
- ``"subsample"``: the same layout with ``c / k``, ``c`` the counts of a **fresh** uniform k-subset
  of the agents drawn at every observation (the input of a SUBSAMPLE-Q policy, paper Algorithm 2).
- ``"agents"``: ``MultiDiscrete([G, L, ..., L])`` (int64, length ``1 + n``) = ``[s_g, s_1..s_n]``,
  every local state (for small n; SB3 one-hot encodes it, so its input grows like ``n L``).

Any :class:`~sqtorch.envs.protocol.Simulator` runs here through its protocol methods. With
continuous local states pass ``bins=``: ``counts``/``subsample`` then count the agents' bins of
:class:`~sqtorch.envs.discretize.Discretized` (the histogram observation of the follow-ups; the
dynamics stay continuous), and ``L`` is the number of bins.

Both envs run the simulator's own batched ``step`` (for a :class:`~sqtorch.envs.base.GlobalLocalMDP`
the tensor step of ``sqtorch.envs.simulator``); the single env is
the vector env's core at batch 1, so for one seed :class:`GlobalLocalEnv` and a 1-env
:class:`GlobalLocalVectorEnv` produce the same trajectory.

Seeding follows Gymnasium: ``reset(seed=s)`` reseeds ``np_random``, from which two torch
generators are seeded (dynamics/initial states, and subset draws: separate streams, so the
subsample observation never shifts the dynamics noise); ``reset()`` without a seed continues them.

Registered ids (on import of this module): ``sqtorch/Queue-v0``, ``sqtorch/DemandResponse-v0``,
``sqtorch/DemandResponseScript-v0`` (every constant of the preset is a kwarg, e.g.
``gymnasium.make("sqtorch/Queue-v0", n=100, Q=6, lam=0.3, obs="subsample", k=5)``) and
``sqtorch/GlobalLocal-v0`` (pass ``mdp=`` a :class:`~sqtorch.envs.base.GlobalLocalMDP`).
Gymnasium 1.x has no plugin discovery, so import ``sqtorch.gym`` first, or name the module
in the id: ``gymnasium.make("sqtorch.gym:sqtorch/Queue-v0")``. ``gymnasium.make_vec(id,
num_envs=B)`` builds the batched :class:`GlobalLocalVectorEnv`.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sqtorch.checks import check_int, check_k, out_of_range

try:
    import gymnasium
    from gymnasium import spaces
    from gymnasium.vector import AutoresetMode, VectorEnv
    from gymnasium.vector.utils import batch_space
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "sqtorch.gym needs gymnasium>=1.0: pip install -e '.[gym]' (or '.[baselines]')"
    ) from e

from sqtorch.envs import ENVS, GlobalLocalMDP, build_env, env_params
from sqtorch.envs.discretize import Discretized
from sqtorch.envs.simulator import gather_agents, make_generator, sample_subset
from sqtorch.evaluation.execution import horizon_for
from sqtorch.tabular.counts import count_features, counts_of

OBS_MODES = ("counts", "subsample", "agents")
SEED_HIGH = 2**63 - 1

PRESET_IDS: dict[str, str] = {
    "sqtorch/Queue-v0": "queue",
    "sqtorch/DemandResponse-v0": "demand_response",
    "sqtorch/DemandResponseScript-v0": "demand_response_script",
}
GENERIC_ID = "sqtorch/GlobalLocal-v0"
ENTRY_POINT = "sqtorch.gym:GlobalLocalEnv"
VECTOR_ENTRY_POINT = "sqtorch.gym:GlobalLocalVectorEnv"


def preset_params(name: str) -> dict[str, Any]:
    """Default constants of the registered env ``name`` (the keyword defaults of its builder)."""
    if name not in ENVS:
        raise ValueError(f"mdp = '{name}' is unknown; allowed: {sorted(ENVS)}")
    return {key: d for key, d in env_params(ENVS[name]).items() if d is not inspect.Parameter.empty}


class _Core:
    """Batched state of B systems, their generators and the observation encoder (shared core)."""

    def __init__(
        self,
        mdp: GlobalLocalMDP,
        n: int,
        obs: str,
        k: int | None,
        horizon: int | None,
        batch: int,
        device: torch.device | str | None,
        bins: int | None = None,
    ) -> None:
        self.n = check_int("n", n, 1, "number of local agents")
        if obs not in OBS_MODES:
            raise ValueError(f"obs = {obs!r} is not an observation mode; allowed: {list(OBS_MODES)}")
        if obs == "subsample":
            if k is None:
                raise out_of_range("k", k, f"1 <= k <= n = {n}", "obs = 'subsample' needs the subsample size")
            k = check_k(k, n, "subsample size")
        elif k is not None:
            raise ValueError(f"k = {k!r} is only used with obs = 'subsample' (got obs = {obs!r}); leave it None")
        self.obs, self.k = obs, k
        self.mdp = mdp.to(device) if device is not None else mdp
        self.horizon = horizon_for(mdp.gamma) if horizon is None else check_int("horizon", horizon, 1, "steps")
        self.batch = batch
        dev = self.mdp.device
        self.disc = self._histogram(bins)
        self.L = self.mdp.L if self.disc is None else self.disc.L  # local states (bins) the observation counts
        self.gen_dyn: torch.Generator | None = None
        self.gen_sub: torch.Generator | None = None
        self.s_g = torch.zeros(batch, dtype=torch.int64, device=dev)
        if self.disc is None:
            self.s_l = torch.zeros(batch, n, dtype=torch.int64, device=dev)
        else:
            self.s_l = torch.zeros(batch, n, int(self.mdp.local.d), device=dev)
        self.t = torch.zeros(batch, dtype=torch.int64, device=dev)

    def _histogram(self, bins: int | None) -> Discretized | None:
        """The binning of continuous local states (``bins`` per coordinate); ``None`` for finite ones."""
        if self.mdp.local.is_finite:
            if bins is not None:
                raise ValueError(f"bins = {bins} bins continuous local states; env '{self.mdp.name}' has finite "
                                 "ones: leave bins None")
            return None
        if bins is None:
            raise ValueError(f"env '{self.mdp.name}' has continuous local states ({self.mdp.local.describe()}): "
                             "pass bins=<bins per coordinate> (the observation is their histogram)")
        if self.obs == "agents":
            raise ValueError("obs = 'agents' needs finite local states; use 'counts' or 'subsample' with bins")
        return Discretized(self.mdp, bins)

    def _bins(self, s_l: Tensor) -> Tensor:
        return s_l if self.disc is None else self.disc.bin_of(s_l)

    def single_observation_space(self) -> spaces.Space:
        G, L = self.mdp.G, self.L
        if self.obs == "agents":
            return spaces.MultiDiscrete(np.array([G] + [L] * self.n, dtype=np.int64))
        return spaces.Box(0.0, 1.0, shape=(G + L,), dtype=np.float32)

    def seed(self, rng: np.random.Generator) -> None:
        """Seed both torch generators from ``rng`` (the env's ``np_random``)."""
        seeds = rng.integers(0, SEED_HIGH, size=2)
        self.gen_dyn = make_generator(int(seeds[0]), self.mdp.device)
        self.gen_sub = make_generator(int(seeds[1]), self.mdp.device)

    def reset_rows(self, rows: Tensor | None, options: dict[str, Any] | None) -> None:
        """Fresh uniform initial states (or ``options['s_g'] / ['s_l']``) for ``rows`` (None: all)."""
        count = self.batch if rows is None else int(rows.numel())
        if options and ("s_g" in options or "s_l" in options):
            s_g, s_l = self._explicit_state(options, count)
        else:  # a GlobalLocalMDP's initial is sample_initial_state
            s_g, s_l = self.mdp.initial(self.n, count, self.gen_dyn)
        if rows is None:
            self.s_g, self.s_l = s_g, s_l
            self.t = torch.zeros_like(self.t)
        else:
            self.s_g[rows], self.s_l[rows], self.t[rows] = s_g, s_l, 0

    def _explicit_state(self, options: dict[str, Any], count: int) -> tuple[Tensor, Tensor]:
        if "s_g" not in options or "s_l" not in options:
            raise ValueError("reset options must give both 's_g' and 's_l' (or neither)")
        if self.disc is not None:
            raise ValueError("reset options 's_g' / 's_l' need finite local states")
        dev = self.mdp.device
        s_g = torch.as_tensor(np.asarray(options["s_g"]), dtype=torch.int64, device=dev).reshape(-1)
        s_l = torch.as_tensor(np.asarray(options["s_l"]), dtype=torch.int64, device=dev)
        if s_g.numel() not in (1, count) or s_l.shape[-1:] != (self.n,) or s_l.numel() not in (self.n, count * self.n):
            raise ValueError(
                f"options['s_g'] / ['s_l'] have shapes {tuple(s_g.shape)} / {tuple(s_l.shape)}, expected "
                f"one state (scalar / [n] = [{self.n}]) or one per reset row ([{count}] / [{count}, {self.n}])"
            )
        s_l = s_l.reshape(-1, self.n)
        s_g, s_l = s_g.expand(count).clone(), s_l.expand(count, self.n).clone()
        for name, s, size in (("s_g", s_g, self.mdp.G), ("s_l", s_l, self.mdp.L)):
            if (s < 0).any() or (s >= size).any():
                raise ValueError(f"options['{name}'] has values outside the state space {{0..{size - 1}}}")
        return s_g, s_l

    def step(self, a_g: Tensor, rows: Tensor | None = None) -> Tensor:
        """Advance ``rows`` (None: all) one step with actions ``a_g``; returns their rewards (float64)."""
        if rows is None:
            self.s_g, self.s_l, r = self.mdp.step(self.s_g, self.s_l, a_g, self.gen_dyn)
            self.t += 1
            return r
        s_g, s_l, r = self.mdp.step(self.s_g[rows], self.s_l[rows], a_g, self.gen_dyn)
        self.s_g[rows], self.s_l[rows] = s_g, s_l
        self.t[rows] += 1
        return r

    def observe(self) -> np.ndarray:
        """Observations of all B systems, ``[B, ...]`` (a fresh subset per row for ``subsample``)."""
        if self.obs == "agents":
            return torch.cat([self.s_g[:, None], self.s_l], 1).cpu().numpy()
        if self.obs == "counts":
            c = counts_of(self._bins(self.s_l), self.L)
        else:
            idx = sample_subset(self.n, self.k, self.batch, self.gen_sub)
            c = counts_of(self._bins(gather_agents(self.s_l, idx)), self.L)
        return count_features(self.s_g, c, self.mdp.G).cpu().numpy()

    def actions(self, action: Any, name: str = "action") -> Tensor:
        a = torch.as_tensor(np.asarray(action), device=self.mdp.device).reshape(-1)
        if a.dtype.is_floating_point or a.dtype == torch.bool or a.numel() != self.batch:
            raise ValueError(
                f"{name} = {action!r} must be {self.batch} integer action(s) in {{0..{self.mdp.A - 1}}}"
            )
        if int(a.min()) < 0 or int(a.max()) >= self.mdp.A:
            raise ValueError(f"{name} = {action!r} is outside the allowed range {{0..{self.mdp.A - 1}}}")
        return a.long()

    def render(self, row: int = 0) -> str:
        c = counts_of(self._bins(self.s_l[row : row + 1]), self.L)[0].tolist()
        return f"t={int(self.t[row])} s_g={int(self.s_g[row])} counts={c}"


class GlobalLocalEnv(gymnasium.Env):
    """The n-agent system as a Gymnasium env of the global agent (docs/model.md §1; module docstring).

    ``mdp``: a :class:`GlobalLocalMDP` or a preset name (``queue``, ``demand_response``,
    ``demand_response_script``) whose constants are passed as ``env_kwargs``. ``n`` local agents,
    observation mode ``obs`` (``counts`` / ``subsample`` with ``k`` / ``agents``), truncation after
    ``horizon`` steps. ``reset(options={"s_g": g, "s_l": [n states]})`` starts from a given state.
    ``info`` is empty; the full state is :attr:`state`.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        mdp: GlobalLocalMDP | str = "queue",
        n: int = 10,
        obs: str = "counts",
        k: int | None = None,
        horizon: int | None = None,
        device: torch.device | str | None = None,
        render_mode: str | None = None,
        bins: int | None = None,
        **env_kwargs: Any,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode = {render_mode!r}; allowed: None or {self.metadata['render_modes']}")
        self.mdp = build_env(mdp, **env_kwargs)
        self._core = _Core(self.mdp, n, obs, k, horizon, 1, device, bins)
        self.mdp = self._core.mdp
        self.n, self.obs, self.k, self.horizon = n, obs, self._core.k, self._core.horizon
        self.render_mode = render_mode
        self.action_space = spaces.Discrete(self.mdp.A)
        self.observation_space = self._core.single_observation_space()

    @property
    def state(self) -> tuple[Tensor, Tensor]:
        """Copy of the current full state ``(s_g [], s_l [n])`` (int64 tensors)."""
        return self._core.s_g[0].clone(), self._core.s_l[0].clone()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None or self._core.gen_dyn is None:
            self._core.seed(self.np_random)
        self._core.reset_rows(None, options)
        return self._core.observe()[0], {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._core.gen_dyn is None:
            raise RuntimeError("call reset() before step()")
        r = self._core.step(self._core.actions(action))
        truncated = bool(self._core.t[0] >= self.horizon)
        return self._core.observe()[0], float(r[0]), False, truncated, {}

    def render(self) -> str | None:
        return self._core.render() if self.render_mode == "ansi" else None


class GlobalLocalVectorEnv(VectorEnv):
    """``num_envs`` independent copies of :class:`GlobalLocalEnv` simulated as one torch batch.

    Same arguments as :class:`GlobalLocalEnv` plus ``num_envs`` and ``autoreset_mode``
    (Gymnasium 1.x rules, ``metadata["autoreset_mode"]``): ``NEXT_STEP`` (default) resets a
    finished row on the following ``step``, ignoring its action and returning reward 0 and
    ``terminated = truncated = False``; ``SAME_STEP`` resets it in the same ``step`` and puts the
    last observation in ``info["final_obs"]`` (object array, mask ``info["_final_obs"]``).
    ``reset(options={"reset_mask": mask})`` resets only the masked rows. Observations are numpy
    ``[num_envs, ...]``, batched from the single env's space.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        mdp: GlobalLocalMDP | str = "queue",
        n: int = 10,
        obs: str = "counts",
        k: int | None = None,
        horizon: int | None = None,
        device: torch.device | str | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        render_mode: str | None = None,
        bins: int | None = None,
        **env_kwargs: Any,
    ) -> None:
        self.num_envs = check_int("num_envs", num_envs, 1, "batch of systems")
        modes = (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP)
        try:
            mode = AutoresetMode(autoreset_mode)
        except ValueError:
            mode = None
        if mode not in modes:
            raise ValueError(f"autoreset_mode = {autoreset_mode!r}; allowed: {[m.value for m in modes]}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode = {render_mode!r}; allowed: None or {self.metadata['render_modes']}")
        self.autoreset_mode = mode
        self.metadata = {**type(self).metadata, "autoreset_mode": mode}
        self.render_mode = render_mode
        mdp = build_env(mdp, **env_kwargs)
        self._core = _Core(mdp, n, obs, k, horizon, self.num_envs, device, bins)
        self.mdp = self._core.mdp
        self.n, self.obs, self.k, self.horizon = n, obs, self._core.k, self._core.horizon
        self.single_action_space = spaces.Discrete(self.mdp.A)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.single_observation_space = self._core.single_observation_space()
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self._needs_reset = torch.zeros(self.num_envs, dtype=torch.bool, device=self.mdp.device)
        self._zeros = np.zeros(self.num_envs, dtype=np.bool_)

    @property
    def state(self) -> tuple[Tensor, Tensor]:
        """Copy of the current full states ``(s_g [B], s_l [B, n])`` (int64 tensors)."""
        return self._core.s_g.clone(), self._core.s_l.clone()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None or self._core.gen_dyn is None:
            self._core.seed(self.np_random)
        options = dict(options or {})
        mask = options.pop("reset_mask", None)
        if mask is None:
            self._core.reset_rows(None, options)
            self._needs_reset.zero_()
        else:
            mask = torch.as_tensor(np.asarray(mask, dtype=np.bool_), device=self.mdp.device)
            if tuple(mask.shape) != (self.num_envs,):
                raise ValueError(f"options['reset_mask'] has shape {tuple(mask.shape)}, expected ({self.num_envs},)")
            rows = torch.nonzero(mask).squeeze(1)
            self._core.reset_rows(rows, options)
            self._needs_reset[rows] = False
        return self._core.observe(), {}

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        core = self._core
        if core.gen_dyn is None:
            raise RuntimeError("call reset() before step()")
        a_g = core.actions(actions, "actions")
        B = self.num_envs
        if self.autoreset_mode == AutoresetMode.NEXT_STEP and bool(self._needs_reset.any()):
            resetting = self._needs_reset.clone()
            rows = torch.nonzero(~resetting).squeeze(1)
            r = torch.zeros(B, dtype=torch.float64, device=self.mdp.device)
            if rows.numel():
                r[rows] = core.step(a_g[rows], rows)
            core.reset_rows(torch.nonzero(resetting).squeeze(1), None)
            truncated = (core.t >= self.horizon) & ~resetting
        else:
            r = core.step(a_g)
            truncated = core.t >= self.horizon
        infos: dict[str, Any] = {}
        if self.autoreset_mode == AutoresetMode.SAME_STEP and bool(truncated.any()):
            done = torch.nonzero(truncated).squeeze(1)
            final = core.observe()
            final_obs = np.full(B, None, dtype=object)
            for i in done.tolist():  # finished rows at an episode end, not agents
                final_obs[i] = final[i]
            mask = truncated.cpu().numpy()
            infos = {"final_obs": final_obs, "_final_obs": mask, "final_info": {}, "_final_info": mask.copy()}
            core.reset_rows(done, None)
        else:
            self._needs_reset = truncated
        obs = core.observe()
        return obs, r.cpu().numpy(), self._zeros.copy(), truncated.cpu().numpy(), infos

    def render(self) -> tuple[str, ...] | None:
        if self.render_mode != "ansi":
            return None
        return tuple(self._core.render(i) for i in range(self.num_envs))


def register_envs() -> None:
    """Register the sqtorch ids with Gymnasium (idempotent; done on import of this module)."""
    for env_id, name in PRESET_IDS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(
                env_id,
                entry_point=ENTRY_POINT,
                vector_entry_point=VECTOR_ENTRY_POINT,
                kwargs={"mdp": name, **preset_params(name)},
            )
    if GENERIC_ID not in gymnasium.registry:
        gymnasium.register(GENERIC_ID, entry_point=ENTRY_POINT, vector_entry_point=VECTOR_ENTRY_POINT)


register_envs()

__all__ = [
    "GENERIC_ID",
    "OBS_MODES",
    "PRESET_IDS",
    "GlobalLocalEnv",
    "GlobalLocalVectorEnv",
    "count_features",
    "preset_params",
    "register_envs",
]
