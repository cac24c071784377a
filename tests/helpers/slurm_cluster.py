"""A real single-node Slurm cluster for tests and benches, from the distribution's packages.

``SlurmCluster(root).start()`` writes a minimal ``slurm.conf`` into ``root`` and starts its own
``munged``, ``slurmctld`` and ``slurmd`` (as root; free ports, its own MUNGE key and socket, so it
never meets another cluster on the machine): one node with the machine's CPUs and memory,
partition ``debug``, ``ProctrackType=proctrack/linuxproc``, ``TaskPlugin=task/none``, no
accounting. Clients find it through ``SLURM_CONF`` (:attr:`SlurmCluster.env`). ``stop()`` cancels
every job and ends the daemons it started. ``why_not()`` says why no cluster can start here.

Two settings keep requeues quick: ``cred_expire=10`` (a requeued job waits for its job
credential to expire before it starts again, 120 s by default) and a 2 s scheduling interval.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun")
START_TIMEOUT_S = 60.0
TEMPLATE = """\
ClusterName=sqtorch
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket,cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
MpiDefault=none
ReturnToService=2
KillWait=30
MinJobAge=3600
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_memory_mb() -> int:
    """The node's memory as ``slurmd -C`` reports it, less 5% (a node with less than configured is drained)."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30).stdout
    for field in out.split():
        if field.startswith("RealMemory="):
            return max(1, int(int(field.split("=")[1]) * 0.95))
    return 1024


def _unblocked() -> None:  # daemons start with no signal blocked, whatever the caller blocks
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


class SlurmCluster:
    """One ``munged`` + ``slurmctld`` + ``slurmd`` under ``root``; a context manager."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: dict[str, subprocess.Popen] = {}

    @staticmethod
    def why_not() -> str | None:
        """``None`` if a cluster can start here, else the reason (not root, a missing program)."""
        if os.geteuid() != 0:
            return "starting slurmctld/slurmd/munged needs root"
        missing = [p for p in (*DAEMONS, *CLIENTS) if shutil.which(p) is None]
        if missing:
            return (f"Slurm is not installed (missing {', '.join(missing)}); "
                    "apt-get install slurmctld slurmd slurm-client munge")
        return None

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        """A Slurm client command against this cluster; its stdout."""
        proc = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout

    def _spawn(self, name: str, *args: str) -> None:
        log = open(self.root / f"{name}.out", "wb")  # noqa: SIM115 - the daemon owns it until stop()
        self.procs[name] = subprocess.Popen([name, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, preexec_fn=_unblocked)

    def start(self) -> SlurmCluster:
        reason = self.why_not()
        if reason:
            raise RuntimeError(reason)
        for d in ("state", "spool"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        key = self.root / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        self.conf.write_text(TEMPLATE.format(host=self.host, root=self.root, ctld_port=_free_port(),
                                             slurmd_port=_free_port(), cpus=os.cpu_count() or 1,
                                             memory_mb=_node_memory_mb()))
        r = self.root
        self._spawn("munged", "-F", "--force", f"--socket={r}/munge.socket", f"--key-file={key}",
                    f"--pid-file={r}/munged.pid", f"--log-file={r}/munged.log", f"--seed-file={r}/munged.seed")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (r / "munge.socket").exists():
            self._check_alive(deadline)
            time.sleep(0.1)
        self._spawn("slurmctld", "-D", "-i", "-f", str(self.conf))
        self._spawn("slurmd", "-D", "-f", str(self.conf), "-N", self.host)
        while True:
            self._check_alive(deadline)
            state = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True,
                                   text=True, timeout=30).stdout.strip()
            if state == "idle":
                return self
            time.sleep(0.3)

    def _check_alive(self, deadline: float) -> None:
        dead = [n for n, p in self.procs.items() if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                             for p in sorted(self.root.glob("*.log")) + sorted(self.root.glob("*.out")))
            self.stop()
            what = f"{', '.join(dead)} exited" if dead else f"node not idle after {START_TIMEOUT_S:.0f} s"
            raise RuntimeError(f"Slurm cluster in {self.root} did not start: {what}\n{logs}")

    def stop(self) -> None:
        """Cancel every job, wait for them to end, stop the daemons."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--full", "--user", os.environ.get("USER", "root"), check=False)
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline and self.run("squeue", "-h", check=False).strip():
                time.sleep(0.5)
        for name in reversed(list(self.procs)):
            p = self.procs.pop(name)
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
