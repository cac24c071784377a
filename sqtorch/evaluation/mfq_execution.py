"""Execution of SUBSAMPLE-MFQ (Algorithm 2 of arXiv 2412.00661) on n agents, and its Monte Carlo value.

One batched step for all rows and all n agents (docs/model.md §7.4), no loop over agents:

1. the global agent draws a uniform k-subset of ``[n]`` and plays ``policy.act_global``;
2. every local agent i draws, independently, a uniform (k-1)-subset of ``[n] \\ {i}`` (Floyd's
   algorithm on ``{0..n-2}``, shifted past i: ``O(k)`` memory per agent, so memory is linear in
   n) and plays ``policy.act_local`` with itself in the representative slot;
3. reward ``r_g[g, a_g] + (1/n) sum_i r_l[g, a_g, a_i, x_i]``, then every agent moves with
   ``P_l[g, a_g, a_i, x_i]`` (one uniform each, bucket-table sampling) and the global agent
   with ``P_g[g, a_g]``.

Common random numbers as in :mod:`sqtorch.evaluation.execution`: the subset draws and the
dynamics come from two generators derived from ``seed``; how many uniforms each consumes per
step depends only on ``(batch, n, k)``, never on the actions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sqtorch import runtime
from sqtorch.checks import check_int, check_k
from sqtorch.envs.base import GlobalLocalMDP, check_states
from sqtorch.envs.local_actions import LocalActionMDP, as_local_action_mdp
from sqtorch.envs.simulator import (
    LookupSampler,
    _floyd_subset,
    cdf_columns,
    make_generator,
    sample_categorical,
    sample_initial_state,
    sample_subset,
)
from sqtorch.evaluation.execution import (
    MAX_BATCH_ELEMS,
    STREAM_DYNAMICS,
    STREAM_SUBSET,
    EvalResult,
    PairedResult,
    horizon_for,
    stratified_ci,
)
from sqtorch.runtime import derive_seed, torch_threads
from sqtorch.tabular.mfq_policy import MFQPolicy


def others_subsets(n: int, k: int, batch: int, generator: torch.Generator) -> Tensor:
    """For every row and agent i, a uniform (k-1)-subset of ``[n] \\ {i}``: ``[batch, n, k - 1]``.

    Floyd's algorithm draws ``j`` from ``{0..n-2}`` (k - 1 uniforms per agent, whatever the
    states) and ``j + 1{j >= i}`` skips agent i.
    """
    if k == 1:
        return torch.empty(batch, n, 0, dtype=torch.int64, device=generator.device)
    j = _floyd_subset(n - 1, k - 1, batch * n, generator).view(batch, n, k - 1)
    i = torch.arange(n, device=j.device)[None, :, None]
    return j + (j >= i)


def joint_actions(
    policy: MFQPolicy, s_g: Tensor, s_l: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``(a_g [B], a_l [B, n])`` of Algorithm 2 at ``(s_g [B], s_l [B, n])``, subsets from ``generator``."""
    B, n = s_l.shape
    k = policy.k
    a_g = policy.act_global(s_g, s_l.gather(1, sample_subset(n, k, B, generator)))
    idx = others_subsets(n, k, B, generator)  # [B, n, k-1]
    others = s_l.gather(1, idx.view(B, -1)).view(B * n, k - 1)
    a_l = policy.act_local(s_g[:, None].expand(B, n).reshape(-1), s_l.reshape(-1), others)
    return a_g, a_l.view(B, n)


def mfq_step(
    env: LocalActionMDP,
    s_g: Tensor,
    s_l: Tensor,
    a_g: Tensor,
    a_l: Tensor,
    generator: torch.Generator,
    sampler: LookupSampler,
    cdf_g: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(s_g', s_l', r)``: one transition of the n-agent system with local actions (module docstring).

    ``sampler = LookupSampler.build(env.P_l.reshape(-1, L), compact=True)``, ``cdf_g = cdf_columns(env.P_g)``.
    One float64 uniform per local agent and one per row.
    """
    ga = s_g * env.A + a_g  # [B]
    row = (ga[:, None] * env.Al + a_l) * env.L + s_l  # [B, n]: row (g, a_g, a, x) of P_l and r_l
    r = env.r_g[s_g, a_g] + env.r_l.reshape(-1).take(row).mean(-1)
    u_l = torch.rand(s_l.shape, generator=generator, device=s_l.device, dtype=torch.float64)
    s_l_next = sampler.sample(row, u_l)
    u_g = torch.rand(s_g.shape, generator=generator, device=s_g.device, dtype=torch.float64)
    return sample_categorical(cdf_g, ga, u_g), s_l_next, r


def simulate_mfq_returns(
    env: LocalActionMDP,
    policy: MFQPolicy,
    s_g: Tensor,
    s_l: Tensor,
    horizon: int,
    gen_subset: torch.Generator,
    gen_dynamics: torch.Generator,
) -> Tensor:
    """Discounted returns ``sum_{t<H} gamma^t r_t`` ``[B]`` of Algorithm 2 from ``(s_g [B], s_l [B, n])``."""
    sampler = LookupSampler.build(env.P_l.reshape(-1, env.L), compact=True)  # the same draws, a smaller table
    cdf_g = cdf_columns(env.P_g)
    ret = torch.zeros(s_g.shape[0], dtype=torch.float64, device=s_g.device)
    discount = 1.0
    for t in range(horizon):  # time steps
        a_g, a_l = joint_actions(policy, s_g, s_l, gen_subset)
        if t == 0 and not runtime.sync_free(a_g):
            if int(a_g.min()) < 0 or int(a_g.max()) >= env.A or int(a_l.min()) < 0 or int(a_l.max()) >= env.Al:
                raise ValueError("policy returned actions outside the env's action spaces")
        s_g, s_l, r = mfq_step(env, s_g, s_l, a_g, a_l, gen_dynamics, sampler, cdf_g)
        ret += discount * r
        discount *= env.gamma
    return ret


def evaluate_mfq_mc(
    env: LocalActionMDP | GlobalLocalMDP,
    policy: MFQPolicy,
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
    num_threads: int | None = None,
) -> EvalResult:
    """Monte Carlo value of Algorithm 2 on n agents (docs/model.md §7.4), as :func:`sqtorch.evaluation.evaluate_mc`.

    ``num_initial`` initial states from ``initial_seed`` (uniform, or ``init_l``) or explicit
    ``s0 = (s_g [I], s_l [I, n])``, ``rollouts`` each, ``horizon`` steps (default: smallest H with
    ``gamma^H <= 1e-4``); rows in chunks of ``max_batch_elems // (n k)`` (memory linear in n).
    """
    env = as_local_action_mdp(env)
    check_int("n", n, 1, "number of local agents")
    check_int("rollouts", rollouts, 1, "rollouts per initial state")
    H = horizon_for(env.gamma) if horizon is None else check_int("horizon", horizon, 1, "simulated steps")
    check_k(policy.k, n, "policy.k at execution")
    policy.check_sizes(env.G, env.A, env.L, env.Al)
    env = env.to(device) if device is not None else env
    policy = policy.on(env.device)
    if s0 is None:
        check_int("num_initial", num_initial, 1, "number of initial states")
        s_g0, s_l0 = sample_initial_state(env, n, num_initial, make_generator(initial_seed, env.device))
    else:
        s_g0, s_l0 = (torch.as_tensor(s, device=env.device) for s in s0)
        if s_g0.dim() != 1 or tuple(s_l0.shape) != (s_g0.shape[0], n):
            raise ValueError(f"s0 has shapes {tuple(s_g0.shape)}, {tuple(s_l0.shape)}; expected [I] and [I, n = {n}]")
        check_states("s0[0]", s_g0, env.G)
        check_states("s0[1]", s_l0, env.L)
    I = s_g0.shape[0]
    gen_subset = make_generator(derive_seed(seed, STREAM_SUBSET), env.device)
    gen_dynamics = make_generator(derive_seed(seed, STREAM_DYNAMICS), env.device)
    rows = torch.arange(I * rollouts, device=env.device) // rollouts
    chunk = max(1, max_batch_elems // (n * policy.k))
    out = []
    with torch_threads(num_threads):
        for start in range(0, I * rollouts, chunk):  # memory chunks, independent of the policy
            r = rows[start : start + chunk]
            out.append(simulate_mfq_returns(env, policy, s_g0[r], s_l0[r], H, gen_subset, gen_dynamics))
    returns = torch.cat(out).reshape(I, rollouts)
    mean, ci95, per = stratified_ci(returns)
    return EvalResult(
        mean=mean, ci95=ci95, per_initial=per, n=n, k=policy.k, horizon=H,
        num_initial=I, rollouts=rollouts, seed=seed, returns=returns,
    )


def compare_mfq_mc(
    env: LocalActionMDP | GlobalLocalMDP, policy_a: MFQPolicy, policy_b: MFQPolicy, n: int, **kwargs
) -> PairedResult:
    """``V^{pi_a} - V^{pi_b}`` with a CI from paired rollouts (common random numbers, docs/model.md §5).

    Both run with the same seeds; policies with the same k draw the same subsets and dynamics noise.
    ``kwargs`` are those of :func:`evaluate_mfq_mc`.
    """
    ra = evaluate_mfq_mc(env, policy_a, n, **kwargs)
    rb = evaluate_mfq_mc(env, policy_b, n, **kwargs)
    mean, ci95, per = stratified_ci(ra.returns - rb.returns)
    return PairedResult(mean_diff=mean, ci95=ci95, per_initial=per, a=ra, b=rb)


__all__ = ["compare_mfq_mc", "evaluate_mfq_mc", "joint_actions", "mfq_step", "others_subsets", "simulate_mfq_returns"]
