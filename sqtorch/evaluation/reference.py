"""What a learned policy is compared with during training, for both algorithms (docs/model.md §5).

:func:`evaluate_return` is the single place training calls the Monte Carlo evaluator
(:func:`sqtorch.evaluation.execution.evaluate_mc`: greedy subsampled policy, all n agents in the
reward, ``gamma^t`` discounting, fixed initial states, common random numbers).

:class:`Reference` holds what a run can be compared with: ``V*`` (exact count MDP at k = n,
:mod:`sqtorch.evaluation.exact`) and the exact tabular Q at the same k
(:func:`sqtorch.tabular.exact.optimal_q` at k), each only when :func:`sqtorch.tabular.exact.
check_tractable` allows it. :class:`ValidationConfig` holds the settings (``eval.*`` in train.py).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from sqtorch import metrics as M
from sqtorch.checks import check_int
from sqtorch.envs.base import GlobalLocalMDP
from sqtorch.envs.protocol import Simulator
from sqtorch.envs.simulator import make_generator, sample_initial_state
from sqtorch.evaluation.exact import optimal_value, policy_value, value_at
from sqtorch.evaluation.execution import SubsampledPolicy, evaluate_mc, initial_states
from sqtorch.evaluation.mfq import check_tractable_mfq, optimal_value_mfq, policy_value_mfq
from sqtorch.evaluation.mfq_execution import evaluate_mfq_mc
from sqtorch.tabular.exact import count_kernel, is_tractable, optimal_q

REFERENCES = ("auto", "none")


@dataclass
class ValidationConfig:
    """Evaluation of a policy during training (``eval.*`` of train.py; docs/model.md §5)."""

    every: int = 500  # optimizer steps between validations (DeepSets)
    num_initial: int = 16  # fixed initial states (seeded)
    rollouts: int = 32  # Monte Carlo rollouts per initial state
    horizon: int | None = None  # None: smallest H with gamma^H <= 1e-4
    seed: int = 12345  # common random numbers: the same seed for every policy compared
    reference: str = "auto"  # auto: exact tabular Q at k and V* at n where tractable; none
    max_states: int = 20_000  # "tractable": G * C(n+L-1, L-1) <= max_states (and the kernel <= 4 GiB)

    def __post_init__(self) -> None:
        for key in ("every", "num_initial", "rollouts", "max_states"):
            check_int(f"eval.{key}", getattr(self, key), 1, "a positive integer")
        if self.horizon is not None:
            check_int("eval.horizon", self.horizon, 1, "simulated steps, or null for the default")
        check_int("eval.seed", self.seed, 0, "a seed")
        if self.reference not in REFERENCES:
            raise ValueError(f"eval.reference = '{self.reference}' is unknown; allowed: {list(REFERENCES)}")

    def mc_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`evaluate_mc` (the same for every policy: common random numbers)."""
        return dict(num_initial=self.num_initial, rollouts=self.rollouts, horizon=self.horizon, seed=self.seed)


def evaluate_return(env: GlobalLocalMDP, policy: SubsampledPolicy, n: int, **kwargs: Any) -> tuple[float, float]:
    """(mean, ci95) of the policy's discounted return on the n-agent system (docs/model.md §5)."""
    res = evaluate_mc(env, policy, n, **kwargs)
    return float(res.mean), float(res.ci95)


@dataclass
class Reference:
    """Comparators available for one (env, n, k): tabular Q at k, exact V* and its evaluator."""

    tabular: Any = None  # QTable
    tabular_return: tuple[float, float] | None = None
    v_star: Tensor | None = None
    kernel_n: Any = None  # the n-count kernel, reused by every exact policy evaluation
    initial: tuple[Tensor, Tensor] | None = None
    max_states: int = 0  # the size limit V* was solved under (policy values use the same)
    notes: list[str] = field(default_factory=list)


def build_reference(
    env: Simulator, n: int, k: int, cfg: ValidationConfig, *, with_tabular: bool = True
) -> Reference:
    """Exact tabular Q at k and V* at n, each where :func:`is_tractable` allows (``cfg.max_states``)."""
    ref = Reference()
    if cfg.reference == "none":
        return ref
    if not isinstance(env, GlobalLocalMDP):
        ref.notes.append(f"env '{env.name}' is a simulator without kernel tensors: Monte Carlo only")
        return ref
    try:  # a comparator is a metric: never let it stop training
        if with_tabular and is_tractable(env, k, cfg.max_states):
            ref.tabular = optimal_q(env, k, max_states=cfg.max_states)
            ref.tabular_return = evaluate_return(env, ref.tabular, n, **cfg.mc_kwargs())
        elif with_tabular:
            ref.notes.append(f"k = {k}: the exact tabular Q is not tractable (eval.max_states = {cfg.max_states})")
        if is_tractable(env, n, cfg.max_states):
            ref.kernel_n, ref.max_states = count_kernel(env, n), cfg.max_states
            ref.v_star = optimal_value(env, n, max_states=cfg.max_states, kernel=ref.kernel_n)
            ref.initial = initial_states(env, n, cfg.num_initial, cfg.seed)
        else:
            ref.notes.append(f"n = {n}: V* is not tractable (eval.max_states = {cfg.max_states}): no exact gap")
    except Exception as e:
        warnings.warn(f"reference solutions unavailable: {e}", stacklevel=2)
        ref.notes.append(f"reference failed: {e}")
    return ref


def exact_gap(env: GlobalLocalMDP, n: int, greedy: Tensor, k: int, ref: Reference) -> float | None:
    """``mean_s0 V*(s0) - V^pi(s0)`` by exact policy evaluation on the count MDP (docs/model.md §5)."""
    if ref.v_star is None or ref.initial is None:
        return None
    v_pi = policy_value(env, n, greedy.to(env.device), k, max_states=ref.max_states, kernel=ref.kernel_n)
    s_g, s_l = ref.initial
    return float((value_at(ref.v_star, s_g, s_l) - value_at(v_pi, s_g, s_l)).mean())


def validation_metrics(
    env: GlobalLocalMDP, policy: Any, n: int, ref: Reference, cfg: ValidationConfig
) -> dict[str, float]:
    """``eval/*`` metrics of a greedy subsampled policy on ``env``'s device (names in :mod:`sqtorch.metrics`)."""
    mean, ci = evaluate_return(env, policy, n, **cfg.mc_kwargs())
    out = {M.EVAL_RETURN: mean, M.EVAL_RETURN_CI: ci}
    greedy = (
        policy.greedy() if hasattr(policy, "greedy") and (ref.v_star is not None or ref.tabular is not None) else None
    )
    gap = exact_gap(env, n, greedy, policy.k, ref) if greedy is not None else None
    if gap is not None:
        out[M.EVAL_GAP] = gap
    if ref.tabular is not None and ref.tabular.k == policy.k:
        q_tab = ref.tabular.q.to(greedy.device).double()
        out[M.EVAL_AGREEMENT] = (greedy == q_tab.argmax(-1)).double().mean().item()
        if hasattr(policy, "q_table"):
            q_nn = policy.q_table()
            out[M.EVAL_Q_REL_ERROR] = ((q_nn - q_tab).abs().max() / q_tab.abs().max()).item()
        if ref.tabular_return is not None:
            out[M.EVAL_GAP_TABULAR] = ref.tabular_return[0] - mean
    return out


def mfq_validation_metrics(env: Any, policy: Any, n: int, cfg: ValidationConfig) -> dict[str, float]:
    """``eval/return`` (+ CI) of Algorithm 2 with local actions (docs/model.md §7.4) on ``cfg``'s initial
    states, and ``eval/gap`` = ``mean_s0 V*(s0) - V^pi(s0)`` on the lumped pair-count MDP where
    :func:`~sqtorch.evaluation.mfq.check_tractable_mfq` allows (and ``cfg.reference`` is not ``none``)."""
    s0 = sample_initial_state(env, n, cfg.num_initial, make_generator(cfg.seed, env.device))
    mc = evaluate_mfq_mc(env, policy, n, rollouts=cfg.rollouts, horizon=cfg.horizon, seed=cfg.seed, s0=s0)
    out = {M.EVAL_RETURN: mc.mean, M.EVAL_RETURN_CI: mc.ci95}
    if cfg.reference == "none":
        return out
    try:
        check_tractable_mfq(env, n, cfg.max_states)
    except ValueError:
        return out
    v_star = optimal_value_mfq(env, n, max_states=cfg.max_states)
    v_pi = policy_value_mfq(env, n, policy, max_states=cfg.max_states)
    out[M.EVAL_GAP] = float((value_at(v_star, *s0, L=env.L) - value_at(v_pi, *s0, L=env.L)).mean())
    return out
