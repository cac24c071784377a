"""The sampled learner's fast paths compute the same numbers as its general path.

- small tables (one gather, ``_FlatGather``) and the chunked, fused greedy sweep agree bitwise,
  including stochastic ``P_g`` (weighted means) and the huge-page ``V^T`` buffer;
- ``LookupSampler.build``'s bucket table (by counting) is the binary-search table of its definition,
  and its draws (by cut thresholds, or the exact CDF where a bucket has more cuts) are inverse-CDF draws,
  also from the compact table (the fewest buckets that keep the thresholds);
- int32 ranks, cached state columns and the chunked ``r_Delta`` equal their definitions;
- ``stop_early=False`` runs exactly T sweeps;
- the Q-table bytes of representative calls, one per path, are pinned by SHA-256.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from sqtorch.envs import make_env
from sqtorch.envs.base import GlobalLocalMDP
from sqtorch.envs.simulator import IMPURE, LOOKUP_MAX_CUTS, LOOKUP_MIN_BITS, LookupSampler, sample_categorical
from sqtorch.runtime import torch_threads
from sqtorch.tabular import learn, sample_kernel, sampled_kernel
from sqtorch.tabular.bellman import BellmanKernel, subsampled_reward
from sqtorch.tabular.counts import all_counts, all_sorted_states, rank_columns, rank_states, state_columns
from tests.helpers.random_envs import PROFILE, small_envs


@settings(PROFILE)
@given(env=small_envs(max_G=3, max_A=3, max_L=4), k=st.integers(1, 4), m=st.sampled_from([1, 3, 7]))
def test_small_table_path_equals_chunked_fused_path(env: GlobalLocalMDP, k: int, m: int) -> None:
    flat = learn(env, k, m=m, T=6, tol=1e-300, seed=5)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sampled_kernel, "FLAT_READS", -1)  # the chunked path, one chunk per block, fused sweeps
        mp.setattr(sampled_kernel, "HUGE_PAGE_MIN_BYTES", 0)  # V^T in the huge-page buffer
        chunked = learn(env, k, m=m, T=6, tol=1e-300, seed=5)
    assert torch.equal(flat.qtable.q, chunked.qtable.q)
    assert flat.residuals == chunked.residuals


@pytest.mark.slow
def test_chunked_expected_next_matches_its_fused_sweep() -> None:
    env = make_env("demand_response")
    K = sample_kernel(env, 4, 20, seed=1)  # 4 chunks of count vectors
    assert K._flat is None
    r = subsampled_reward(env, 4)
    V = torch.rand(env.G, K.nxt.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    default = BellmanKernel.greedy_sweep(K, V, r, env.gamma)  # one whole Q from expected_next
    assert torch.equal(K.greedy_sweep(V, r, env.gamma), default)
    assert torch.equal(default, K.expected_next(V).mul_(env.gamma).add_(r).amax(1))


@settings(PROFILE)
@given(seed=st.integers(0, 2**31 - 1), K=st.integers(2, 30), dyadic=st.booleans(), entries=st.integers(16, 1 << 20))
def test_bucket_table_by_counting_is_the_binary_search_table(seed: int, K: int, dyadic: bool, entries: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    P = torch.rand(6, K, generator=gen, dtype=torch.float64) ** 3
    P[torch.rand(6, K, generator=gen) < 0.3] = 0
    if dyadic:  # CDF values on bucket edges
        P = torch.round(P * 8)
    P[:, 0] += 1
    P = P / P.sum(-1, keepdim=True)
    S = LookupSampler.build(P, entries)
    # the definition: outcome = #boundaries <= q / s unless #boundaries < (q + 1) / s is larger (binary search)
    bits = max(4, min(16, (entries // 6).bit_length() - 1))
    edges = torch.arange(2**bits + 1, dtype=torch.float64) / 2**bits
    inner = S.cdf_cols[:-1].T.contiguous()
    lo = torch.searchsorted(inner, edges[:-1].expand(6, -1).contiguous(), right=True)
    hi = torch.searchsorted(inner, edges[1:].expand(6, -1).contiguous(), right=False)
    assert S.bits == bits and torch.equal(S.table, torch.where(hi > lo, IMPURE, lo).to(torch.uint8).reshape(-1))


def most_cuts_in_a_bucket(inner: Tensor, bits: int) -> int:
    """The most CDF boundaries strictly inside one of the ``2^bits`` buckets of a row (the definition)."""
    s = 2**bits
    cut = ((inner * s).floor() != inner * s) & (inner < 1)
    per_bucket = torch.zeros(inner.shape[0], s + 1, dtype=torch.int64).scatter_add_(
        1, (inner * s).floor().long().clamp(max=s), cut.long())
    return int(per_bucket.max())


@settings(PROFILE)
@given(seed=st.integers(0, 2**31 - 1), K=st.integers(2, 30), dyadic=st.booleans(), tiny=st.booleans(),
       entries=st.integers(16, 1 << 16), compact=st.booleans())
def test_bucket_draws_are_inverse_cdf_draws(seed: int, K: int, dyadic: bool, tiny: bool, entries: int,
                                            compact: bool) -> None:
    """Every draw is ``#{inner CDF values <= u}`` (sample_categorical), for random u, u on every boundary
    and just below it, and u on every bucket edge; rows with tiny probabilities put several boundaries
    in one bucket (more than LOOKUP_MAX_CUTS: the exact-CDF path). A ``compact`` table has the fewest
    buckets (from 2^LOOKUP_MIN_BITS per row) with at most LOOKUP_MAX_CUTS boundaries in each, else the
    ``entries`` table."""
    gen = torch.Generator().manual_seed(seed)
    R = 5
    P = torch.rand(R, K, generator=gen, dtype=torch.float64) ** 3
    P[torch.rand(R, K, generator=gen) < 0.3] = 0
    if dyadic:
        P = torch.round(P * 8)
    if tiny:
        P[torch.rand(R, K, generator=gen) < 0.5] *= 1e-9
    P[:, 0] += 1
    P = P / P.sum(-1, keepdim=True)
    S = LookupSampler.build(P, entries, compact=compact)
    s = 2**S.bits
    inner = S.cdf_cols[:-1].T
    default_bits = max(LOOKUP_MIN_BITS, min(16, (entries // R).bit_length() - 1))
    smaller = range(LOOKUP_MIN_BITS, S.bits if S.cuts is not None else default_bits)
    assert S.bits == default_bits or (compact and S.cuts is not None)
    assert not compact or all(most_cuts_in_a_bucket(inner, b) > LOOKUP_MAX_CUTS for b in smaller)
    assert (S.cuts is None) == (most_cuts_in_a_bucket(inner, S.bits) > LOOKUP_MAX_CUTS)
    u = torch.cat([
        torch.rand(4000, generator=gen, dtype=torch.float64),
        inner.reshape(-1).clamp(max=1 - 2**-53),
        torch.nextafter(inner.reshape(-1), torch.zeros(1, dtype=torch.float64)).clamp(0, 1 - 2**-53),
        torch.arange(s, dtype=torch.float64) / s,
    ])
    rows = torch.randint(R, u.shape, generator=gen)
    draws = S.sample(rows, u)
    assert torch.equal(draws, sample_categorical(S.cdf_cols, rows, u))
    assert torch.equal(S.sample(rows.view(-1, 2)[:, :1], u.view(-1, 2)[:, :1]), draws.view(-1, 2)[:, :1])


@pytest.mark.parametrize("k,L", [(1, 4), (3, 5), (4, 25)])
def test_state_columns_and_int32_ranks(k: int, L: int) -> None:
    X = state_columns(k, L)
    assert X.dtype == torch.int32 and torch.equal(X.long(), all_sorted_states(k, L).T)
    x = torch.randint(0, L, (k, 50, 3), generator=torch.Generator().manual_seed(k)).to(torch.uint8)
    r32 = rank_columns(list(x), L, dtype=torch.int32)
    assert r32.dtype == torch.int32 and torch.equal(r32.long(), rank_states(x.permute(1, 2, 0).long(), L))
    assert torch.equal(rank_columns(list(x), L), r32.long())  # the default int64 ranks: the same integers


@pytest.mark.parametrize("name,k", [("demand_response", 3), ("queue", 6)])
def test_subsampled_reward_is_the_count_formula(name: str, k: int) -> None:
    env = make_env(name)
    c = all_counts(k, env.L).to(torch.float64)  # [N, L]
    formula = env.r_g[:, :, None] + torch.einsum("gax,nx->gan", env.r_l, c) / k
    got = subsampled_reward(env, k)
    assert torch.allclose(got, formula, rtol=0, atol=1e-12)
    X = all_sorted_states(k, env.L)  # the summation order: positions one by one
    by_position = env.r_l[:, :, X[:, 0]].clone()
    for i in range(1, k):
        by_position += env.r_l[:, :, X[:, i]]
    assert torch.equal(got, by_position.div_(k).add_(env.r_g[:, :, None]))


def test_stop_early_false_runs_exactly_T_sweeps() -> None:
    env = make_env("queue", Q=2, G=3)
    early = learn(env, 2, m=4, T=500, tol=1e-300)
    forced = learn(env, 2, m=4, T=early.iterations + 7, tol=1e-300, stop_early=False)
    assert early.converged and early.iterations < 500
    assert forced.iterations == early.iterations + 7 and forced.converged


def _stochastic_env() -> GlobalLocalMDP:
    """A fixed environment with stochastic ``P_g`` rows (P_g-weighted means) and action-dependent ``P_l``."""
    gen = torch.Generator().manual_seed(7)
    G, A, L = 3, 2, 6

    def rows(*shape: int) -> torch.Tensor:
        w = torch.rand(shape, generator=gen, dtype=torch.float64) * (torch.rand(shape, generator=gen) < 0.6)
        w[..., 0] += 0.1  # no empty row
        return w / w.sum(-1, keepdim=True)

    return GlobalLocalMDP(
        P_g=rows(G, A, G),
        P_l=rows(G, A, L, L),
        r_g=torch.rand(G, A, generator=gen, dtype=torch.float64),
        r_l=torch.rand(G, A, L, generator=gen, dtype=torch.float64),
        gamma=0.9,
    )


def _digest(q: torch.Tensor) -> str:
    return hashlib.sha256(q.contiguous().numpy().tobytes()).hexdigest()[:16]


def _learned_digest(name: str, k: int, m: int | str, seed: int, dtype: torch.dtype, T: int) -> str:
    env = _stochastic_env() if name == "stochastic" else make_env(name)
    with torch_threads(2):  # learn runs its chunks on a pool of this many threads (the values do not depend on it)
        return _digest(learn(env, k, m=m, T=T, tol=1e-300, seed=seed, dtype=dtype).qtable.q)


F64, F32 = torch.float64, torch.float32


@pytest.mark.parametrize(
    "name,k,m,seed,dtype,T,digest",
    [
        ("demand_response", 3, 1, 0, F64, 10, "bebc005c787896ce"),  # one gather, E^ = V[ix]
        ("queue", 4, 1, 0, F64, 10, "85a7d85be85950f4"),
        ("demand_response", 6, 1, 3, F64, 2, "5b09420c36828d00"),  # chunked, fused, thread pool, V^T on huge pages
    ],
)
def test_m1_tables_are_pinned(name: str, k: int, m: int, seed: int, dtype: torch.dtype, T: int, digest: str) -> None:
    """SHA-256 of the m = 1 Q-table bytes: the mean of one sample is the sample and every other op
    is elementwise, so these bits are the same on any CPU."""
    assert _learned_digest(name, k, m, seed, dtype, T) == digest


def mkl_code_path() -> str | None:
    """The MKL code path of this CPU, as far as the BLAS digests below tell them apart: ``"avx512"``
    (Intel AVX-512) or ``"avx512-amx"`` (Intel AVX-512 with AMX tiles, where MKL runs other kernels and
    its sums round differently, seen on the same torch build); ``None`` for anything else (no MKL,
    no AVX-512, another vendor, no ``/proc/cpuinfo``), where no digest was recorded."""
    if torch.backends.cpu.get_cpu_capability() != "AVX512" or "BLAS_INFO=mkl" not in torch.__config__.show():
        return None
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    if "GenuineIntel" not in cpuinfo or "avx512f" not in flags:
        return None
    return "avx512-amx" if "amx_tile" in flags else "avx512"


MKL_CODE_PATH = mkl_code_path()


@pytest.mark.skipif(MKL_CODE_PATH is None, reason="digests recorded with MKL on Intel AVX-512 (with and without AMX)")
@pytest.mark.parametrize(
    "name,k,m,seed,dtype,T,avx512,avx512_amx",
    [
        ("queue", 4, 20, 0, F64, 10, "93e3081f26704169", "240262fb3be2535d"),  # one gather, one mat-vec per block
        ("demand_response", 3, 10, 1, F64, 10, "fdd95e6e8fa36ea1", "032ec9e255ee33ea"),
        ("demand_response", 3, 10, 1, F32, 10, "9a5c8ab88856ba48", "a40010f9b68942be"),
        ("demand_response", 4, 20, 2, F64, 5, "f5c6f9ff4c513010", "f67348ec405c233b"),  # chunked, fused, thread pool
        ("demand_response", 4, 20, 2, F32, 5, "79dbe3c370d3626c", "b66a55c54df77bae"),
        ("stochastic", 3, 7, 4, F64, 10, "4300db9b7f14aafd", "0eb7fe1a1aecd3ba"),  # one gather, P_g-weighted means
        ("stochastic", 7, 100, 5, F64, 4, "04bc2875eae4dd4c", "d6d67c39e5e66c35"),  # chunked, P_g-weighted means
        ("queue", 4, "exact", 0, F64, 10, "613668655ba6986a", "647085aa66719dcd"),  # the exact operator
        ("demand_response", 2, "exact", 0, F64, 10, "7cd531e82d2f8f10", "d9c3c7d6341416c7"),
    ],
)
def test_blas_tables_are_pinned(
    name: str, k: int, m: int | str, seed: int, dtype: torch.dtype, T: int, avx512: str, avx512_amx: str
) -> None:
    """SHA-256 of the Q-table bytes of representative calls, one per path of the operator: any change
    to these bits is a numerical change, never a refactoring. One digest per MKL code path
    (:func:`mkl_code_path`): the same code gives other bits on an AMX-capable CPU."""
    digest = {"avx512": avx512, "avx512-amx": avx512_amx}[MKL_CODE_PATH]  # type: ignore[index]
    assert _learned_digest(name, k, m, seed, dtype, T) == digest


@pytest.mark.parametrize(
    "name,k,m,flat",
    [
        ("queue", 4, 20, True),
        ("demand_response", 4, 20, False),
        ("stochastic", 3, 7, True),
        ("stochastic", 7, 100, False),
    ],
)
def test_pinned_calls_take_their_paths(name: str, k: int, m: int, flat: bool) -> None:
    env = _stochastic_env() if name == "stochastic" else make_env(name)
    assert (sample_kernel(env, k, m, seed=0)._flat is not None) == flat
