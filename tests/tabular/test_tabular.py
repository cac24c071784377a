import math

import pytest
import torch

from sqtorch.envs import make_env
from sqtorch.tabular import count_kernel, learn, num_counts, optimal_q, rank_states, sample_kernel
from tests.helpers.brute_force import joint_value_iteration


def small_queue():
    return make_env("queue", Q=2, G=3)


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_count_compression_is_lossless(k):
    """Q over count vectors == Q over the uncompressed k-tuple table (same exact operator)."""
    env = small_queue()
    q_tuple, tuples = joint_value_iteration(env, k)
    q_count = optimal_q(env, k, tol=1e-13).q  # [G, N, A]
    assert q_count.shape[1] == num_counts(k, env.L) < env.L**k or k == 1
    assert torch.allclose(q_count[:, rank_states(tuples, env.L)], q_tuple, rtol=0, atol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("name,n", [("queue", 3), ("demand_response", 2), ("demand_response_script", 2)])
def test_exact_variant_at_k_equal_n_is_the_joint_optimum(name, n):
    env = make_env(name)
    q_joint, tuples = joint_value_iteration(env, n)  # L^n * G states
    q_star = optimal_q(env, n).q
    assert torch.allclose(q_star[:, rank_states(tuples, env.L)], q_joint, rtol=0, atol=1e-8)
    q_learned = learn(env, n, m="exact", tol=1e-12).qtable.q  # the learner's exact variant, same solver
    assert torch.allclose(q_learned[:, rank_states(tuples, env.L)], q_joint, rtol=0, atol=1e-8)


@pytest.mark.slow
def test_samples_follow_the_exact_next_count_law():
    env = make_env("queue")
    k, m = 3, 40_000
    kernel = sample_kernel(env, k, m, seed=0)
    nxt = kernel.next_ranks()  # [G, A, N, m]: rank of c'_j
    law = count_kernel(env, k).M[0].to_dense()  # local kernel of (g=0, a=*)
    g, a, c = 0, 1, 7
    N = num_counts(k, env.L)
    freq = torch.bincount(nxt[g, a, c], minlength=N).double() / m
    assert (freq - law[c]).abs().max() < 5 * math.sqrt(0.25 / m)
    # the expectation over g' is exact: for V(g', c') = v[g'] every entry is exactly sum P_g v
    v = torch.arange(1.0, env.G + 1, dtype=torch.float64)
    expected = (env.P_g @ v)[:, :, None].expand(-1, -1, N)
    assert torch.allclose(kernel.expected_next(v[:, None].expand(-1, N)), expected, rtol=0, atol=1e-9)


def test_m_sample_q_approaches_exact_like_one_over_sqrt_m():
    env = make_env("queue")
    q_exact = optimal_q(env, 3).q
    ms = [256, 1024, 4096]  # below ~256 the optimism bias of max over noisy samples dominates
    err = []
    for m in ms:
        e = [(learn(env, 3, m=m, seed=s, tol=1e-9).qtable.q - q_exact).abs().mean() for s in range(4)]
        err.append(float(sum(e) / len(e)))
    assert all(a > b for a, b in zip(err, err[1:], strict=False)), err
    slope = (math.log(err[-1]) - math.log(err[0])) / (math.log(ms[-1]) - math.log(ms[0]))
    assert -0.7 < slope < -0.35, (slope, err)  # 1/sqrt(m) is slope -0.5


def test_same_seed_is_bitwise_identical_and_other_seed_differs():
    env = make_env("demand_response")
    a = learn(env, 2, m=5, T=30, seed=11)
    b = learn(env, 2, m=5, T=30, seed=11)
    c = learn(env, 2, m=5, T=30, seed=12)
    assert torch.equal(a.qtable.q, b.qtable.q)
    assert a.residuals == b.residuals
    assert not torch.equal(sample_kernel(env, 2, 5, 11).nxt, sample_kernel(env, 2, 5, 12).nxt)
    assert not torch.equal(a.qtable.q, c.qtable.q)


def test_learner_stops_at_tolerance_and_reports_residuals():
    env = small_queue()
    r = learn(env, 2, m=8, T=10_000, tol=1e-6)
    assert r.converged and r.residuals[-1] < 1e-6 <= r.residuals[-2]
    seen = []
    learn(env, 2, m=8, T=5, on_iteration=lambda t, res, s: seen.append((t, res)))
    assert [t for t, _ in seen] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(k=0), r"k = 0 is outside the allowed range k >= 1"),
        (dict(k=5, n=4), r"k = 5 is outside the allowed range 1 <= k <= n = 4"),
        (dict(k=2, m=0), r"m = 0 is outside the allowed range"),
        (dict(k=2, m="many"), r"m = 'many' is outside the allowed range"),
        (dict(k=2, T=0), r"T = 0 is outside the allowed range"),
        (dict(k=2, tol=0.0), r"tol = 0.0 is outside the allowed range"),
    ],
)
def test_bad_learner_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        learn(small_queue(), **kwargs)


def test_table_too_large_is_refused_before_allocating():
    env = make_env("demand_response")  # k = 12: 5 * C(36, 12) * 3 = 19.6e9 entries
    with pytest.raises(ValueError, match=r"k = 12 .* needs [\d.]+ GiB .* max_memory_gib = 8"):
        learn(env, 12, m=10)
    with pytest.raises(ValueError, match=r"exact count kernel at k = 6.* GiB"):
        learn(env, 6, m="exact", max_memory_gib=1)


@pytest.mark.slow
def test_memory_estimate_bounds_the_measured_peak():
    """``table_memory_gib`` is within 20% of the peak resident memory ``learn`` adds (own process)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    code = """
import json, torch
from sqtorch.envs import make_env
from sqtorch.tabular import learn
from sqtorch.tabular.learner import distinct_local_kernels, table_memory_gib
from sqtorch.tabular.counts import num_counts
env = make_env("demand_response"); k = 6
def hwm():  # VmHWM, not ru_maxrss: that one is inherited from the parent over exec
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:")) / 2**20
base = hwm()
learn(env, k, m=10, T=3, tol=1e-300)
peak = hwm() - base
est = table_memory_gib(5, 3, num_counts(k, 25), 10, torch.float64, distinct_local_kernels(env), torch.get_num_threads(),
                       k=k)
print(json.dumps([peak, est]))
"""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    peak, est = json.loads(out.stdout.strip().splitlines()[-1])
    assert 0.8 * est <= peak <= 1.2 * est, (peak, est)


def test_result_does_not_depend_on_the_thread_count():
    env = make_env("demand_response")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = learn(env, 4, m=20, T=5, seed=3)  # 6M reads per sweep: the parallel chunk path
        torch.set_num_threads(2)
        b = learn(env, 4, m=20, T=5, seed=3)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(a.qtable.q, b.qtable.q)


@pytest.mark.parametrize("name,k", [("queue", 6), ("demand_response", 3)])
def test_exact_kernel_int32_indices_give_the_int64_products(name, k):
    """On the CPU the exact kernel's CSR indices are int32 (MKL's own width: no index copy per product);
    the products are the int64 kernel's bit for bit, and the rows are probability laws."""
    env = make_env(name)
    K = count_kernel(env, k)
    V = torch.randn(env.G, K.N, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
    for M in K.M:
        assert M.crow_indices().dtype == M.col_indices().dtype == torch.int32
        wide = torch.sparse_csr_tensor(M.crow_indices().long(), M.col_indices().long(), M.values(), size=M.shape)
        assert torch.equal(M @ V.T, wide @ V.T)
        assert torch.allclose(M @ torch.ones(K.N, 1, dtype=torch.float64), torch.ones(1, dtype=torch.float64),
                              rtol=0, atol=1e-12)
