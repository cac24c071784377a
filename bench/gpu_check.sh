#!/usr/bin/env bash
# The GPU check of sqtorch, at most ~5 minutes on one CUDA GPU; prints one markdown table.
#   bash bench/gpu_check.sh            (after: pip install -e ".[dev]" with a CUDA build of torch)
# It runs the `gpu` tests (a bitwise DeepSets resume on the GPU included), a deterministic DeepSets
# training on the GPU (k = 8), the tabular learner at k = 5..7 (time, memory estimate vs
# torch.cuda.max_memory_allocated), evaluate_mc at n = 10^6 and the host syncs per Monte Carlo step.
# No GPU has been available to this project so far: this script has not run yet.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
row() { printf '| %s | %s |\n' "$1" "$2"; }
echo "| check | result |"; echo "|---|---|"
row "device" "$(python -c 'import torch; print(torch.cuda.get_device_name(0), "torch", torch.__version__)')"
t0=$SECONDS; timeout 150 python -m pytest -q -m gpu tests/test_gpu.py > /tmp/sqtorch_gpu_tests.log 2>&1
row "pytest -m gpu" "$(tail -1 /tmp/sqtorch_gpu_tests.log) ($((SECONDS - t0)) s)"
t0=$SECONDS; out=$(timeout 120 python train.py trainer=gpu trainer.deterministic=true k=8 algo.max_steps=500 \
  eval.every=500 logger=none hydra.run.dir=/tmp/sqtorch_gpu_run 2>&1 | tail -1)
row "train.py trainer=gpu trainer.deterministic=true k=8 (500 steps)" "${out} ($((SECONDS - t0)) s)"
timeout 120 python - <<'EOF'
import time

import torch

from sqtorch.envs import make_env
from sqtorch.evaluation import evaluate_mc
from sqtorch.tabular import learn, optimal_q
from sqtorch.tabular.counts import num_counts
from sqtorch.tabular.learner import distinct_local_kernels, table_memory_gib

env = make_env("demand_response").to("cuda")
for k in (5, 6, 7):
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    r = learn(env, k, m=10, T=50, tol=1e-300, seed=0, max_memory_gib=64)
    torch.cuda.synchronize()
    est = table_memory_gib(env.G, env.A, num_counts(k, env.L), 10, torch.float64, distinct_local_kernels(env), 1, k=k)
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"| tabular demand_response k={k}, m=10, T=50 | {time.perf_counter() - t:.2f} s, "
          f"peak {peak:.2f} GiB vs estimate {est:.2f} GiB |")
queue = make_env("queue").to("cuda")
table = optimal_q(queue, 8)
for n in (10**5, 10**6):
    torch.cuda.synchronize()
    t = time.perf_counter()
    res = evaluate_mc(queue, table, n, num_initial=4, rollouts=4, horizon=20, seed=0)
    torch.cuda.synchronize()
    rate = 16 * n * 20 / (time.perf_counter() - t)
    print(f"| evaluate_mc queue n={n:.0e}, k=8, 16 rollouts x 20 steps | {rate:.3g} agent-steps/s |")
counts = []
for horizon in (5, 25):
    torch.cuda.set_sync_debug_mode("warn")
    import warnings
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        evaluate_mc(queue, table, 1000, num_initial=4, rollouts=8, horizon=horizon, seed=0)
    torch.cuda.set_sync_debug_mode("default")
    counts.append(sum("synchroniz" in str(x.message) for x in w))
print(f"| host syncs of evaluate_mc, horizon 5 vs 25 | {counts[0]} vs {counts[1]} "
      f"({(counts[1] - counts[0]) / 20:.2f} per step) |")
EOF
