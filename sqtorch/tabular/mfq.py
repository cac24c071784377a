"""Tabular SUBSAMPLE-MFQ (Anand, Karmarkar & Qu, arXiv 2412.00661, Algorithm 1; docs/model.md §7).

Local agents act (:class:`~sqtorch.envs.local_actions.LocalActionMDP`). On the k-agent subsystem
with ``r_Delta = r_g + (1/k) sum_{i in Delta} r_l``, Q is permutation invariant in the agents, so
it is a function of the global state, the global action and the **count table** ``z`` of the k
(local state, local action) pairs: ``Q_k[g, a_g, rank(z)]`` with ``C(k + L Al - 1, k)`` entries per
``(g, a_g)``, polynomial in k. The paper's mean-field form ``Q_k(s_g, s_1, F_{z_{Delta\\1}}, a_1, a_g)``
with a representative agent is the same table indexed by ``z = e_{(s_1, a_1)} + z_{Delta\\1}``
(:func:`mean_field_index`).

A pair ``p = x * Al + a`` moves to ``x'`` with ``P_l[g, a_g, a, x, x']``. We write this as the
:class:`~sqtorch.envs.base.GlobalLocalMDP` over pairs (:func:`pair_env`, ``L_pair = L Al``) whose
next "pair" is ``(x', 0)``, so the count machinery of SUBSAMPLE-Q applies unchanged: the exact
next-count kernel (:func:`sqtorch.tabular.exact.count_kernel`), the m fixed samples
(:func:`sqtorch.tabular.sample_kernel`) and ``r_Delta`` (:func:`sqtorch.tabular.bellman.subsampled_reward`)
are those of the pair MDP. The value lives on state counts ``c`` (the marginal of z); the solver
(:func:`sqtorch.tabular.bellman.value_iteration`) keeps it as ``V[g, rank(z)] = V(g, c(z))`` (one
copy per z), and the backup is the max over ``a_g`` and over **every assignment of actions to the
agents consistent with the state counts**:

    V(g, c) = max_{a_g} max_{z : c(z) = c} Q_k(g, a_g, z)

a segment max over the precomputed index table ``c(z)`` (one ``scatter_reduce``, no loop over
entries). The next state counts are read at ``z' = (c', actions 0)``. With ``Al = 1``, ``z = c``
and every step is that of :func:`sqtorch.tabular.learn`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from sqtorch.checks import check_int, check_k, check_positive
from sqtorch.envs.base import GlobalLocalMDP
from sqtorch.envs.local_actions import LocalActionMDP, as_local_action_mdp
from sqtorch.runtime import GiB, load_state, save_state, torch_threads
from sqtorch.tabular.bellman import REWARD_CHUNK, FixedPoint, subsampled_reward, value_iteration
from sqtorch.tabular.config import DTYPES, TabularMFQConfig
from sqtorch.tabular.counts import all_counts, num_counts, rank, state_columns
from sqtorch.tabular.exact import DENSE_COALESCE_MAX, count_kernel, kernel_gib, local_kernels
from sqtorch.tabular.sampled_kernel import CHUNK_ROWS as GATHER_CHUNK_ROWS
from sqtorch.tabular.sampled_kernel import FLAT_READS
from sqtorch.tabular.sampling import SAMPLE_CHUNK_ROWS, sample_kernel

DEFAULT_T = TabularMFQConfig.T  # the defaults of algo=tabular_mfq, written once
DEFAULT_TOL = TabularMFQConfig.tol
DEFAULT_MAX_GIB = TabularMFQConfig.max_memory_gib
# The sampled kernel's chunk sizes on the CPU (sqtorch/tabular/learner.py), for mfq_memory_gib:
TABLE_KEYS = ("q", "v", "k", "L", "Al", "tol", "env_name", "meta")


def pair_env(env: LocalActionMDP | GlobalLocalMDP) -> GlobalLocalMDP:
    """The MDP over (local state, local action) pairs ``p = x * Al + a`` (``L_pair = L * Al``).

    ``P[g, a_g, p, x' * Al] = P_l[g, a_g, a, x, x']`` (the next pair carries action 0: only its
    state counts matter) and ``r_l[g, a_g, p] = r_l[g, a_g, a, x]``. With ``Al = 1`` the tensors
    are those of the original env, bit for bit.
    """
    env = as_local_action_mdp(env)
    G, A, Al, L = env.G, env.A, env.Al, env.L
    P = torch.zeros(G, A, L, Al, L, Al, dtype=torch.float64, device=env.device)
    P[..., 0] = env.P_l.permute(0, 1, 3, 2, 4)  # [G, A, x, a, x']
    return GlobalLocalMDP(
        P_g=env.P_g,
        P_l=P.reshape(G, A, L * Al, L * Al),
        r_g=env.r_g,
        r_l=env.r_l.permute(0, 1, 3, 2).reshape(G, A, L * Al),
        gamma=env.gamma,
        name=env.name,
        params=dict(env.params),
    )


@dataclass(frozen=True)
class PairIndex:
    """Index tables between pair-count tables z (k pairs over ``K = L Al``) and state counts c.

    ``state_of [NZ]``: ``rank(c(z))`` with ``c_x = sum_a z_{x,a}``. ``rep [N]``: ``rank(z)`` of
    ``z = (c, every action 0)``, the column where ``V(g, c)`` is read. ``inc_z, inc_p [E]``: every
    ``(z, p)`` with ``z_p >= 1`` (a pair some agent of z holds), for the local greedy action.
    """

    k: int
    L: int
    Al: int
    state_of: Tensor
    rep: Tensor
    inc_z: Tensor
    inc_p: Tensor

    @property
    def NZ(self) -> int:
        return self.state_of.shape[0]

    @property
    def N(self) -> int:
        return self.rep.shape[0]

    @property
    def identity(self) -> bool:
        """``Al = 1``: z is c and every table is the identity."""
        return self.Al == 1


@lru_cache(maxsize=16)
def pair_index(k: int, L: int, Al: int, device: torch.device | str = "cpu") -> PairIndex:
    """The :class:`PairIndex` of ``(k, L, Al)`` (cached; callers must not modify it)."""
    device = torch.device(device)
    K = L * Al
    Z = all_counts(k, K, device)  # [NZ, K]
    state_of = rank(Z.view(-1, L, Al).sum(-1))
    c = all_counts(k, L, device)
    z_rep = torch.zeros(c.shape[0], L, Al, dtype=torch.int64, device=device)
    z_rep[..., 0] = c
    rep = rank(z_rep.view(-1, K))
    inc_z, inc_p = (Z > 0).nonzero(as_tuple=True)
    return PairIndex(k, L, Al, state_of, rep, inc_z, inc_p)


def mean_field_index(k: int, L: int, Al: int, device: torch.device | str = "cpu") -> Tensor:
    """``idx[p, rank(z')] = rank(e_p + z')``: the paper's mean-field form of the table.

    ``Q_k(s_g, s_1, F_{z'}, a_1, a_g) = q[g, a_g, idx[s_1 * Al + a_1, rank(z')]]`` for the count
    table ``z'`` of the other k - 1 agents' pairs: ``[L Al, C(k - 2 + L Al, k - 1)]``.
    """
    K = L * Al
    z_others = all_counts(k - 1, K, device)  # [N', K]
    return rank(z_others[None, :, :] + torch.eye(K, dtype=torch.int64, device=device)[:, None, :])


def greedy_pair_backup(index: PairIndex) -> Callable[[Tensor], Tensor]:
    """``Q [G, A, NZ] -> V [G, NZ]`` with ``V[g, z] = max_{a_g} max_{z~ : c(z~) = c(z)} Q[g, a_g, z~]``."""
    if index.identity:
        return lambda Q: Q.amax(1)

    def backup(Q: Tensor) -> Tensor:
        best = Q.amax(1)  # [G, NZ]
        Vc = best.new_full((best.shape[0], index.N), -math.inf)
        Vc.scatter_reduce_(1, index.state_of.expand_as(best), best, "amax")
        return Vc.index_select(1, index.state_of)

    return backup


@dataclass
class MFQTable:
    """``q [G, A, C(k + L Al - 1, k)]``: ``Q_k`` over (global state, global action, pair-count table z).

    ``v [G, C(k + L - 1, k)]`` is ``V_k(g, c) = max`` over ``a_g`` and the z with state counts c.
    ``tol``: the solver's bound on ``||v - V_fix||_inf`` (used to size the tie tolerance).
    """

    q: Tensor
    v: Tensor
    k: int
    L: int
    Al: int
    tol: float
    env_name: str = "custom"
    meta: dict = field(default_factory=dict)

    @property
    def G(self) -> int:
        return self.q.shape[0]

    @property
    def A(self) -> int:
        return self.q.shape[1]

    def index(self) -> PairIndex:
        return pair_index(self.k, self.L, self.Al, self.q.device)

    def q_mean_field(self) -> Tensor:
        """The paper's form ``[G, A, L, Al, C(k - 2 + L Al, k - 1)]``: (g, a_g, s_1, a_1, F of the others)."""
        idx = mean_field_index(self.k, self.L, self.Al, self.q.device)
        return self.q[:, :, idx].view(self.G, self.A, self.L, self.Al, -1)

    def save(self, path: str | Path) -> None:
        """Write the table to ``path``, whole or not at all (a kill leaves the previous file)."""
        state = {key: getattr(self, key) for key in TABLE_KEYS}
        state.update(q=self.q.cpu(), v=self.v.cpu(), meta=dict(self.meta))
        save_state(path, state)

    @classmethod
    def load(cls, path: str | Path) -> MFQTable:
        """Read a table saved by :meth:`save` (``weights_only=True``: no code from the file runs).

        Checks that k, L, Al and the shapes agree; any problem is a ``ValueError`` naming the file.
        """
        d = load_state(path, TABLE_KEYS, "SUBSAMPLE-MFQ table")
        q, v, k, L, Al = d["q"], d["v"], d["k"], d["L"], d["Al"]
        if not all(isinstance(x, int) and x >= 1 for x in (k, L, Al)):
            raise ValueError(f"{path}: k, L, Al must be positive integers, got {k!r}, {L!r}, {Al!r}")
        NZ, N = num_counts(k, L * Al), num_counts(k, L)
        if not isinstance(q, Tensor) or q.dim() != 3 or q.shape[2] != NZ:
            raise ValueError(f"{path}: q must be [G, A, C(k + L Al - 1, k)] = [G, A, {NZ}] at k, L, Al = {(k, L, Al)}")
        if not isinstance(v, Tensor) or tuple(v.shape) != (q.shape[0], N):
            raise ValueError(f"{path}: v must be [G, C(k + L - 1, k)] = [{q.shape[0]}, {N}]")
        return cls(q=q, v=v, k=k, L=L, Al=Al, tol=float(d["tol"]), env_name=str(d["env_name"]), meta=dict(d["meta"]))


@dataclass
class MFQResult:
    """Output of :func:`learn_mfq`: the table plus what it cost."""

    table: MFQTable
    residuals: list[float]
    iterations: int
    converged: bool
    seconds: float


def mfq_memory_gib(
    env: LocalActionMDP | GlobalLocalMDP, k: int, m: int | str, dtype: torch.dtype = torch.float64, workers: int = 1
) -> float:
    """Upper estimate of the GiB of the arrays :func:`learn_mfq` keeps live (not torch itself).

    With ``s`` the dtype's size, ``NZ = C(k + L Al - 1, k)``, ``N = C(k + L - 1, k)``, ``K = L Al``:
    three ``[G, A, NZ]`` tables (r_Delta, the Q of a sweep, the final Q), five ``[G, NZ]`` (V, the
    next V, their difference, the max over a_g, the scatter target), the index tables
    (``NZ (K + 2 min(k, K) + 1)`` int64), the greedy tables (``G (A + K) N`` float64), the sorted
    pairs of every z (int32 ``[k, NZ]``) and the gathers of r_Delta (``k G A min(NZ, REWARD_CHUNK)``
    float64); for ``m = "exact"`` the sparse kernel (:func:`sqtorch.tabular.exact.kernel_gib`) and
    its float64 products ``B NZ G + G A NZ G``; for an integer m the int32 samples ``B NZ m`` and
    per worker one sampling chunk (``(14 k + 16) m`` bytes a row, as the learner's) and the reads of
    one sweep's gather (all ``B G NZ m`` of a small table, else ``max(FLAT_READS, G m GATHER_CHUNK_ROWS)``
    at most; ``4 + 2 s`` bytes each). The exact kernel's build
    sums partial next counts in a dense float64 buffer when it has at most ``DENSE_COALESCE_MAX``
    keys: 9 bytes a key (the buffer and the scan for its nonzeros), summed over the k buffers (the
    C allocator may keep the smaller ones resident after they are freed).
    Checked against the growth of the peak resident memory in bench/mfq.py.
    """
    env = as_local_action_mdp(env)
    G, A, L, Al = env.G, env.A, env.L, env.Al
    K, NZ, N = L * Al, num_counts(k, L * Al), num_counts(k, L)
    s = torch.empty(0, dtype=dtype).element_size()
    B = local_kernels(pair_env(env))[1].unique().numel()
    total = 3 * G * A * NZ * s + 5 * G * NZ * s + 8 * NZ * (K + 2 * min(k, K) + 1) + 8 * G * (A + K) * N
    total += 4 * k * NZ + 8 * k * G * A * min(NZ, REWARD_CHUNK)  # sorted pairs of every z; r_Delta's gathers
    if m == "exact":
        total += kernel_gib(pair_env(env), k) * GiB + 8 * (B * NZ * G + G * A * NZ * G)
        dense = [NZ * num_counts(i + 1, K) for i in range(k)]  # the kernel build's dense accumulators
        total += 9 * sum(d for d in dense if d <= DENSE_COALESCE_MAX)
    else:
        total += B * NZ * int(m) * 4 + workers * min(B * NZ, SAMPLE_CHUNK_ROWS) * int(m) * (14 * k + 16)
        reads = min(B * G * NZ * int(m), max(FLAT_READS, G * GATHER_CHUNK_ROWS * int(m)))
        total += workers * reads * (4 + 2 * s)  # a sweep's gather: int32 indices, values, means
    return total / GiB


def _validate(k: int, m: int | str, T: int, tol: float, seed: int, n: int | None, max_memory_gib: float) -> None:
    check_int("k", k, 1, "sampled local agents") if n is None else check_k(k, n)
    if m != "exact":
        check_int("m", m, 1, "next-state samples per entry, or 'exact'")
    check_int("T", T, 1, "maximum iterations")
    check_int("seed", seed, 0, "a seed")
    check_positive("tol", tol)
    check_positive("max_memory_gib", max_memory_gib)


def solve_mfq(
    env: LocalActionMDP | GlobalLocalMDP,
    k: int,
    m: int | str = "exact",
    T: int = DEFAULT_T,
    tol: float = DEFAULT_TOL,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    on_iteration: Callable[[int, float, float], None] | None = None,
    max_memory_gib: float = DEFAULT_MAX_GIB,
    stop_early: bool = True,
) -> FixedPoint:
    """The fixed point of the SUBSAMPLE-MFQ operator on the pair-count table (no size checks).

    ``q [G, A, NZ]``, ``v [G, NZ]`` (``v[g, z] = V(g, c(z))``). ``m = "exact"``: exact expectation;
    an integer m: the mean over m next count tables drawn once per ``(kernel, z)`` with ``seed``
    (:func:`sqtorch.tabular.sample_kernel` of the pair MDP).
    """

    env = as_local_action_mdp(env)
    penv = pair_env(env)
    index = pair_index(k, env.L, env.Al, env.device)
    workers = 1 if penv.device.type == "cuda" else torch.get_num_threads()
    with torch_threads(1):
        X = state_columns(k, penv.L, penv.device)
        kernel = count_kernel(penv, k, max_memory_gib=max_memory_gib) if m == "exact" else sample_kernel(
            penv, k, int(m), seed, workers, X=X
        )
        r = subsampled_reward(penv, k, X).to(dtype)
        return value_iteration(kernel, r, penv.gamma, T, tol, greedy_pair_backup(index), on_iteration=on_iteration,
                               stop_early=stop_early)


def learn_mfq(
    env: LocalActionMDP | GlobalLocalMDP,
    k: int,
    m: int | str = "exact",
    T: int = DEFAULT_T,
    tol: float = DEFAULT_TOL,
    seed: int = 0,
    n: int | None = None,
    dtype: torch.dtype = torch.float64,
    max_memory_gib: float = DEFAULT_MAX_GIB,
    on_iteration: Callable[[int, float, float], None] | None = None,
    *,
    stop_early: bool = True,
) -> MFQResult:
    """Learn ``Q^est_{k,m}`` of SUBSAMPLE-MFQ (Algorithm 1) by value iteration from Q = 0 (docs/model.md §7).

    Stops when the fixed point is known to within ``tol`` or after T sweeps (``stop_early=False``:
    exactly T sweeps, a fixed workload for benchmarks). The memory need (:func:`mfq_memory_gib`) is
    checked against ``max_memory_gib`` before anything is allocated. ``m = "exact"`` at ``k = n`` gives
    ``Q*`` of the n-agent system.
    """
    _validate(k, m, T, tol, seed, n, max_memory_gib)
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype = {dtype} is not supported; allowed: {list(DTYPES.values())}")
    env = as_local_action_mdp(env)
    k = int(k)
    need = mfq_memory_gib(env, k, m, dtype, 1 if env.device.type == "cuda" else torch.get_num_threads())
    if need > max_memory_gib:
        NZ = num_counts(k, env.L * env.Al)
        raise ValueError(
            f"the SUBSAMPLE-MFQ table at k = {k} has G*A*C(k+L*Al-1, k) = {env.G}*{env.A}*{NZ} = "
            f"{env.G * env.A * NZ:,} entries and needs about {need:.2f} GiB with m = {m}, more than "
            f"max_memory_gib = {max_memory_gib}; lower k or m"
        )
    if env.device.type == "cuda":  # the device's free memory is the real limit there
        free = torch.cuda.mem_get_info(env.device)[0] / GiB
        if need > free:
            raise ValueError(
                f"the SUBSAMPLE-MFQ table at k = {k} needs {need:.2f} GiB but {env.device} has {free:.2f} GiB free"
            )
    t0 = time.perf_counter()
    fp = solve_mfq(env, k, m, T, tol, seed, dtype, on_iteration, max_memory_gib, stop_early)
    t1 = time.perf_counter()
    index = pair_index(k, env.L, env.Al, env.device)
    table = MFQTable(
        q=fp.q, v=fp.v.index_select(1, index.rep), k=k, L=env.L, Al=env.Al, tol=float(tol), env_name=env.name,
        meta=dict(m=m, seed=seed, gamma=env.gamma, env_params=dict(env.params)),
    )
    return MFQResult(table, fp.residuals, len(fp.residuals), fp.converged, t1 - t0)


__all__ = [
    "MFQResult",
    "MFQTable",
    "PairIndex",
    "greedy_pair_backup",
    "learn_mfq",
    "mean_field_index",
    "mfq_memory_gib",
    "pair_env",
    "pair_index",
    "solve_mfq",
]
