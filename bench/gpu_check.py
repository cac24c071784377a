"""The GPU check of sqtorch: one prepared run of at most ~9 minutes (its timeouts) on one CUDA GPU, one markdown table.

    bash bench/gpu_check.sh                         # on a CUDA machine (writes $OUT/gpu_check.md if OUT is set)
    python bench/gpu_check.py --device cpu --quick  # the same script on the CPU (a dry run of its code paths)

Every check runs in its own subprocess under a timeout, so one failure or hang costs only its own
row; a failed row shows the last line of its error and the whole log is kept beside the table.
Checks (issue 13 of the project): the ``gpu`` tests (tests/test_gpu.py and the bitwise DeepSets
resume on the GPU in tests/test_train.py); ``train.py trainer=gpu trainer.deterministic=true k=8``;
the tabular learner at k = 5..8 (time, sample-backups/s, ``table_memory_gib`` vs
``torch.cuda.max_memory_allocated``, run-to-run bitwise equality, float32, the exact kernel vs the
CPU); ``evaluate_mc`` at n = 10^6 and the CPU of the same machine at n = 10^5 (agent-steps/s); the
host synchronizations per Monte Carlo step and per Bellman sweep (``torch.cuda.set_sync_debug_mode``);
the DeepSets training step (issue 21): ms per step at batch 256, items/s up to batch 131,072, and
the best against the same machine's CPU cores; whether ``torch.compile`` pays for its update
(bench/compile.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TIMEOUTS = {"tests": 120, "train": 75, "tabular": 60, "execution": 35, "syncs": 25, "neural": 90, "compile": 150}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(dev: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan")


def check_tabular(dev: torch.device, quick: bool) -> None:
    """Learner time and memory on the device at k = 5..7, reproducibility, float32 and the exact kernel."""
    from sqtorch.envs import make_env
    from sqtorch.tabular import learn, optimal_q
    from sqtorch.tabular.counts import num_counts
    from sqtorch.tabular.learner import distinct_local_kernels, table_memory_gib

    cpu_env = make_env("demand_response")
    env = cpu_env.to(dev)
    B = distinct_local_kernels(env)
    ks = (3, 4) if quick else (5, 6, 7, 8)
    for k in ks:
        N = num_counts(k, env.L)
        est = table_memory_gib(env.G, env.A, N, 10, torch.float64, B, 1, k=k, device=dev)
        _reset_peak(dev)
        t = time.perf_counter()
        r = learn(env, k, m=10, T=50, tol=1e-300, seed=0, max_memory_gib=64)
        _sync(dev)
        total = time.perf_counter() - t
        rate = r.table_entries * 10 * r.iterations / r.learn_seconds
        print(f"| tabular demand_response k={k}, m=10 ({r.table_entries:,} entries, {r.iterations} sweeps) | "
              f"{total:.2f} s (build {r.build_seconds:.2f} s), {rate:.3g} sample-backups/s; "
              f"peak {_peak_gib(dev):.3f} GiB vs estimate {est:.3f} GiB |", flush=True)
    k = ks[0]
    a = learn(env, k, m=10, T=50, seed=1)
    b = learn(env, k, m=10, T=50, seed=1)
    t = time.perf_counter()
    c = learn(cpu_env, k, m=10, T=50, seed=1)
    cpu_s = time.perf_counter() - t
    print(f"| tabular k={k} same seed twice on {dev.type} | bitwise equal: {torch.equal(a.qtable.q, b.qtable.q)}; "
          f"vs the CPU table max |diff| {float((a.qtable.q.cpu() - c.qtable.q).abs().max()):.3g} "
          f"(different generators: same law, not the same draws); CPU on this machine {cpu_s:.2f} s |", flush=True)
    f32 = learn(env, k, m=10, T=50, seed=1, dtype=torch.float32)
    print(f"| tabular k={k} float32 on {dev.type} | dtype {f32.qtable.q.dtype}, max |Q32 - Q64| "
          f"{float((f32.qtable.q.double() - a.qtable.q).abs().max()):.3g} |", flush=True)
    queue = make_env("queue")
    t = time.perf_counter()
    gpu_q = optimal_q(queue.to(dev), 8).q
    _sync(dev)
    dt = time.perf_counter() - t
    cpu_q = optimal_q(queue, 8).q
    ex32 = learn(queue.to(dev), 4, m="exact", dtype=torch.float32).qtable.q
    ex64 = optimal_q(queue, 4).q
    print(f"| exact count kernel + Q* (queue n=8) on {dev.type} | {dt:.2f} s, max |Q*_dev - Q*_cpu| "
          f"{float((gpu_q.cpu() - cpu_q).abs().max()):.3g}; m='exact' float32 k=4 vs float64: "
          f"{float((ex32.double().cpu() - ex64).abs().max()):.3g} |", flush=True)


def check_execution(dev: torch.device, quick: bool) -> None:
    """``evaluate_mc`` agent-steps/s on the device at n = 10^5, 10^6 and on this machine's CPU at 10^5."""
    from sqtorch.envs import make_env
    from sqtorch.evaluation import evaluate_mc
    from sqtorch.tabular import optimal_q

    queue = make_env("queue")
    table = optimal_q(queue, 8)
    cpu = torch.device("cpu")
    runs = [(dev, 10**4), (cpu, 10**4)] if quick else [(dev, 10**5), (dev, 10**6), (cpu, 10**5)]
    for d, n in runs:
        env, pol = queue.to(d), table
        evaluate_mc(env, pol, 1000, num_initial=2, rollouts=2, horizon=2, seed=0)  # warm-up (kernels, caches)
        _sync(d)
        t = time.perf_counter()
        res = evaluate_mc(env, pol, n, num_initial=4, rollouts=4, horizon=20, seed=0)
        _sync(d)
        rate = 16 * n * 20 / (time.perf_counter() - t)
        print(f"| evaluate_mc queue n={n:.0e} on {d.type} ({torch.get_num_threads()} threads), k=8, 16 rollouts x 20 "
              f"steps | {rate:.3g} agent-steps/s (V = {res.mean:.4f} +- {res.ci95:.4f}) |", flush=True)


def _count_syncs(fn) -> int:
    """Host synchronizations during ``fn()`` (torch's sync debug mode 'warn'; 0 on the CPU)."""
    if not torch.cuda.is_available():
        fn()
        return 0
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(x.message) for x in w)


def check_syncs(dev: torch.device, quick: bool) -> None:
    """Syncs per Monte Carlo step (difference of horizons 5 and 25) and per Bellman sweep (T = 5 vs 15)."""
    from sqtorch.envs import make_env
    from sqtorch.evaluation import evaluate_mc
    from sqtorch.tabular import learn, optimal_q

    queue = make_env("queue").to(dev)
    table = optimal_q(queue, 4)
    evaluate_mc(queue, table, 1000, num_initial=2, rollouts=2, horizon=2, seed=0)
    mc = [_count_syncs(lambda h=h: evaluate_mc(queue, table, 1000, num_initial=4, rollouts=8, horizon=h, seed=0))
          for h in (5, 25)]
    dr = make_env("demand_response").to(dev)
    vi = [_count_syncs(lambda T=T: learn(dr, 3, m=10, T=T, tol=1e-300, seed=0)) for T in (5, 15)]
    print(f"| host syncs: evaluate_mc horizon 5 vs 25; learn T=5 vs 15 | {mc[0]} vs {mc[1]} "
          f"({(mc[1] - mc[0]) / 20:.2f} per Monte Carlo step); {vi[0]} vs {vi[1]} "
          f"({(vi[1] - vi[0]) / 10:.2f} per sweep) |", flush=True)


def check_neural(dev: torch.device, quick: bool) -> None:
    """DeepSets training step outside Lightning (issue 21's GPU targets): ms per step at batch 256,
    items/s at growing batches, and the best against the same machine's CPU (all cores) at batch 4096.

    queue, n = 64, k = 4, m = 8, ``visited`` pool of 256 systems: ``SubsampleQModule.td_loss`` and its
    update (fused Adam, norm clipping), as ``python bench/neural.py`` times it (``raw_step_ms``).
    """
    import argparse

    from bench.neural import raw_step_ms

    def ms(device: torch.device, batch: int, steps: int) -> float:
        args = argparse.Namespace(m=8, batch_size=batch, hidden=64, steps=steps, repeats=2)
        return raw_step_ms("queue", 64, 4, args, device)

    steps = 10 if quick else 100
    batches = (256, 1024) if quick else (256, 4096, 32768, 131072)
    best = 0.0
    for batch in batches:
        t = ms(dev, batch, steps)
        best = max(best, batch / t * 1e3)
        print(f"| DeepSets step, {dev.type}, batch {batch} | {t:.3f} ms, {batch / t * 1e3:,.0f} items/s |", flush=True)
    torch.set_num_threads(os.cpu_count() or 1)
    cpu_batch = 1024 if quick else 4096
    cpu = cpu_batch / ms(torch.device("cpu"), cpu_batch, max(steps // 4, 5)) * 1e3
    print(f"| DeepSets best items/s vs this machine's CPU ({torch.get_num_threads()} threads, batch {cpu_batch}) "
          f"| {best:,.0f} vs {cpu:,.0f} items/s: {best / cpu:.1f}x |", flush=True)


def check_compile(dev: torch.device, quick: bool) -> None:
    """Does ``torch.compile`` pay for the DeepSets update on this device (bench/compile.py): the update
    alone (eager, inductor default, on CUDA also ``reduce-overhead``: CUDA graphs) and the training step."""
    import argparse

    from bench.compile import measure, measure_step, weights_cell

    args = argparse.Namespace(steps=10 if quick else 100, warmup=5 if quick else 20, repeats=2 if quick else 3)
    for batch in (256,) if quick else (256, 4096):
        for r in measure(batch, dev, args):
            first = "-" if r["first_s"] is None else f"{r['first_s']:.1f}"
            print(f"| torch.compile update, {dev.type}, batch {batch}, {r['arm']} | {r['ms']:.3f} ms, "
                  f"{r['items_per_s']:,.0f} items/s, {r['vs_eager']:.2f}x vs eager; first step {first} s; "
                  f"weights = eager's: {weights_cell(r['max_diff'])} |", flush=True)
    for r in measure_step(256, dev, args):
        print(f"| torch.compile in Trainer.fit, {dev.type}, batch 256, {r['module']} | "
              f"{r['steps_per_s']:,.1f} steps/s, {r['vs_eager']:.2f}x vs eager |", flush=True)


CHECKS = {"tabular": check_tabular, "execution": check_execution, "syncs": check_syncs, "neural": check_neural,
          "compile": check_compile}


def _run(name: str, cmd: list[str], timeout: int, logs: Path) -> list[str]:
    """Run ``cmd``; its table rows (lines starting with '|'), or one row with the error."""
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        out, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        out, rc = out + f"\nTIMEOUT after {timeout} s", 124
    (logs / f"gpu_check_{name}.log").write_text(out)
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    if rc != 0:
        last = [line for line in out.splitlines() if line.strip()][-1:] or ["(no output)"]
        rows.append(f"| {name}: FAILED (exit {rc}, {time.perf_counter() - t:.0f} s) | {last[0][:300]} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--quick", action="store_true", help="small sizes (for a dry run on the CPU)")
    ap.add_argument("--section", choices=tuple(CHECKS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    dev = torch.device(args.device)
    if args.section:
        try:
            CHECKS[args.section](dev, args.quick)
        except Exception:
            traceback.print_exc()
            sys.exit(1)
        return
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: torch.cuda.is_available() is False; run with --device cpu for a dry run")
    logs = Path(os.environ.get("OUT") or "/tmp/sqtorch_gpu_check")
    logs.mkdir(parents=True, exist_ok=True)
    py, quick = sys.executable, ["--quick"] if args.quick else []
    name = torch.cuda.get_device_name(0) if dev.type == "cuda" else "CPU"
    rows = [f"| device | {name}, torch {torch.__version__}, {os.cpu_count()} CPU cores |"]
    print("| check | result |\n|---|---|\n" + rows[0], flush=True)
    trainer = "gpu" if dev.type == "cuda" else "cpu"
    steps = 50 if args.quick else 500
    plan = [
        ("tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests/"]),
        ("train", [py, "train.py", f"trainer={trainer}", "trainer.deterministic=true", "k=8", f"algo.max_steps={steps}",
                   f"eval.every={steps}", "logger=none", "trainer.enable_progress_bar=false",
                   f"hydra.run.dir={logs}/train_run"]),
        *[(s, [py, __file__, "--device", args.device, "--section", s, *quick]) for s in CHECKS],
    ]
    for name, cmd in plan:
        t = time.perf_counter()
        new = _run(name, cmd, TIMEOUTS[name], logs)
        if name == "tests":
            log = (logs / "gpu_check_tests.log").read_text().splitlines()
            summary = [line for line in log if " passed" in line or " failed" in line or " skipped" in line][-1:]
            new = [f"| pytest -m gpu tests/ | {(summary or ['(no summary)'])[0]} "
                   f"({time.perf_counter() - t:.0f} s) |"] + [r for r in new if "FAILED" in r]
        if name == "train":
            log = (logs / "gpu_check_train.log").read_text().splitlines()
            line = [x for x in log if x.startswith("[sqtorch]")][-1:]
            new = [f"| train.py trainer={trainer} trainer.deterministic=true k=8 ({steps} steps) | "
                   f"{(line or ['(no result line)'])[0]} ({time.perf_counter() - t:.0f} s) |"] + new
        print("\n".join(new), flush=True)
        rows += new
    table = "| check | result |\n|---|---|\n" + "\n".join(rows) + "\n"
    (logs / "gpu_check.md").write_text(table)


if __name__ == "__main__":
    main()
