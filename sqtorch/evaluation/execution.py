"""Execution of a subsampled policy on the full n-agent system and its Monte Carlo value.

docs/model.md §2 (Algorithm 2): at **every** step draw a fresh uniform k-subset of the n agents, give the
policy the global state ``s_g`` and the sampled local states ``s_sub [B, k]``, apply its action
``a_g`` and let all n agents transition. docs/model.md §5: ``V^pi(s0)`` by batched Monte Carlo over
(initial states x rollouts) x agents, horizon ``H`` with ``gamma^H <= 1e-4``, reward over all n
agents discounted by ``gamma^t``, mean and 95% CI.

Common random numbers (docs/model.md §5): subsets and dynamics come from two separate generators whose
seeds derive from ``seed``; the initial states from a third, fixed ``initial_seed``. The number
of uniforms each generator consumes per step depends only on ``(batch, n, k)``, never on the
actions taken, so two policies evaluated with the same seed see identical subset draws and
identical dynamics noise, and their paired difference (:func:`compare_mc`) has a small CI.

Any :class:`~sqtorch.envs.protocol.Simulator` runs here (docs/model.md §1.1): it is checked once by
:func:`~sqtorch.envs.protocol.check_simulator` and stepped through its ``step``; a
:class:`~sqtorch.envs.base.GlobalLocalMDP` takes the tensor path of ``sqtorch/envs/simulator.py``
directly (the same draws). Continuous local states ``[B, n, d]`` reach the policy as ``s_sub [B, k, d]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from sqtorch import runtime
from sqtorch.checks import check_int, check_k
from sqtorch.envs.base import GlobalLocalMDP, check_states
from sqtorch.envs.protocol import Simulator, check_simulator
from sqtorch.envs.simulator import (
    cdf_columns,
    gather_agents,
    make_generator,
    sample_initial_state,
    sample_subset,
    step,
)
from sqtorch.runtime import Z95, derive_seed, torch_threads

TAIL_TOL = 1e-4  # docs/model.md §5: smallest H with gamma^H <= 1e-4
MAX_BATCH_ELEMS = 1 << 22  # agent entries per simulated chunk (bounds memory at large n)

STREAM_SUBSET = 1
STREAM_DYNAMICS = 2


@runtime_checkable
class SubsampledPolicy(Protocol):
    """A policy of Algorithm 2: ``act(s_g [B], s_sub [B, k]) -> a_g [B]`` with attribute ``k``.

    ``s_sub`` is ``[B, k]`` int64 for finite local states and ``[B, k, d]`` for continuous ones.

    :class:`sqtorch.tabular.qtable.QTable` fits; a DeepSets network wrapped with ``k`` and
    ``act`` fits too. An optional ``check_env(env)`` is called before evaluation.
    """

    k: int

    def act(self, s_g: Tensor, s_sub: Tensor) -> Tensor: ...


@dataclass
class EvalResult:
    """Monte Carlo value of a policy averaged over a fixed set of initial states (docs/model.md §5).

    ``ci95`` is the half-width of the 95% interval of ``mean``; the initial states are a fixed
    set, so the variance is the stratified one, ``sum_i s_i^2 / R / I^2`` over initial states i.
    """

    mean: float
    ci95: float
    per_initial: list[float]
    n: int
    k: int
    horizon: int
    num_initial: int
    rollouts: int
    seed: int = 0
    returns: Tensor | None = field(default=None, repr=False)  # [num_initial, rollouts]

    def to_dict(self) -> dict:
        """Plain-Python summary (no tensors), for JSON/CSV logging."""
        return {
            "mean": self.mean,
            "ci95": self.ci95,
            "per_initial": list(self.per_initial),
            "n": self.n,
            "k": self.k,
            "horizon": self.horizon,
            "num_initial": self.num_initial,
            "rollouts": self.rollouts,
            "seed": self.seed,
        }


@dataclass
class PairedResult:
    """``V^{pi_a} - V^{pi_b}`` from paired (common-random-number) rollouts (docs/model.md §5)."""

    mean_diff: float
    ci95: float
    per_initial: list[float]
    a: EvalResult
    b: EvalResult

    def to_dict(self) -> dict:
        return {
            "mean_diff": self.mean_diff,
            "ci95": self.ci95,
            "per_initial": list(self.per_initial),
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
        }


def horizon_for(gamma: float, tail: float = TAIL_TOL) -> int:
    """Smallest ``H >= 1`` with ``gamma^H <= tail`` (docs/model.md §5)."""
    H = max(1, math.ceil(math.log(tail) / math.log(gamma)))
    while gamma**H > tail:
        H += 1
    while H > 1 and gamma ** (H - 1) <= tail:
        H -= 1
    return H


def initial_states(
    env: Simulator, n: int, num_initial: int, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """The fixed set of initial states ``(s_g [I], s_l [I, n] | [I, n, d])`` for ``seed`` (docs/model.md §5).

    ``env.initial`` on a generator seeded with ``seed`` (uniform for a :class:`GlobalLocalMDP`
    without ``init_l``).
    """
    check_int("n", n, 1, "number of local agents")
    check_int("num_initial", num_initial, 1, "number of initial states")
    gen = make_generator(seed, env.device)
    if isinstance(env, GlobalLocalMDP):
        return sample_initial_state(env, n, num_initial, gen)
    return env.initial(n, num_initial, gen)


def check_initial_states(env: Simulator, n: int, s_g: Tensor, s_l: Tensor) -> None:
    """Raise ``ValueError`` naming ``s_g``/``s_l`` unless they are states of the n-agent system."""
    if s_g.dim() != 1:
        raise ValueError(f"s_g has shape {tuple(s_g.shape)}, expected [I] (one global state a row)")
    if not isinstance(env, GlobalLocalMDP):
        check_states("s_g", s_g, env.G)
        env.local.check("s_l", s_l, s_g.shape[0], n)
        return
    if tuple(s_l.shape) != (s_g.shape[0], n):
        raise ValueError(f"s_l has shape {tuple(s_l.shape)}, expected [I, n] = {(s_g.shape[0], n)}")
    check_states("s_g", s_g, env.G)
    check_states("s_l", s_l, env.L)


def check_policy(env: Simulator, policy: SubsampledPolicy, n: int) -> int:
    """Validate ``policy`` against ``env`` and n; returns its k (docs/model.md §2: ``1 <= k <= n``)."""
    k = getattr(policy, "k", None)
    if not callable(getattr(policy, "act", None)) or k is None:
        raise ValueError("policy must have an attribute k and a method act(s_g, s_sub) -> a_g")
    check_k(k, n, "subsample size at execution")
    if callable(getattr(policy, "check_env", None)):
        policy.check_env(env)
    return int(k)


def check_actions(env: Simulator, a_g: Tensor, batch: int) -> None:
    """Raise ``ValueError`` unless ``a_g`` is ``[batch]`` integer actions in ``{0..A-1}``."""
    if tuple(a_g.shape) != (batch,) or a_g.dtype.is_floating_point or a_g.dtype == torch.bool:
        raise ValueError(
            f"policy.act returned a_g of shape {tuple(a_g.shape)} and dtype {a_g.dtype}, "
            f"expected [{batch}] integer actions"
        )
    lo, hi = int(a_g.min()), int(a_g.max())
    if lo < 0 or hi >= env.A:
        raise ValueError(f"policy.act returned a_g in [{lo}, {hi}], outside {{0..{env.A - 1}}}")


def subsampled_states(s_l: Tensor, n: int, k: int, generator: torch.Generator) -> Tensor:
    """Local states of a fresh uniform k-subset of the n agents, per row: ``[B, k]`` or ``[B, k, d]`` (Alg. 2)."""
    return gather_agents(s_l, sample_subset(n, k, s_l.shape[0], generator))


def simulate_returns(
    env: Simulator,
    policy: SubsampledPolicy,
    s_g: Tensor,
    s_l: Tensor,
    horizon: int,
    gen_subset: torch.Generator,
    gen_dynamics: torch.Generator,
) -> Tensor:
    """Discounted return ``sum_{t<H} gamma^t r(s(t), a_g(t))`` of each row ``[B]`` (Alg. 2).

    ``s_g [B]``, ``s_l [B, n]`` (``[B, n, d]`` for continuous local states) on the env device.
    Per step: one k-subset draw from ``gen_subset``, one action, one full-system transition from
    ``gen_dynamics`` (``env.step``; :func:`sqtorch.envs.simulator.step` for a :class:`GlobalLocalMDP`).
    """
    n, k = s_l.shape[1], int(policy.k)
    if isinstance(env, GlobalLocalMDP):
        cdf_g, cdf_l = cdf_columns(env.P_g), cdf_columns(env.P_l)

        def transition(s_g: Tensor, s_l: Tensor, a_g: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
            return step(env, s_g, s_l, a_g, gen, cdf_g, cdf_l)
    else:
        transition = env.step
    ret = torch.zeros(s_g.shape[0], dtype=torch.float64, device=s_g.device)
    discount = 1.0
    for t in range(horizon):  # time steps
        a_g = policy.act(s_g, subsampled_states(s_l, n, k, gen_subset)).to(s_g.device)
        if t == 0 or not runtime.sync_free(a_g):  # on CUDA a check every step would stall on a host sync
            check_actions(env, a_g, s_g.shape[0])
        s_g, s_l, r = transition(s_g, s_l, a_g, gen_dynamics)
        ret += discount * r
        discount *= env.gamma
    return ret


def stratified_ci(x: Tensor) -> tuple[float, float, list[float]]:
    """Mean, 95% CI half-width and per-row means of ``x [I, R]`` (rows = fixed strata)."""
    I, R = x.shape
    per = x.mean(1)
    if R > 1:
        se = math.sqrt(float(x.var(1, unbiased=True).sum()) / R) / I
    elif I > 1:
        se = float(x.reshape(-1).std(unbiased=True)) / math.sqrt(I)
    else:
        se = float("nan")
    return float(per.mean()), Z95 * se, per.tolist()


def evaluate_mc(
    env: Simulator,
    policy: SubsampledPolicy,
    n: int,
    *,
    num_initial: int = 64,
    rollouts: int = 512,
    horizon: int | None = None,
    seed: int = 0,
    initial_seed: int = 0,
    s0: tuple[Tensor, Tensor] | None = None,
    device: torch.device | str | None = None,
    max_batch_elems: int = MAX_BATCH_ELEMS,
    keep_returns: bool = False,
    num_threads: int | None = None,
) -> EvalResult:
    """Monte Carlo ``V^pi(s0)`` of a subsampled policy on the full n-agent system (docs/model.md §5).

    ``num_initial`` uniform initial states from ``initial_seed`` (or explicit ``s0 = (s_g [I],
    s_l [I, n])``), ``rollouts`` rollouts each, ``horizon`` steps (default: smallest H with
    ``gamma^H <= 1e-4``). Fresh k-subset every step, reward over all n agents, discount
    ``gamma^t``. The same ``seed`` gives identical subset draws and dynamics noise for every
    policy (common random numbers). Batched over rows = (initial state, rollout) and agents, in
    chunks of at most ``max_batch_elems`` agent entries, on ``device`` (default: the env's),
    with ``num_threads`` torch CPU threads if given. ``keep_returns`` keeps the ``[I, R]``
    discounted returns in the result (for paired comparisons). ``env`` is any
    :class:`~sqtorch.envs.protocol.Simulator`; one that is not a :class:`GlobalLocalMDP` is first
    checked by :func:`~sqtorch.envs.protocol.check_simulator` (``ValueError`` naming what is wrong).
    """
    if not isinstance(env, GlobalLocalMDP):
        check_simulator(env)
    check_int("n", n, 1, "number of local agents")
    check_int("rollouts", rollouts, 1, "rollouts per initial state")
    H = horizon_for(env.gamma) if horizon is None else horizon
    check_int("horizon", H, 1, "number of simulated steps H")
    env = env.to(device) if device is not None else env
    check_policy(env, policy, n)
    if s0 is None:
        s_g0, s_l0 = initial_states(env, n, num_initial, initial_seed)
    else:
        s_g0, s_l0 = (torch.as_tensor(s, device=env.device) for s in s0)
        check_initial_states(env, n, s_g0, s_l0)
    I = s_g0.shape[0]
    gen_subset = make_generator(derive_seed(seed, STREAM_SUBSET), env.device)
    gen_dynamics = make_generator(derive_seed(seed, STREAM_DYNAMICS), env.device)
    rows = torch.arange(I * rollouts, device=env.device) // rollouts  # initial state of each row
    chunk = max(1, max_batch_elems // (n * (1 if env.local.is_finite else env.local.d)))
    out = []
    with torch_threads(num_threads):
        for start in range(0, I * rollouts, chunk):  # memory chunks, independent of the policy
            r = rows[start : start + chunk]
            out.append(simulate_returns(env, policy, s_g0[r], s_l0[r], H, gen_subset, gen_dynamics))
    returns = torch.cat(out).reshape(I, rollouts)
    mean, ci95, per = stratified_ci(returns)
    return EvalResult(
        mean=mean, ci95=ci95, per_initial=per, n=n, k=int(policy.k), horizon=H,
        num_initial=returns.shape[0], rollouts=rollouts, seed=seed,
        returns=returns if keep_returns else None,
    )


def compare_mc(
    env: Simulator,
    policy_a: SubsampledPolicy,
    policy_b: SubsampledPolicy,
    n: int,
    **kwargs,
) -> PairedResult:
    """``V^{pi_a} - V^{pi_b}`` with a CI from the paired per-rollout differences (docs/model.md §5).

    Both policies run with the same seeds (common random numbers), so the noise shared by the
    two rollouts of a pair cancels. ``kwargs`` are those of :func:`evaluate_mc`.
    """
    kwargs["keep_returns"] = True
    ra = evaluate_mc(env, policy_a, n, **kwargs)
    rb = evaluate_mc(env, policy_b, n, **kwargs)
    mean, ci95, per = stratified_ci(ra.returns - rb.returns)
    return PairedResult(mean_diff=mean, ci95=ci95, per_initial=per, a=ra, b=rb)
