"""Execution at large n (docs/model.md §2 Algorithm 2, §5): peak memory of evaluate_mc is linear in n.

Each measurement runs in a fresh subprocess and reads its peak resident set size (``VmHWM`` of
``/proc/self/status``, reset through ``/proc/self/clear_refs`` after a warm-up; tracemalloc does
not see torch's allocations). The growth of the peak during the evaluation, above the resident
size before it (the smallest of three processes), is compared at two n.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, re, sys, torch
from sqtorch.envs import make_env
from sqtorch.evaluation import evaluate_mc
from sqtorch.tabular.counts import num_counts
from sqtorch.tabular.qtable import QTable
torch.set_num_threads(1)
kind, n, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
env = make_env("queue")
if kind == "tabular":
    policy = QTable(torch.randn(env.G, num_counts(k, env.L), env.A), k, env.L, "queue")
else:
    from sqtorch.neural import DeepSetsPolicy, DeepSetsQ, NetConfig
    policy = DeepSetsPolicy(DeepSetsQ(env.G, env.L, env.A, NetConfig()).eval(), k)
kw = dict(num_initial=4, rollouts=4, horizon=3, seed=0, max_batch_elems=1 << 24)
evaluate_mc(env, policy, 1000, **kw)  # warm-up: every code path, allocator pools
def status(key):
    return int(re.search(key + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM (the peak RSS) to the current RSS
base = status("VmRSS")
res = evaluate_mc(env, policy, n, **kw)
print(json.dumps({"growth": status("VmHWM") - base, "mean": res.mean}))
"""


REPEATS = 3  # fresh processes per measurement (_peak_growth)


def _peak_growth(kind: str, n: int, k: int) -> int:
    """The smallest growth of :data:`REPEATS` fresh processes: what the allocator or the kernel adds on
    top of the evaluation's own buffers (a transparent huge page, a heap not yet trimmed) only adds. On a
    loaded machine it added 18-41 MiB to 3 of 14 processes (none of 20 with the 4096-bucket table the simulator used
    before; the cause is not known), which broke the linear bound once in CI."""
    return min(_one_peak_growth(kind, n, k) for _ in range(REPEATS))


def _one_peak_growth(kind: str, n: int, k: int) -> int:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, kind, str(n), str(k)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])["growth"]


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "k"), [("tabular", 8), ("deepsets", 100)])
def test_evaluate_mc_peak_memory_is_linear_in_n(kind, k) -> None:
    """16 rows x n agents in one chunk at n = 5e4 and 1e5: the peak grows ~2x, at most ~100 bytes an agent entry.

    Anything of size n x k x rows (k = 100: 1.6e8 entries at n = 1e5) or quadratic in n would
    break both bounds.
    """
    n1, n2, rows = 50_000, 100_000, 16
    g1, g2 = _peak_growth(kind, n1, k), _peak_growth(kind, n2, k)
    per_entry = g2 / (rows * n2)
    assert per_entry < 100, f"{per_entry:.0f} bytes per agent entry at n = {n2}"
    assert g2 < 2.6 * g1 + (8 << 20), (g1, g2)  # linear: doubling n at most ~doubles the growth
    assert g2 > 1.2 * g1, (g1, g2)  # and the measurement does see the n-sized buffers
