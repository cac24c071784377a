"""Benchmark: DeepSets SUBSAMPLE-Q training throughput vs k (docs/model.md §3).

    python bench/neural.py                       # k = 4, 16, 64 on queue and demand_response
    python bench/neural.py --quick               # fewer steps
    python bench/neural.py   # prints the table; --out FILE also writes it
    python bench/neural.py --baseline 6998883    # old vs new in one run (queue, k = 4, 1 thread)

For each k it reports, on the device it ran on (CUDA when available, else CPU):

* raw step: sample a batch from the generative model (``visited`` pool of n-agent systems
  advanced one step with the greedy policy, k-subsets, m successors per item) + TD target + loss
  + backward + Adam, timed outside Lightning;
* Lightning step: the same through ``Trainer.fit`` (logging every 10 steps, no validation,
  no checkpoints), wall time / steps after a warm-up fit;
* items/s = batch_size / step time (one item = one (s_g, s_Delta, a_g) with its m successors),
  transitions/s = items/s * m.

``--baseline REV`` compares this tree with git revision ``REV`` (materialised with ``git archive``
into a temporary directory; nothing in the repository changes). Every measurement runs in its
own subprocess with the chosen tree first on ``sys.path``, alternating old / new (the order flips
every repeat), with the same settings (``--threads``, default 1; queue, k = 4, n = 64, m = 8, the
``visited`` state distribution): Lightning steps/s at ``--batch-size`` (256) and items/s at
``--big-batch`` (4096), each timed inside one ``Trainer.fit`` after ``--warmup`` steps, and the
training wall (``train/wall_seconds``: ``Trainer.fit`` with its validations and checkpoints) of
the main job ``python train.py threads=1 algo.max_steps=--main-steps`` run in the tree's own
directory (without its progress bar; ``--main-bar`` adds a row with the bar on, as a user runs it,
its output discarded; ``--main-split`` adds rows that run it inside the measuring process and split
its wall into the validations and the rest). It prints one table of medians over ``--repeats`` with
new/old ratios, for the steps also in CPU time per step (``time.process_time``: less sensitive to
other processes on the cores).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

ROOT = Path(__file__).resolve().parents[1]
if "--child" not in sys.argv:  # a child puts its own tree first (see child_main)
    sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from sqtorch.neural.module import SubsampleQModule

ENVS = {"queue": {"_target_": "sqtorch.envs.queue"}, "demand_response": {"_target_": "sqtorch.envs.demand_response"}}


def make_module(env: str, n: int, k: int, args: argparse.Namespace, max_steps: int) -> SubsampleQModule:
    from sqtorch.neural.module import SubsampleQModule

    return SubsampleQModule(
        ENVS[env],
        n=n,
        k=k,
        algo={
            "m": args.m,
            "batch_size": args.batch_size,
            "max_steps": max_steps,
            "net": {"hidden": args.hidden},
            "data": {"state_dist": "visited", "pool_size": 256},
        },
        eval={"reference": "none"},
    )


def sourced_module(env: str, n: int, k: int, args: argparse.Namespace, max_steps: int,
                   device: torch.device) -> SubsampleQModule:
    """:func:`make_module` on ``device`` with its ``visited`` sampler (seed 0), ready for ``td_loss``
    outside a Trainer."""
    from sqtorch.neural.data import DataConfig, GenerativeSource

    module = make_module(env, n, k, args, max_steps).to(device)
    module.source = GenerativeSource(module.env.to(device), n, k, args.m, DataConfig("visited"), seed=0)
    return module


def raw_step_ms(env: str, n: int, k: int, args: argparse.Namespace, device: torch.device) -> float:
    """ms per optimizer step without Lightning: the module's ``td_loss`` and its update (fused Adam,
    norm clipping at 10), target syncs every ``algo.target_sync`` steps as under the Trainer."""
    from sqtorch.neural.module import clip_grad_norm

    module = sourced_module(env, n, k, args, args.steps, device)
    params = module._params
    opt = torch.optim.Adam(params, lr=1e-3, fused=True)
    count = [0]

    def update_target() -> bool:  # without a Trainer global_step stays 0: count the steps here
        count[0] += 1
        if count[0] % module.algo.target_sync:
            return False
        module.target_net.load_state_dict(module.net.state_dict())
        return True

    module.update_target = update_target  # type: ignore[method-assign]

    def step() -> None:
        loss = module.td_loss()[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_grad_norm(params, 10.0)
        opt.step()

    for _ in range(5):
        step()
    best = float("inf")
    for _ in range(args.repeats):  # best of repeats: the machine may be shared
        sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync(device)
        best = min(best, (time.perf_counter() - t0) / args.steps * 1e3)
    return best


def lightning_step_ms(env: str, n: int, k: int, args: argparse.Namespace, device: torch.device) -> float:
    """ms per optimizer step through ``Trainer.fit`` (second fit, after a warm-up fit)."""
    import lightning.pytorch as pl

    times = []
    for steps in (10,) + (args.steps,) * args.repeats:
        module = make_module(env, n, k, args, steps)
        trainer = pl.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=1,
            max_steps=steps,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            log_every_n_steps=10,
        )
        t0 = time.perf_counter()
        trainer.fit(module)
        sync(device)
        times.append((time.perf_counter() - t0) / steps * 1e3)
    return min(times[1:])


# ---- old vs new (--baseline) ---------------------------------------------------------------------
def child_main(argv: list[str]) -> None:
    """``--child TREE KIND ...``: one measurement with ``TREE``'s sqtorch; prints one JSON line."""
    tree, kind = Path(argv[0]), argv[1]
    opts = json.loads(argv[2])
    torch.set_num_threads(opts["threads"])
    if kind == "split":  # the main job in this process, its validations timed apart
        print(json.dumps(main_job_split(tree, opts)))
        return
    if kind == "main":  # the main job, run as a user would, in the tree's own directory
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, *main_job_argv(opts, out)]
            subprocess.run(cmd, cwd=tree, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            metrics = json.loads((Path(out) / "metrics.json").read_text())
        print(json.dumps({"wall": metrics["train/wall_seconds"], "return": metrics.get("eval/return")}))
        return
    sys.path.insert(0, str(tree))
    from sqtorch.neural.module import SubsampleQModule

    batch = opts["batch"]
    dt, cpu = fit_step_seconds(SubsampleQModule, batch, opts["warmup"], opts["steps"], torch.device("cpu"))
    print(json.dumps({"ms": dt * 1e3, "items_per_s": batch / dt, "cpu_ms": cpu * 1e3}))


def fit_step_seconds(module_class: type, batch: int, warm: int, steps: int,
                     device: torch.device) -> tuple[float, float]:
    """Wall and CPU seconds per optimizer step of ``Trainer.fit`` over the ``steps`` steps after ``warm``.

    The module is ``module_class`` in the ``--baseline`` setting (queue, n = 64, k = 4, m = 8, ``visited``,
    batch ``batch``); the Trainer has no logger, checkpoints, bar or validation, logs every 10 steps and
    is deterministic. A module with automatic optimization (an old tree's) clips through the Trainer.
    """
    import lightning.pytorch as pl

    class Clock(pl.Callback):
        def __init__(self) -> None:
            self.t: dict[int, float] = {}
            self.cpu: dict[int, float] = {}

        def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
            sync(device)
            self.t[trainer.global_step] = time.perf_counter()
            self.cpu[trainer.global_step] = time.process_time()

    module = module_class(
        {"_target_": "sqtorch.envs.queue"}, n=64, k=4,
        algo={"m": 8, "batch_size": batch, "max_steps": warm + steps, "data": {"state_dist": "visited"}},
        eval={"reference": "none"},
    )
    # the old module clips through the Trainer (automatic optimization), the new one itself
    clip = {"gradient_clip_val": 10.0} if module.automatic_optimization else {}
    clock = Clock()
    trainer = pl.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_steps=warm + steps,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, log_every_n_steps=10, deterministic=True,
                         callbacks=[clock], **clip)
    trainer.fit(module)
    return ((clock.t[warm + steps] - clock.t[warm]) / steps, (clock.cpu[warm + steps] - clock.cpu[warm]) / steps)


def main_job_argv(opts: dict, out: str) -> list[str]:
    """``train.py`` and its overrides for the main job of ``opts`` (threads, steps; its bar only with
    ``opts["bar"]``), writing into the run dir ``out``."""
    bar = [] if opts.get("bar") else ["trainer.enable_progress_bar=false"]
    return ["train.py", f"threads={opts['threads']}", f"algo.max_steps={opts['steps']}", f"hydra.run.dir={out}", *bar]


# --main-split: the parts of the main job's train/wall_seconds (rows of the table)
SPLIT_PARTS = {"wall": "in one process", "validations": "its validations (with the exact reference)",
               "rest": "the rest (steps, Lightning's loop, checkpoints)"}


def main_job_split(tree: Path, opts: dict) -> dict:
    """The main job (as ``kind == "main"``, without its bar) run in this process with ``TREE``'s sqtorch, its
    ``train/wall_seconds`` split into the validations (``validation_step``: the exact reference, built
    in the first one, Monte Carlo and exact policy evaluation) and the rest (the steps, Lightning's loop,
    checkpoints). The split is comparable across trees that moved work between ``training_step`` and
    Lightning (the old module left backward and Adam to Lightning's automatic optimization)."""
    import runpy

    sys.path.insert(0, str(tree))
    os.chdir(tree)
    from sqtorch.neural.module import SubsampleQModule

    spent = [0.0]
    validation_step = SubsampleQModule.validation_step

    def timed(self: SubsampleQModule, *args: object, **kwargs: object) -> object:
        t0 = time.perf_counter()
        try:
            return validation_step(self, *args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t0

    SubsampleQModule.validation_step = timed  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as out:
        sys.argv = main_job_argv(opts, out)
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
            try:
                runpy.run_path("train.py", run_name="__main__")
            except SystemExit as e:  # Hydra's exit after a run
                if e.code not in (0, None):
                    raise
        wall = json.loads((Path(out) / "metrics.json").read_text())["train/wall_seconds"]
    return {"wall": wall, "validations": spent[0], "rest": wall - spent[0]}


def run_child(tree: Path, kind: str, opts: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(tree), kind, json.dumps(opts)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(cmd, cwd=tree, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def compare(args: argparse.Namespace) -> None:
    """Old (``--baseline``) vs this tree, alternating, medians; prints (and with --out writes) one table."""
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.baseline], check=True,
                         capture_output=True, text=True).stdout.strip()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "sqtorch", "conf", "train.py"],
                           check=True, capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        trees = {"old": old, "new": ROOT}
        t = args.threads or 1
        cases = [(f"steps/s, batch {args.batch_size}", "step",
                  {"batch": args.batch_size, "steps": args.steps, "warmup": args.warmup})]
        if args.big_batch:
            cases.append((f"items/s, batch {args.big_batch}", "step",
                          {"batch": args.big_batch, "steps": max(args.steps // 8, 10),
                           "warmup": max(args.warmup // 4, 3)}))
        if args.main_steps:
            cases.append((f"main job training wall s ({args.main_steps} steps)", "main", {"steps": args.main_steps}))
        if args.main_steps and args.main_split:  # one run of the main job gives both rows
            cases.append((f"main job training wall s ({args.main_steps} steps)", "split", {"steps": args.main_steps}))
        if args.main_steps and args.main_bar:
            cases.append((f"main job training wall s ({args.main_steps} steps), progress bar on", "main",
                          {"steps": args.main_steps, "bar": True}))
        results: dict[tuple[str, str], list[float]] = {}
        for rep in range(args.repeats):
            for label, kind, opts in cases:
                order = ("old", "new") if rep % 2 == 0 else ("new", "old")
                for name in order:
                    r = run_child(trees[name], kind, {**opts, "threads": t})
                    if kind == "split":
                        for part, value in r.items():
                            results.setdefault((f"{label}, {SPLIT_PARTS[part]}", name), []).append(value)
                        print(f"  repeat {rep + 1}: {label} {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()))
                        continue
                    if kind == "main":
                        value = r["wall"]
                    elif label.startswith("steps/s"):
                        value = 1e3 / r["ms"]
                    else:
                        value = r["items_per_s"]
                    results.setdefault((label, name), []).append(value)
                    if "cpu_ms" in r:
                        results.setdefault((label, name + " cpu"), []).append(r["cpu_ms"])
                    print(f"  repeat {rep + 1}: {label} {name}: {value:,.2f}", flush=True)
    header = (f"old = {rev}, new = {head}{' + uncommitted changes' if dirty else ''}; cpu, {t} thread(s), "
              f"torch {torch.__version__}; queue, n = 64, k = 4, m = 8, state_dist = visited; "
              f"median of {args.repeats} alternating repeats (each in its own process); "
              f"load average at the end {os.getloadavg()[0]:.1f}")
    rows = ["| measure | old | new | speed-up (new vs old) | paired speed-up, median [min, max] "
            "| CPU ms/step old / new | speed-up in CPU time |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    rows_of = [(f"{label}, {what}", kind) if kind == "split" else (label, kind)
               for label, kind, _ in cases for what in (SPLIT_PARTS.values() if kind == "split" else [None])]
    for label, kind in rows_of:
        olds, news = results[(label, "old")], results[(label, "new")]
        o, n = statistics.median(olds), statistics.median(news)
        wall = kind in ("main", "split")  # a wall time: shorter is faster
        ratio = o / n if wall else n / o
        # each repeat runs old and new back to back: their ratio cancels load that drifts between repeats
        pairs = [a / b if wall else b / a for a, b in zip(olds, news, strict=True)]
        paired = f"{statistics.median(pairs):.2f}x [{min(pairs):.2f}, {max(pairs):.2f}]"
        cpu = ["-", "-"]
        if kind == "step":
            co, cn = (statistics.median(results[(label, name + " cpu")]) for name in ("old", "new"))
            cpu = [f"{co:.2f} / {cn:.2f}", f"{co / cn:.2f}x"]
        rows.append(f"| {label} | {o:,.2f} | {n:,.2f} | **{ratio:.2f}x** | {paired} | {cpu[0]} | {cpu[1]} |")
    cmd = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    text = f"Command: `{cmd}`\n\n{header}\n\n" + "\n".join(rows) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child_main(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default=None, help="git revision to compare with (old vs new table)")
    p.add_argument("--big-batch", type=int, default=4096, help="--baseline: the large batch (items/s; 0: skip)")
    p.add_argument("--warmup", type=int, default=20, help="--baseline: untimed steps before timing")
    p.add_argument("--main-steps", type=int, default=5000, help="--baseline: main job steps (0: skip it)")
    p.add_argument("--main-split", action="store_true",
                   help="--baseline: also run the main job in the measuring process, validations timed apart (3 rows)")
    p.add_argument("--main-bar", action="store_true",
                   help="--baseline: also time the main job with its progress bar, as `python train.py` shows it")
    p.add_argument("--ks", type=int, nargs="+", default=[4, 16, 64])
    p.add_argument("--n", type=int, default=64, help="agents of the n-agent system (>= max k)")
    p.add_argument("--envs", nargs="+", default=list(ENVS))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--m", type=int, default=8)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3, help="report the best of this many timings")
    p.add_argument("--quick", action="store_true", help="50 steps")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", default=None, help="write a markdown table here")
    args = p.parse_args()
    if args.quick:
        args.steps = 50
    if args.baseline:
        compare(args)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    header = (
        f"device: {device.type} ({name}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads; n = {args.n}, batch {args.batch_size}, "
        f"m = {args.m}, hidden {args.hidden}, best of {args.repeats} x {args.steps} timed steps, "
        f"state_dist = visited; load average at start {os.getloadavg()[0]:.1f}"
    )
    rows = [
        "| env | k | raw ms/step | raw items/s | raw transitions/s | Lightning ms/step | Lightning items/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    print(header, flush=True)
    for env in args.envs:
        for k in args.ks:
            raw = raw_step_ms(env, args.n, k, args, device)
            lit = lightning_step_ms(env, args.n, k, args, device)
            ips = args.batch_size / raw * 1e3
            row = (
                f"| {env} | {k} | {raw:.2f} | {ips:,.0f} | {ips * args.m:,.0f} | {lit:.2f} "
                f"| {args.batch_size / lit * 1e3:,.0f} |"
            )
            rows.append(row)
            print(row, flush=True)
    if args.out:
        cmd = "python " + " ".join(shlex.quote(a) for a in sys.argv)
        text = (
            f"# DeepSets training throughput\n\nCommand: `{cmd}`\n\n{header}\n\n"
            + "\n".join(rows)
            + f"\n\nLoad average at the end: {os.getloadavg()[0]:.1f} (a shared machine: "
            "other processes compete for the cores; numbers are best-of-repeats).\n"
        )
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
