"""Chaos test of the run lifecycle: kill training runs at seeded random instants, resume, compare.

    python bench/chaos.py --kills 24 --seed 0          # prints a markdown table (bench/RESULTS.md)

Trials run until ``--kills`` kills have happened. In each, a DeepSets run (queue, k = 3, 1500
steps) or a tabular run (demand response, k = 5, m = 20) is started in its own directory and
killed (SIGKILL or SIGTERM, chosen at random) at a random instant of its expected duration, up
to ``--max-kills`` times, then resumed the way a user would (DeepSets: ``ckpt_path=<run dir>`` in
the same directory; tabular: the same command again) until it completes. After every kill every
artifact in the directory must load (checkpoints with ``weights_only``, ``qtable.pt``,
``metrics.json``, ``config.yaml``): a torn file is counted. The completed run must equal an
uninterrupted run of the same config bit for bit (DeepSets: every tensor of the final weights and
``eval/return``; tabular: the Q-table). Finally ``evaluate.py`` runs over all directories.
Periodic checkpoints every 10 steps put many kills inside a save.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqtorch.neural.checkpoint import load_checkpoint  # noqa: E402
from sqtorch.tabular.qtable import QTable  # noqa: E402

COMMON = ["env=queue", "k=3", "threads=1", "logger=none", "trainer=cpu", "trainer.enable_progress_bar=false",
          "eval.num_initial=4", "eval.rollouts=4", "eval.horizon=30", "eval.reference=none"]
ALGOS = {
    "deepsets": ["algo=deepsets", "algo.max_steps=1500", "algo.checkpoint_every=10", "eval.every=500",
                 "algo.batch_size=64", "algo.net.hidden=32"],
    "tabular": ["algo=tabular", "env=demand_response", "algo.m=20", "algo.T=300", "algo.tol=1e-10", "k=5"],
}
SIGNALS = (signal.SIGKILL, signal.SIGTERM)


def train(args: list[str], run_dir: Path, kill_after: float | None, sig: int) -> tuple[int, float]:
    """Run train.py into ``run_dir``; send ``sig`` after ``kill_after`` seconds. Returns (status, seconds)."""
    cmd = [sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={run_dir}"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=run_dir.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=600)
    if proc.returncode not in (0, -signal.SIGKILL, -signal.SIGTERM, 128 + signal.SIGTERM):  # -15: before set-up
        raise RuntimeError(f"unexpected exit {proc.returncode} of {' '.join(cmd)}:\n{err[-3000:]}")
    return proc.returncode, time.perf_counter() - t0


def torn_files(run_dir: Path) -> list[str]:
    """Artifacts of ``run_dir`` that do not load (a torn file is any of them)."""
    bad = []
    checks = [(p, load_checkpoint) for p in run_dir.glob("checkpoints/*.ckpt")]
    checks += [(p, QTable.load) for p in run_dir.glob("qtable.pt")]
    checks += [(p, lambda q: json.loads(q.read_text())) for p in run_dir.glob("metrics.json")]
    checks += [(p, OmegaConf.load) for p in run_dir.glob("config.yaml")]
    for path, load in checks:
        try:
            load(path)
        except Exception as e:  # noqa: BLE001 - any failure to load is a torn artifact
            bad.append(f"{path.name}: {type(e).__name__}")
    return bad


def result_of(algo: str, run_dir: Path) -> dict[str, torch.Tensor]:
    """What must be identical to the uninterrupted run."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if algo == "tabular":
        return {"q": QTable.load(run_dir / "qtable.pt").q}
    state = load_checkpoint(run_dir / "checkpoints" / "final.ckpt")["state_dict"]
    return {**state, "eval/return": torch.tensor(metrics["eval/return"])}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=24, help="run trials until this many kills happened")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-kills", type=int, default=2, help="kills per trial before it may finish")
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "chaos")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    out = args.out / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True)
    reference, duration = {}, {}
    for algo, overrides in ALGOS.items():
        run_dir = out / f"reference_{algo}"
        _, duration[algo] = train([*COMMON, *overrides], run_dir, None, 0)
        reference[algo] = result_of(algo, run_dir)
        print(f"reference {algo}: {duration[algo]:.1f} s", flush=True)
    rows, stats = [], dict(kills=0, sigkill=0, sigterm=0, resumes=0, torn=0, mismatches=0, stray_tmp=0)
    trial = -1
    while stats["kills"] < args.kills and trial < 3 * args.kills:
        trial += 1
        algo = rng.choice(sorted(ALGOS))
        run_dir = out / f"trial{trial:02d}_{algo}"
        overrides = [*COMMON, *ALGOS[algo]]
        kills, events = 0, []
        while True:
            resume = algo == "deepsets" and list(run_dir.glob("checkpoints/*.ckpt"))
            cmd = [*overrides, f"ckpt_path={run_dir}"] if resume else overrides
            stats["resumes"] += kills > 0
            if kills < args.max_kills:
                sig = rng.choice(SIGNALS)
                at = rng.uniform(0.3, 0.95) * duration[algo]  # start-up is the first ~4 s
                status, _ = train(cmd, run_dir, at, sig)
            else:
                status, _ = train(cmd, run_dir, None, 0)
            if status == 0:
                break
            kills += 1
            stats["kills"] += 1
            stats["sigkill" if status == -signal.SIGKILL else "sigterm"] += 1
            events.append(f"{signal.Signals(-status if status < 0 else status - 128).name}@{at:.1f}s"
                          + (" (exit 143)" if status == 128 + signal.SIGTERM else ""))
            torn = torn_files(run_dir)
            stats["torn"] += len(torn)
            events += [f"TORN {t}" for t in torn]
        stats["stray_tmp"] += len(list(run_dir.rglob(".*.tmp")))
        ok = same(result_of(algo, run_dir), reference[algo])
        stats["mismatches"] += not ok
        rows.append(f"| {trial} | {algo} | {', '.join(events) or 'finished before the kill'} | "
                    f"{'identical' if ok else 'DIFFERENT'} |")
        print(rows[-1], flush=True)
    dirs = [str(d) for d in sorted(out.iterdir()) if d.is_dir()]
    ev = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), f"runs=[{','.join(dirs)}]", "eval.num_initial=4",
                         "eval.rollouts=4", f"hydra.run.dir={out / 'evaluate'}"], cwd=out, capture_output=True,
                        text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    print(f"\nseed {args.seed}, {trial + 1} trials, references: " + ", ".join(
        f"{a} {d:.1f} s" for a, d in duration.items()) + "\n")
    print("| trial | algo | kills (signal@seconds after start) | final result vs uninterrupted |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    print("\n| kills | SIGKILL | SIGTERM | resumes | torn files | mismatches | stray temp files | evaluate.py |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {stats['kills']} | {stats['sigkill']} | {stats['sigterm']} | {stats['resumes']} | {stats['torn']} | "
          f"{stats['mismatches']} | {stats['stray_tmp']} | exit {ev.returncode} |")
    if ev.returncode != 0:
        print(ev.stderr[-2000:])


if __name__ == "__main__":
    main()
