"""Benchmark: does ``torch.compile`` pay for the DeepSets update? (issue 21: "capture the step where it pays")

    python bench/compile.py                                   # CPU, 1 thread, batches 256, 1024, 4096
    python bench/compile.py --device cuda --batches 256 4096 32768
    python bench/compile.py --out FILE                        # also writes the table

What is timed is the part of a training step that compilation could take over: everything after the
batch is drawn. The sampling (``sqtorch.neural.data``) draws from explicit ``torch.Generator``
streams, where ``torch.compile`` breaks the graph, and ``td_loss`` compiled whole recompiled on
every step in a trial (the target sync's step counter is a guarded Python int). The part is: ``Q``
from the count path with the step's first-layer table (``DeepSetsQ.hidden_table`` and
``forward_counts``), the chosen action's value, the scaled Huber loss (``SubsampleQModule._loss``),
backward, global-norm clipping at 10 and the fused Adam step (``adam_step``). It runs on one fixed
batch of the ``bench/neural.py`` setting: queue, n = 64, k = 4, m = 8, the ``visited`` pool, hidden
width 64.

Arms, each with its own copy of the same initial network and its own Adam:
* eager, as training runs it;
* ``torch.compile`` of the loss function (inductor, default mode; backward through AOTAutograd);
* on CUDA also ``mode="reduce-overhead"`` (CUDA graphs).

In the training step (``--step-batches``): ``Trainer.fit`` of the module as it is against a variant
whose ``td_loss`` calls the same regression (table, ``Q``, loss) through ``torch.compile``; its pool
policy reads a table of its own, computed without autograd (one more small forward pass; the
compiled region computes the table it differentiates). Steps per second after ``--warmup`` steps
(which include the compilation), alternating, medians.

The arms alternate ``--repeats`` times (``--steps`` steps each); the table shows medians, the
speed-up over eager, the seconds of the first step (the compilation; a second batch size may reuse
a graph compiled with dynamic shapes) and whether the weights after all the steps equal eager's bit
for bit (every arm makes the same steps on the same batch from the same weights; compiled kernels
may round differently).
"""

from __future__ import annotations

import argparse
import copy
import logging
import platform
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.neural import fit_step_seconds, sourced_module, sync  # noqa: E402
from sqtorch.neural.module import SubsampleQModule, adam_step, clip_grad_norm  # noqa: E402
from sqtorch.runtime import no_autograd_dispatch  # noqa: E402
from sqtorch.tabular.counts import counts_of  # noqa: E402


class Arm:
    """One network, its Adam and its loss function (eager or compiled)."""

    def __init__(self, name: str, net: torch.nn.Module, loss: Callable, compile_mode: str) -> None:
        self.name = name
        self.params = list(net.parameters())
        self.opt = torch.optim.Adam(self.params, lr=1e-3, fused=True)

        def regression(s_g: torch.Tensor, c: torch.Tensor, a_g: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            q = net.forward_counts(s_g, c, net.hidden_table())
            return loss(q.gather(1, a_g[:, None])[:, 0], target)

        if compile_mode == "eager":
            self.fn = regression
        else:
            self.fn = torch.compile(regression, mode=None if compile_mode == "default" else compile_mode)

    def step(self, batch: tuple[torch.Tensor, ...]) -> None:
        for p in self.params:
            p.grad = None
        self.fn(*batch).backward()
        clip_grad_norm(self.params, 10.0)
        adam_step(self.opt)


def measure(batch_size: int, device: torch.device, args: argparse.Namespace) -> list[dict]:
    """One record per arm for one batch size (see the module docstring): ``arm``, ``ms`` per update,
    ``items_per_s``, ``vs_eager``, ``first_s`` (the first step; ``None`` for eager) and ``max_diff``
    (max abs difference of the final weights from eager's; ``None`` for eager)."""
    ns = argparse.Namespace(m=8, batch_size=batch_size, hidden=64)
    torch.manual_seed(0)  # the initial network
    module = sourced_module("queue", 64, 4, ns, 10, device)
    b = module.source.sample(batch_size)  # the pool as initialised: one fixed batch
    with torch.no_grad():
        target = module.td_target(b.r, b.g_next, b.c_next, b.x_next)
    batch = (b.s_g, counts_of(b.s_sub, module.net.L), b.a_g, target)
    modes = ["eager", "default"] + (["reduce-overhead"] if device.type == "cuda" else [])
    arms = [Arm(mode, copy.deepcopy(module.net), module._loss, mode) for mode in modes]
    first_s = {}
    for arm in arms:  # the first step: the compilation
        sync(device)
        t0 = time.perf_counter()
        arm.step(batch)
        sync(device)
        first_s[arm.name] = time.perf_counter() - t0
        for _ in range(args.warmup):
            arm.step(batch)
    times: dict[str, list[float]] = {arm.name: [] for arm in arms}
    for r in range(args.repeats):
        for arm in arms if r % 2 == 0 else arms[::-1]:  # alternate the order
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                arm.step(batch)
            sync(device)
            times[arm.name].append((time.perf_counter() - t0) / args.steps * 1e3)
    eager = statistics.median(times["eager"])
    w_eager = torch.cat([p.detach().flatten() for p in arms[0].params])
    records = []
    for arm in arms:  # every arm made the same steps on the same batch from the same weights
        ms = statistics.median(times[arm.name])
        diff = float((torch.cat([p.detach().flatten() for p in arm.params]) - w_eager).abs().max())
        compiled = arm.name != "eager"
        records.append({"arm": arm.name, "ms": ms, "items_per_s": batch_size / ms * 1e3, "vs_eager": eager / ms,
                        "first_s": first_s[arm.name] if compiled else None, "max_diff": diff if compiled else None})
    return records


def weights_cell(max_diff: float | None) -> str:
    """Whether an arm's weights equal eager's, for the tables."""
    if max_diff is None:
        return "-"
    return "yes" if max_diff == 0 else f"no (max abs diff {max_diff:.2g})"


def update_row(batch_size: int, r: dict) -> str:
    """The table row of one :func:`measure` record."""
    first = "-" if r["first_s"] is None else f"{r['first_s']:.1f}"
    return (f"| {batch_size} | {r['arm']} | {r['ms']:.3f} | {r['items_per_s']:,.0f} | {r['vs_eager']:.2f}x | {first} | "
            f"{weights_cell(r['max_diff'])} |")


class CompiledRegression(SubsampleQModule):
    """``SubsampleQModule`` whose regression (first-layer table, Q, loss) runs under ``torch.compile``
    (finite local states, mean or sum pooling; the ``visited`` pool's policy reads a no-grad table)."""

    def td_loss(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not hasattr(self, "_compiled"):
            self._compiled = torch.compile(self._regression)
        self.update_target()
        with torch.no_grad():
            frozen = self.net.hidden_table()

        def policy(s_g: torch.Tensor, s_sub: torch.Tensor) -> torch.Tensor:
            return self.net.q_states(s_g, s_sub, frozen).argmax(-1)

        b = self.source.sample(self.algo.batch_size, policy)
        with no_autograd_dispatch():
            target = self.td_target(b.r, b.g_next, b.c_next, b.x_next)
        loss, q = self._compiled(b.s_g, b.s_sub, b.a_g, target)
        self.samples += self.algo.batch_size
        return loss, q, target

    def _regression(self, s_g: torch.Tensor, s_sub: torch.Tensor, a_g: torch.Tensor,
                    target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.net.q_states(s_g, s_sub, self.net.hidden_table())
        return self._loss(q.gather(1, a_g[:, None])[:, 0], target), q


STEP_ARMS = {"eager (as trained)": SubsampleQModule, "compiled regression": CompiledRegression}


def measure_step(batch_size: int, device: torch.device, args: argparse.Namespace) -> list[dict]:
    """One record per module of :data:`STEP_ARMS`: ``module``, ``steps_per_s`` in ``Trainer.fit``
    (bench/neural.py's setting, after ``args.warmup`` steps) and ``vs_eager``."""
    rates: dict[str, list[float]] = {name: [] for name in STEP_ARMS}
    for r in range(args.repeats):
        for name in list(STEP_ARMS) if r % 2 == 0 else list(STEP_ARMS)[::-1]:
            torch._dynamo.reset()  # every fit compiles its own module (no cache limit reached across fits)
            torch.manual_seed(0)
            wall = fit_step_seconds(STEP_ARMS[name], batch_size, args.warmup, args.steps, device)[0]
            rates[name].append(1.0 / wall)
    eager = statistics.median(rates["eager (as trained)"])
    return [{"module": name, "steps_per_s": statistics.median(v), "vs_eager": statistics.median(v) / eager}
            for name, v in rates.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--batches", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--step-batches", type=int, nargs="*", default=[256, 4096],
                    help="batch sizes of the in-step comparison (none: skip it)")
    ap.add_argument("--steps", type=int, default=200, help="steps per timed block")
    ap.add_argument("--warmup", type=int, default=20, help="untimed steps per arm after the first")
    ap.add_argument("--repeats", type=int, default=5, help="timed blocks per arm (alternating)")
    ap.add_argument("--out", type=Path, help="also write the table to this file")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/compile.py: torch.cuda.is_available() is False; use --device cpu")
    torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or platform.machine()
    head = [
        f"`python bench/compile.py {shlex.join(sys.argv[1:])}`".replace(" `", "`"),
        f"device {device.type} ({name}), {torch.get_num_threads()} CPU thread(s), torch {torch.__version__}",
        "",
        "| batch | arm | ms per update | items/s | vs eager | first step s | weights = eager's |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    print("\n".join(head), flush=True)
    rows = []
    for batch_size in args.batches:
        new = [update_row(batch_size, r) for r in measure(batch_size, device, args)]
        print("\n".join(new), flush=True)
        rows += new
    if args.step_batches:
        step_head = ["", "In the training step (`Trainer.fit`):", "",
                     "| batch | module | steps/s | vs eager |", "|---:|---|---:|---:|"]
        print("\n".join(step_head), flush=True)
        rows += step_head
        for batch_size in args.step_batches:
            new = [f"| {batch_size} | {r['module']} | {r['steps_per_s']:,.1f} | {r['vs_eager']:.2f}x |"
                   for r in measure_step(batch_size, device, args)]
            print("\n".join(new), flush=True)
            rows += new
    if args.out:
        args.out.write_text("\n".join(head + rows) + "\n")


if __name__ == "__main__":
    main()
