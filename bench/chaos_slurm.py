"""Chaos on a real Slurm cluster: preempt seeded jobs at random instants, check every result.

    python bench/chaos_slurm.py --jobs 20 --seed 0      # as root; prints a markdown table (bench/RESULTS.md)

Starts a single-node cluster (tests/helpers/slurm_cluster.py) and submits DeepSets (queue, k = 2, 600 steps,
a checkpoint every 40) and tabular (demand response, k = 5, m = 10) jobs with ``examples/slurm_train.sbatch``,
at most two running at once. Each job is preempted once or twice, each time at a random instant of
its attempt (uniform over [1 s, 95%] of an uninterrupted job's wall time on the same cluster,
counted from the start of its ``srun`` step), in one of three ways:

- ``requeue``: ``scontrol requeue`` (SIGTERM, then back to the queue; the job resumes itself);
- ``usr1``: ``scancel --signal=USR1 --full`` (what ``--signal=SIGUSR1@90`` sends: the run
  checkpoints, requeues its job and exits);
- ``cancel``: ``scancel`` (SIGTERM), then a new job by hand, with ``ckpt_path=<old run dir>``.

After every preemption every artifact of the run dir must load (a torn file is counted). A
DeepSets attempt must resume from a step at least as high as the newest periodic checkpoint
present when the signal was sent (no work lost beyond the checkpoint interval). The completed job
must equal an uninterrupted run outside Slurm bit for bit (DeepSets: every tensor of the final
weights and ``eval/return``; tabular: the Q-table). Jobs run until ``--jobs`` jobs were preempted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqtorch.neural.checkpoint import checkpoint_step, latest_checkpoint, load_checkpoint  # noqa: E402
from sqtorch.tabular.qtable import QTable  # noqa: E402
from tests.helpers.slurm_cluster import SlurmCluster  # noqa: E402

ALGOS = {
    "deepsets": ["debug=fast", "logger=none", "trainer=cpu", "k=2", "algo.max_steps=600", "algo.checkpoint_every=40",
                 "eval.every=600"],
    "tabular": ["algo=tabular", "debug=fast", "logger=none", "env=demand_response", "k=5", "algo.m=10", "algo.T=300",
                "algo.tol=1e-10"],
}
ACTIONS = ("requeue", "usr1", "cancel")
TEMPLATE = ROOT / "examples" / "slurm_train.sbatch"


class Chaos:
    def __init__(self, cluster: SlurmCluster, out: Path, duration: dict[str, float]) -> None:
        self.c, self.out, self.duration = cluster, out, duration
        self.lock = threading.Lock()

    def submit(self, algo: str, extra: list[str] = ()) -> str:
        cmd = ["sbatch", f"--output={self.out}/slurm-%j.out", str(TEMPLATE), *ALGOS[algo], *extra,
               f"paths.log_dir={self.out}/logs"]
        return re.search(r"(\d+)", self.c.run(*cmd, timeout=60)).group(1)

    def job(self, jid: str) -> dict[str, str]:
        return dict(f.split("=", 1) for f in self.c.run("scontrol", "show", "job", "-o", jid).split() if "=" in f)

    def wait(self, what, cond, timeout: float = 900.0, every: float = 0.5):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = cond()
            if value:
                return value
            time.sleep(every)
        raise TimeoutError(what)

    def step_running(self, jid: str) -> bool:
        return bool(self.c.run("squeue", "-h", "-s", "-j", jid, check=False).strip())

    def trial(self, num: int, algo: str, rng: random.Random) -> dict:
        """One job: submit, preempt 1-2 times at random instants, let it finish, compare."""
        jid = self.submit(algo)
        jobs, events, lost, torn = [jid], [], [], []
        resume_dir = None  # the newest run dir of this job's lineage that holds checkpoints
        preempts = rng.choice((1, 2))
        while len(events) < preempts:
            # the current attempt: wait for its srun step, then preempt at a random instant (or let it finish)
            state = self.wait("step", lambda j=jid: self.attempt(j), every=0.1)
            t0 = time.monotonic()
            if state != "RUNNING":
                break
            run_dir = self.out / "logs" / "runs" / f"slurm-{jid}"
            at, action = rng.uniform(1.0, 0.95 * self.duration[algo]), rng.choice(ACTIONS)
            while time.monotonic() - t0 < at and self.job(jid)["JobState"] == "RUNNING":
                time.sleep(0.1)
            if self.job(jid)["JobState"] != "RUNNING":
                break  # it finished first
            before = max(self.periodic(run_dir), default=0)
            restarts = int(self.job(jid)["Restarts"])
            cmd = {"requeue": ["scontrol", "requeue", jid], "usr1": ["scancel", "--signal=USR1", "--full", jid],
                   "cancel": ["scancel", jid]}[action]
            events.append(f"{action}@{time.monotonic() - t0:.1f}s")
            self.c.run(*cmd, check=False)  # scontrol requeue fails on a job that is ending: then it completes
            if action == "cancel":
                self.wait("cancelled", lambda j=jid: self.job(j)["JobState"] == "CANCELLED")
            else:  # requeued: pending until its credential expires, then it runs again
                state = self.wait("requeued", lambda j=jid, n=restarts: self.requeued(j, n))
                if state != "PENDING":  # signalled after the run's last check (or while ending): it ended
                    events[-1] += f" ({state.lower()})"
                    break
            torn += self.torn(run_dir)
            if algo == "deepsets" and list(run_dir.glob("checkpoints/*.ckpt")):
                resume_dir = run_dir
            if resume_dir is not None:  # the step the next attempt resumes from (the same newest checkpoint)
                lost.append((before, checkpoint_step(latest_checkpoint(resume_dir))))
            if action == "cancel":  # a new job by hand: DeepSets from the newest checkpoint, tabular from the start
                jid = self.submit(algo, [f"ckpt_path={resume_dir}"] if resume_dir is not None else [])
                jobs.append(jid)
        self.wait("completed", lambda: self.job(jid)["JobState"] in ("COMPLETED", "FAILED", "CANCELLED"))
        run_dir = self.out / "logs" / "runs" / f"slurm-{jid}"
        state = self.job(jid)["JobState"]
        torn += self.torn(run_dir)
        same = state == "COMPLETED" and (run_dir / "metrics.json").is_file() and self.same(algo, run_dir)
        return dict(num=num, algo=algo, jobs=jobs, events=events, lost=lost, torn=torn, same=same, state=state)

    def uninterrupted(self, algo: str) -> tuple[float, bool]:
        """Seconds from an uninterrupted job's srun step to its end, and whether it equals the reference."""
        jid = self.submit(algo)
        self.wait("step", lambda: self.attempt(jid), every=0.1)
        t0 = time.monotonic()
        self.wait("completed", lambda: self.job(jid)["JobState"] in ("COMPLETED", "FAILED", "CANCELLED"), every=0.2)
        return time.monotonic() - t0, self.same(algo, self.out / "logs" / "runs" / f"slurm-{jid}")

    def requeued(self, jid: str, restarts: int) -> str | None:
        """PENDING once the job was requeued, COMPLETED or FAILED if it ended instead; else None."""
        info = self.job(jid)
        if info["JobState"] in ("COMPLETED", "FAILED") or (int(info["Restarts"]) > restarts
                                                           and info["JobState"] == "PENDING"):
            return info["JobState"]
        return None

    def attempt(self, jid: str) -> str | None:
        """The job's state once it has ended, or RUNNING once its srun step runs; else None."""
        state = self.job(jid)["JobState"]
        if state in ("COMPLETED", "FAILED", "CANCELLED") or (state == "RUNNING" and self.step_running(jid)):
            return state
        return None

    @staticmethod
    def periodic(run_dir: Path) -> list[int]:
        return [int(p.stem.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*.ckpt")]

    @staticmethod
    def torn(run_dir: Path) -> list[str]:
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

    def same(self, algo: str, run_dir: Path) -> bool:
        return _same(result_of(algo, run_dir), self.reference[algo])


def result_of(algo: str, run_dir: Path) -> dict[str, torch.Tensor]:
    if algo == "tabular":
        return {"q": QTable.load(run_dir / "qtable.pt").q}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    state = load_checkpoint(run_dir / "checkpoints" / "final.ckpt")["state_dict"]
    return {**state, "eval/return": torch.tensor(metrics["eval/return"])}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20, help="run jobs until this many were preempted")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="default: a new temporary directory")
    args = parser.parse_args()
    reason = SlurmCluster.why_not()
    if reason:
        sys.exit(f"chaos_slurm.py: {reason}")
    out = args.out or Path(tempfile.mkdtemp(prefix="sqtorch-chaos-slurm-"))
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    rng = random.Random(args.seed)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PYTHONPATH=str(ROOT))
    reference, duration = {}, {}
    for algo, overrides in ALGOS.items():  # uninterrupted, outside Slurm
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={out}/reference_{algo}"],
                       cwd=out, env=env, check=True, capture_output=True)
        duration[algo] = time.perf_counter() - t0
        reference[algo] = result_of(algo, out / f"reference_{algo}")
        print(f"reference {algo}: {duration[algo]:.1f} s", flush=True)
    with SlurmCluster(out / "cluster") as cluster:
        cluster.env.update(PYTHONPATH=str(ROOT), PATH=f"{Path(sys.executable).parent}:{cluster.env['PATH']}")
        signal.signal(signal.SIGTERM, lambda *_: (cluster.stop(), os._exit(143)))
        chaos = Chaos(cluster, out, {})
        chaos.reference = reference
        with ThreadPoolExecutor(max_workers=2) as pool:  # uninterrupted jobs: their wall times set the instants
            timed = dict(zip(ALGOS, pool.map(chaos.uninterrupted, ALGOS), strict=True))
        chaos.duration = {algo: seconds for algo, (seconds, _) in timed.items()}
        for algo, (seconds, same) in timed.items():
            print(f"uninterrupted {algo} job on Slurm: {seconds:.1f} s from its srun step to its end, "
                  f"{'identical' if same else 'DIFFERENT'} to the run outside Slurm", flush=True)
        results: list[dict] = []
        with ThreadPoolExecutor(max_workers=3) as pool:  # two jobs run at once on 2 CPUs, one waits in the queue
            while sum(bool(r["events"]) for r in results) < args.jobs:
                missing = args.jobs - sum(bool(r["events"]) for r in results)
                plans = [(len(results) + i, rng.choice(sorted(ALGOS)), random.Random(rng.getrandbits(64)))
                         for i in range(missing)]
                for r in pool.map(lambda plan: chaos.trial(*plan), plans):
                    results.append(r)
                    print(row(r), flush=True)
    wall = time.perf_counter() - t_start
    preempted = [r for r in results if r["events"]]
    kinds = {a: sum(e.startswith(a) for r in results for e in r["events"]) for a in ACTIONS}
    violations = sum(resumed < before for r in results for before, resumed in r["lost"])
    print(f"\nseed {args.seed}: {len(results)} jobs, {len(preempted)} preempted, "
          f"{sum(kinds.values())} preemptions ({', '.join(f'{k} {v}' for k, v in kinds.items())}), "
          f"torn files {sum(len(r['torn']) for r in results)}, mismatches {sum(not r['same'] for r in results)}, "
          f"resumed before the last periodic checkpoint {violations}; wall {wall:.0f} s; "
          f"outside Slurm: {', '.join(f'{a} {d:.1f} s' for a, d in duration.items())}; uninterrupted jobs: "
          f"{', '.join(f'{a} {d:.1f} s' for a, d in chaos.duration.items())}\n")
    print("| job | algo | Slurm jobs | preemptions (action@seconds into the attempt) | resumed at step "
          "(newest periodic checkpoint when signalled) | torn | result vs uninterrupted |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(row(r) for r in sorted(results, key=lambda r: r["num"])))


def row(r: dict) -> str:
    lost = ", ".join(f"{resumed} ({before})" for before, resumed in r["lost"]) or "-"
    return (f"| {r['num']} | {r['algo']} | {'+'.join(r['jobs'])} | {', '.join(r['events']) or 'finished first'} | "
            f"{lost} | {len(r['torn'])} | {'identical' if r['same'] else 'DIFFERENT (' + r['state'] + ')'} |")


if __name__ == "__main__":
    main()
