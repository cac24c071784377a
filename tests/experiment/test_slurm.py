"""sqtorch on a real Slurm cluster (tests/helpers/slurm_cluster.py): sweeps, studies, preemption and requeue.

Every command of docs/training.md, "Running on a Slurm cluster", runs here (:data:`DOC_COMMANDS`).
A preempted or requeued run must end bit-identical to an uninterrupted one run outside Slurm:
DeepSets weights and ``eval/return``, tabular Q-table.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sqtorch.neural.checkpoint import checkpoint_step, load_checkpoint
from sqtorch.tabular.qtable import QTable
from tests.helpers.slurm_cluster import SlurmCluster

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = "examples/slurm_train.sbatch"
pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# The commands of docs/training.md, "Running on a Slurm cluster", as the tests run them.
DOC_COMMANDS = {
    "submit": "sbatch examples/slurm_train.sbatch k=4 seed=0",
    "requeue": "scontrol requeue <job id>",
    "usr1": "scancel --signal=USR1 --full <job id>",
    "cancel": "scancel <job id>",
    "resume": "sbatch examples/slurm_train.sbatch k=4 seed=0 ckpt_path=logs/runs/slurm-<job id>",
    "sweep": "python train.py -m hydra/launcher=slurm hydra.launcher.partition=debug algo=tabular k=2,3",
    "study": "python evaluate.py study=<name> hydra/launcher=slurm hydra.launcher.partition=debug",
}
DEEPSETS = ["debug=fast", "logger=none", "trainer=cpu", "k=2", "algo.max_steps=600", "algo.checkpoint_every=40",
            "eval.every=600"]
TABULAR = ["algo=tabular", "debug=fast", "logger=none", "k=3", "algo.m=4", "algo.T=200", "algo.tol=1e-12"]
LAUNCHER = ["hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A single-node Slurm cluster for this module; skipped (outside CI) where it cannot start."""
    reason = SlurmCluster.why_not()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"the Slurm tests must run in CI: {reason}")
        pytest.skip(reason)
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as c:
        c.env.update(PYTHONPATH=str(ROOT), PATH=f"{Path(sys.executable).parent}:{c.env['PATH']}")
        yield c


def doc(name: str, job: str = "", extra: tuple[str, ...] = ()) -> list[str]:
    """``DOC_COMMANDS[name]`` as argv, with its placeholders filled and extra arguments appended."""
    return [*shlex.split(DOC_COMMANDS[name].replace("<job id>", job)), *extra]


def sbatch(c: SlurmCluster, tmp: Path, name: str, args: list[str]) -> str:
    """Submit the template from the repo root (``doc(name)`` + ``args``); logs and runs go to ``tmp``."""
    argv = doc(name, extra=(*args, f"paths.log_dir={tmp}/logs"))
    argv.insert(1, f"--output={tmp}/slurm-%j.out")  # the template's own --output is relative to the repo root
    out = subprocess.run(argv, cwd=ROOT, env=c.env, capture_output=True, text=True, timeout=60, check=True).stdout
    return re.search(r"Submitted batch job (\d+)", out).group(1)


def job(c: SlurmCluster, jid: str) -> dict[str, str]:
    """``scontrol show job`` as a dict (JobState, Restarts, StartTime, ...)."""
    out = c.run("scontrol", "show", "job", "-o", jid)
    return dict(f.split("=", 1) for f in out.split() if "=" in f)


def wait_for(what: str, condition, timeout: float = 240.0, every: float = 0.3):
    """Poll ``condition()`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def steps_saved(run_dir: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*.ckpt"))


def reference(tmp: Path, args: list[str]) -> subprocess.Popen:
    """The same run outside Slurm, uninterrupted, into ``tmp/reference``."""
    tmp.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={tmp}/reference"],
                            cwd=tmp, env={**env, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def finished(ref: subprocess.Popen) -> None:
    _, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err[-3000:]


def same_deepsets(a: Path, b: Path) -> None:
    """Final weights (every tensor) and eval/return of two DeepSets run dirs are identical."""
    sa, sb = (load_checkpoint(d / "checkpoints" / "final.ckpt")["state_dict"] for d in (a, b))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), "final weights differ"
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma["eval/return"] == mb["eval/return"] and ma["train/global_step"] == mb["train/global_step"]


def log_of(tmp: Path, jid: str) -> str:
    return (tmp / f"slurm-{jid}.out").read_text(errors="replace")


def test_scontrol_requeue_resumes_and_scancel_then_resubmit_resumes_by_hand(cluster, tmp_path):
    """Preemption by ``scontrol requeue`` (SIGTERM, then requeue) and ``scancel`` + a resubmission by hand."""
    ref = reference(tmp_path, DEEPSETS)
    jid = sbatch(cluster, tmp_path, "submit", DEEPSETS)
    run_dir = tmp_path / "logs" / "runs" / f"slurm-{jid}"
    first = wait_for("a periodic checkpoint", lambda: steps_saved(run_dir))
    subprocess.run(doc("requeue", jid), env=cluster.env, check=True, timeout=60)
    wait_for("the requeued job to run again", lambda: job(cluster, jid)["Restarts"] == "1"
             and job(cluster, jid)["JobState"] == "RUNNING")
    log = wait_for("the requeued job to resume", lambda: re.search(r"resuming from (\S+) \(step (\d+)\)",
                                                                    log_of(tmp_path, jid)))
    resumed_at = int(log.group(2))
    assert resumed_at >= first[-1]  # nothing lost beyond the last checkpoint: the SIGTERM one is newer still
    assert "interrupted by SIGTERM: checkpoint" in log_of(tmp_path, jid)
    wait_for("a checkpoint after the resume", lambda: steps_saved(run_dir)[-1] > resumed_at)
    subprocess.run(doc("cancel", jid), env=cluster.env, check=True, timeout=60)
    wait_for("the cancelled job to end", lambda: job(cluster, jid)["JobState"] == "CANCELLED")
    assert job(cluster, jid)["Restarts"] == "1" and not (run_dir / "metrics.json").exists()
    last = checkpoint_step(run_dir / "checkpoints" / "last.ckpt")
    assert last >= steps_saved(run_dir)[-1]

    resume = [a.replace("<job id>", jid).replace("logs/", f"{tmp_path}/logs/", 1)
              for a in doc("resume", jid)[2:] if a.startswith("ckpt_path")]
    jid2 = sbatch(cluster, tmp_path, "submit", [*DEEPSETS, *resume])
    wait_for("the resubmitted job", lambda: job(cluster, jid2)["JobState"] == "COMPLETED")
    assert f"resuming from {run_dir}" not in log_of(tmp_path, jid2)  # ckpt_path= is explicit: Lightning restores it
    finished(ref)
    same_deepsets(tmp_path / "logs" / "runs" / f"slurm-{jid2}", tmp_path / "reference")


def test_sigusr1_checkpoints_requeues_and_resumes_even_during_start_up(cluster, tmp_path):
    """SIGUSR1 (``--signal=SIGUSR1@90``, here ``scancel --signal=USR1 --full``): twice, the first during start-up."""
    ref = reference(tmp_path, DEEPSETS)
    jid = sbatch(cluster, tmp_path, "submit", DEEPSETS)
    run_dir = tmp_path / "logs" / "runs" / f"slurm-{jid}"
    wait_for("the job's srun step", lambda: cluster.run("squeue", "-h", "-s", "-j", jid).strip(), every=0.05)
    time.sleep(1.0)  # train.py has blocked SIGUSR1 (its first lines) and is importing torch and Lightning
    subprocess.run(doc("usr1", jid), env=cluster.env, check=True, timeout=60)
    assert not (run_dir / "config.yaml").exists()  # the signal came before the run's handler was installed
    wait_for("the first requeue", lambda: job(cluster, jid)["Restarts"] == "1")
    wait_for("a checkpoint of the second attempt", lambda: len(steps_saved(run_dir)) >= 2)
    subprocess.run(doc("usr1", jid), env=cluster.env, check=True, timeout=60)
    wait_for("the second requeue", lambda: job(cluster, jid)["Restarts"] == "2")
    wait_for("the job to complete", lambda: job(cluster, jid)["JobState"] == "COMPLETED")
    log = log_of(tmp_path, jid)
    assert log.count("interrupted by SIGUSR1") == 2 and log.count("requeued Slurm job") == 2, log[-3000:]
    assert len(re.findall(r"resuming from \S+ \(step (\d+)\)", log)) == 2
    assert not list(run_dir.rglob("hpc_ckpt_*")) and "srun` command is available" not in log
    finished(ref)
    same_deepsets(run_dir, tmp_path / "reference")


def test_tabular_job_requeued_reruns_to_the_same_qtable(cluster, tmp_path):
    ref = reference(tmp_path, TABULAR)
    jid = sbatch(cluster, tmp_path, "submit", TABULAR)
    run_dir = tmp_path / "logs" / "runs" / f"slurm-{jid}"
    wait_for("the run dir", lambda: (run_dir / "config.yaml").exists(), every=0.05)
    subprocess.run(doc("requeue", jid), env=cluster.env, check=True, timeout=60)
    wait_for("the job to complete after its requeue", lambda: job(cluster, jid)["JobState"] == "COMPLETED"
             and job(cluster, jid)["Restarts"] == "1")
    finished(ref)
    assert torch.equal(QTable.load(run_dir / "qtable.pt").q, QTable.load(tmp_path / "reference" / "qtable.pt").q)


def test_sweep_jobs_in_own_dirs_parallelism_respected_failure_named_no_sacct_noise(cluster, tmp_path):
    sweep = tmp_path / "sweep"
    argv = doc("sweep", extra=("debug=fast", "logger=none", *LAUNCHER, "hydra.launcher.array_parallelism=1",
                               f"hydra.sweep.dir={sweep}"))
    argv[argv.index("k=2,3")] = "k=2,3,11"  # k = 11 > n = 10: that job fails
    argv[0] = sys.executable
    proc = subprocess.run(argv, cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    failed = r"1 of 3 Slurm jobs failed:\n#2 algo=tabular k=11 [^\n]*\(Slurm job \d+_2\): ConfigError: k = 11 is out"
    assert re.search(failed, out), out[-3000:]
    assert out.count("sacct") <= 1 and "Traceback" not in out, out[-3000:]
    for num, k in enumerate((2, 3)):
        d = sweep / f"{num}_algo=tabular,k={k}"
        assert (d / "metrics.json").is_file() and (d / "qtable.pt").is_file()
        assert f"k: {k}" in (d / "config.yaml").read_text()
    assert not list(sweep.glob("2_*"))  # the failed job left no dir
    array = re.search(r"Slurm job (\d+)_2", out).group(1)
    times = sorted((job(cluster, f"{array}_{i}")["StartTime"], job(cluster, f"{array}_{i}")["EndTime"])
                   for i in range(3))
    assert all(times[i][1] <= times[i + 1][0] for i in range(2)), times  # one at a time (array_parallelism=1)


def test_sweep_jobs_preempted_both_ways_resume_in_their_own_dirs(cluster, tmp_path):
    """A DeepSets sweep on the launcher: job 0 gets SIGUSR1 (``scancel --full``), job 1 ``scontrol requeue``."""
    sweep = tmp_path / "sweep"
    argv = [sys.executable, "train.py", "-m", "hydra/launcher=slurm", "hydra.launcher.partition=debug", *LAUNCHER,
            *DEEPSETS, "seed=0,1", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen(argv, cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    refs = [reference(tmp_path / f"ref{seed}", [*DEEPSETS, f"seed={seed}"]) for seed in (0, 1)]
    both = lambda: all(list(sweep.glob(f"{n}_*/checkpoints/step-*.ckpt")) for n in (0, 1))  # noqa: E731
    wait_for("a checkpoint of both jobs", both)
    array = cluster.run("squeue", "-h", "-o", "%i").split()[0].split("_")[0]
    subprocess.run(doc("usr1", f"{array}_0"), env=cluster.env, check=True, timeout=60)
    subprocess.run(doc("requeue", f"{array}_1"), env=cluster.env, check=True, timeout=60)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    for n in (0, 1):
        job_dir = next(sweep.glob(f"{n}_*"))
        assert job(cluster, f"{array}_{n}")["Restarts"] == "1"
        assert re.search(r"resuming from \S+ \(step \d+\)", (job_dir / "train.log").read_text())
        finished(refs[n])
        same_deepsets(job_dir, tmp_path / f"ref{n}" / "reference")


def test_study_trains_its_sweeps_as_slurm_jobs_then_evaluates(cluster, tmp_path):
    conf = tmp_path / "conf" / "study"
    conf.mkdir(parents=True)
    (conf / "tiny.yaml").write_text(
        "name: tiny\ntitle: tiny study on Slurm\nenv: queue\nsweeps:\n"
        "  tabular: [algo=tabular, debug=fast, logger=none, 'k=2,3']\n")
    out = tmp_path / "eval"
    argv = doc("study", extra=(*LAUNCHER, f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "eval.num_initial=4",
                               "eval.rollouts=4", f"hydra.run.dir={out}"))
    argv[0] = sys.executable
    argv[argv.index("study=<name>")] = "study=tiny"
    proc = subprocess.run(argv, cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    rows = (out / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 3, rows  # header + k = 2, 3
    assert len(list((out / "train" / "tabular" / ".submitit").iterdir())) >= 1  # trained as Slurm jobs


def test_docs_section_lists_exactly_the_commands_and_template_tested_here():
    text = (ROOT / "docs" / "training.md").read_text()
    section = text.split("## Running on a Slurm cluster", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert (ROOT / TEMPLATE).read_text() == blocks[0], "the template in the docs differs from examples/"
    commands = [line.split("  #")[0].strip() for line in blocks[1].splitlines() if line.strip()]
    assert commands == list(DOC_COMMANDS.values())


@pytest.mark.parametrize(("script", "expect"), [
    ('kill -TERM $$; echo "$@" > "$FAKE_OUT"', "requeued Slurm job 42"),  # the SIGTERM the requeue sends the job
    ('echo "scontrol: error: Job is not requeueable" >&2; exit 1', "Slurm job 42 was NOT requeued (scontrol: error:"),
])
def test_sigusr1_requeue_survives_its_own_sigterm_and_reports_a_refusal(tmp_path, monkeypatch, script, expect):
    """``requeue_on_signal`` with a stand-in ``scontrol`` on PATH (the cluster tests run the real one)."""
    from sqtorch.experiment import slurm
    from sqtorch.runtime import Interrupted

    fake = tmp_path / "scontrol"
    fake.write_text(f"#!/bin/sh\n{script}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_OUT", str(tmp_path / "called"))
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.setattr(slurm.time, "sleep", lambda s: None)
    with pytest.raises(Interrupted) as e, slurm.requeue_on_signal():
        raise Interrupted(signal.SIGUSR1, "checkpoint X")
    assert e.value.signum == signal.SIGUSR1 and str(e.value).startswith("interrupted by SIGUSR1: checkpoint X; ")
    assert expect in str(e.value), str(e.value)
    if "kill" in script:
        assert (tmp_path / "called").read_text().split() == ["requeue", "42"]
    with pytest.raises(Interrupted) as e, slurm.requeue_on_signal():  # SIGTERM: Slurm decides, no requeue here
        raise Interrupted(signal.SIGTERM, "checkpoint X")
    assert str(e.value) == "interrupted by SIGTERM: checkpoint X"
