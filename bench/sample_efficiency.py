"""Benchmark: sample efficiency of DeepSets SUBSAMPLE-Q on queue n = 10, k = 4 (issue 21, item 5).

    python bench/sample_efficiency.py                                  # all variants, seeds 0..9
    python bench/sample_efficiency.py --variants today,double_q --seeds 3 --max-steps 2000
    python bench/sample_efficiency.py --out /tmp/se/table.md           # also write the table (+ a .json)

For each variant (a set of ``algo.*`` overrides of today's defaults, :data:`VARIANTS`) and each
seed ``0 .. --seeds - 1`` it trains DeepSets exactly as ``python train.py env=queue k=4 seed=S
threads=1 trainer=cpu`` does (same module, same seeding, same sampler; Lightning's own validation
is off) and, every ``--eval-every`` optimizer steps, evaluates the network's greedy policy on the
full n = 10 system by exact policy evaluation on the count MDP (``eval/gap``, V* - V^pi averaged
over the fixed initial states of ``eval.*``; no Monte Carlo). The target is the exact gap of the
exact k = 4 tabular table's greedy policy (:func:`sqtorch.tabular.exact.optimal_q`), evaluated the
same way: a seed *reaches the table* at the first check where ``gap(net) - gap(table) <= TOL``
(exact arithmetic up to float64 round-off: the same greedy table gives bitwise the same gap).

Samples to reach = that step * ``batch_size`` items; each item carries ``m`` successor draws, so
successor draws = items * m (a larger m pays for its extra draws there). A seed that never reaches
the table within ``--max-steps`` is counted as not reached and enters the median as "more than
max": the median is printed as ``> max`` when half or more of the seeds did not reach it.
The policy's gap jumps from check to check, so a second table counts a seed as having reached the
table *for good* at the first check from which every later check (through ``--max-steps``) is at
or below it, and gives the share of checks in the second half of training that are.

At the end of each run the full validation of train.py (``SubsampleQModule.evaluate``) also gives
the final ``eval/gap`` and ``eval/gap_vs_tabular`` (the latter is the Monte Carlo return of the
table minus the net's, with common random numbers, not an exact quantity). The table shows the
final exact gap - gap(table) as mean +- 95% CI over seeds (Student t).

``--cosine-horizon`` (default: ``--max-steps``) is ``algo.max_steps``, the horizon of the cosine
schedule; training stops at ``--max-steps``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOL = 1e-9  # gap(net) - gap(table) <= TOL counts as reached (float64 round-off of the same policy)

#: name -> (algo overrides of today's defaults, what it tests)
VARIANTS: dict[str, tuple[dict[str, Any], str]] = {
    "today": ({}, "current defaults (m = 8, batch 256, lr 3e-3 cosine, hard sync every 20, single Q)"),
    "double_q": ({"double_q": True}, "double Q-learning targets (algo.double_q=true)"),
    "m32": ({"m": 32}, "m = 32 successor draws per item"),
    "m2": ({"m": 2}, "m = 2 successor draws per item"),
    "lr_constant": ({"optim": {"lr_schedule": "constant"}}, "constant lr 3e-3 (no cosine decay)"),
    "lr1e-3": ({"optim": {"lr": 1.0e-3}}, "lr 1e-3, cosine"),
    "polyak": ({"tau": 0.01}, "Polyak target tau = 0.01 instead of the hard sync every 20"),
    "sync100": ({"target_sync": 100}, "hard sync every 100 steps"),
    "double_q_m32": ({"double_q": True, "m": 32}, "double Q + m = 32"),
}
DEFAULT_VARIANTS = "today,double_q,m32,lr_constant,lr1e-3,polyak"


def load_env(name: str) -> tuple[dict, int]:
    """The env config and n that ``train.py env=<name>`` composes (Hydra, with the preset's defaults)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from sqtorch.experiment.config import register_configs

    register_configs()  # the typed algo/ and eval/ groups train.py composes
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"env={name}"])
    return OmegaConf.to_container(cfg.env, resolve=True), int(cfg.n)


def merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``, nested dicts merged key by key."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.merge(base, over))


class Shared:
    """What every run compares with: the exact reference (V*, the k-table) and the table's exact gap."""

    def __init__(self, env_cfg: dict, n: int, k: int, eval_cfg: Any) -> None:
        from sqtorch.envs import build_env
        from sqtorch.evaluation.reference import build_reference, exact_gap

        t0 = time.perf_counter()
        self.env = build_env(env_cfg)
        self.ref = build_reference(self.env, n, k, eval_cfg)
        if self.ref.tabular is None or self.ref.v_star is None:
            raise SystemExit(f"no exact reference at n = {n}, k = {k}: {self.ref.notes}")
        self.table_gap = exact_gap(self.env, n, self.ref.tabular.greedy(), k, self.ref)
        assert self.table_gap is not None
        self.seconds = time.perf_counter() - t0


def train_one(env_cfg: dict, n: int, k: int, algo: dict, seed: int, args: argparse.Namespace,
              shared: Shared, eval_cfg: Any) -> dict[str, Any]:
    """One DeepSets run with exact gap checks every ``args.eval_every`` steps; returns its record."""
    import lightning.pytorch as pl

    from sqtorch import metrics as M
    from sqtorch.evaluation.reference import exact_gap
    from sqtorch.neural.module import SubsampleQModule
    from sqtorch.neural.policy import DeepSetsPolicy

    checks: list[tuple[int, float]] = []
    check_seconds = [0.0]

    class GapProbe(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, module: Any, *rest: Any) -> None:
            step = trainer.global_step
            if step % args.eval_every and step != args.max_steps:
                return
            t = time.perf_counter()
            greedy = DeepSetsPolicy(module.net, k).greedy()
            gap = exact_gap(shared.env, n, greedy, k, shared.ref)
            assert gap is not None
            checks.append((step, gap - shared.table_gap))
            check_seconds[0] += time.perf_counter() - t

    pl.seed_everything(seed, workers=True, verbose=False)  # as the deepsets algorithm of train.py
    module = SubsampleQModule(env_cfg, n, k, algo, eval_cfg, seed)
    module.reference = shared.ref  # built once for all runs (same settings: identical)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=args.max_steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, deterministic=True, limit_val_batches=0,
        num_sanity_val_steps=0, log_every_n_steps=10, callbacks=[GapProbe()],
    )
    t0 = time.perf_counter()
    trainer.fit(module)
    wall = time.perf_counter() - t0
    t = time.perf_counter()
    final = module.evaluate()  # train.py's final metrics (Monte Carlo return + exact gap)
    final_eval_seconds = time.perf_counter() - t
    reached = next((step for step, d in checks if d <= TOL), None)
    m = int(module.algo.m)
    b = int(module.algo.batch_size)
    return {
        "seed": seed,
        "steps": trainer.global_step,
        "reached_step": reached,
        "items": None if reached is None else reached * b,
        "draws": None if reached is None else reached * b * m,
        "checks": checks,
        "final_gap": final[M.EVAL_GAP],
        "final_gap_minus_table": final[M.EVAL_GAP] - shared.table_gap,
        "final_gap_vs_tabular_mc": final.get(M.EVAL_GAP_TABULAR),
        "final_agreement": final.get(M.EVAL_AGREEMENT),
        "wall_s": wall,
        "check_s": check_seconds[0],
        "final_eval_s": final_eval_seconds,
        "m": m,
        "batch_size": b,
    }


def median_reach(values: list[int | None], cap: int) -> str:
    """Median with a not-reached seed counted as more than ``cap``; '> cap' when the median is one of them."""
    xs = sorted(math.inf if v is None else v for v in values)
    med = statistics.median(xs)
    return f"> {cap:,}" if math.isinf(med) else f"{med:,.0f}"


def held_step(checks: list[tuple[int, float]]) -> int | None:
    """First check from which every later check (through the last) is at or below the table."""
    held = None
    for step, d in checks:
        if d <= TOL:
            held = step if held is None else held
        else:
            held = None
    return held


def fmt_ci(xs: list[float], digits: int = 4) -> str:
    from sqtorch.experiment.study import mean_ci95

    mean, ci = mean_ci95(xs)
    return f"{mean:+.{digits}f} ± {ci:.{digits}f}"


def table(results: dict[str, list[dict]], args: argparse.Namespace) -> str:
    """Two markdown tables: first check at/below the table (and the finals), then reached for good."""
    lines = [
        "| variant | seeds reached | median steps to reach | median items to reach | median successor draws "
        "| final eval/gap (exact, mean ± 95% CI) | final gap − table gap | seeds at/below table at end "
        "| final eval/gap_vs_tabular (MC) | wall s (sum over seeds) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    held_lines = [
        "| variant | seeds held | median steps to hold | median items to hold | median successor draws to hold "
        "| checks at/below table, 2nd half (mean) |",
        "|---|---|---|---|---|---|",
    ]
    cap = args.max_steps
    for name, runs in results.items():
        if not runs:
            continue
        b, m = runs[0]["batch_size"], runs[0]["m"]

        def cols(steps: list[int | None], b: int = b, m: int = m) -> str:
            ok = sum(v is not None for v in steps)
            return (f"{ok} / {len(steps)} | {median_reach(steps, cap)} "
                    f"| {median_reach([None if v is None else v * b for v in steps], cap * b)} "
                    f"| {median_reach([None if v is None else v * b * m for v in steps], cap * b * m)}")

        at_end = sum(r["final_gap_minus_table"] <= TOL for r in runs)
        mc = [r["final_gap_vs_tabular_mc"] for r in runs if r["final_gap_vs_tabular_mc"] is not None]
        lines.append(
            f"| {name} | {cols([r['reached_step'] for r in runs])} | {fmt_ci([r['final_gap'] for r in runs])} "
            f"| {fmt_ci([r['final_gap_minus_table'] for r in runs])} | {at_end} / {len(runs)} "
            f"| {fmt_ci(mc) if mc else 'n/a'} | {sum(r['wall_s'] for r in runs):.0f} |"
        )
        late = [statistics.fmean([d <= TOL for s, d in r["checks"] if s > cap / 2] or [math.nan]) for r in runs]
        held_lines.append(f"| {name} | {cols([held_step(r['checks']) for r in runs])} | {statistics.fmean(late):.0%} |")
    held_title = "Reached for good (at or below the table at every later check through the last):"
    return "\n".join(lines) + f"\n\n{held_title}\n\n" + "\n".join(held_lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=10, help="seeds 0 .. SEEDS-1 per variant (default 10)")
    p.add_argument("--variants", default=DEFAULT_VARIANTS,
                   help=f"comma-separated names out of {list(VARIANTS)} (default {DEFAULT_VARIANTS})")
    p.add_argument("--max-steps", type=int, default=5000, help="optimizer steps per run (default 5000, today's)")
    p.add_argument("--cosine-horizon", type=int, default=None,
                   help="algo.max_steps (cosine schedule horizon); default --max-steps")
    p.add_argument("--eval-every", type=int, default=50, help="optimizer steps between exact gap checks (default 50)")
    p.add_argument("--env", default="queue", help="conf/env preset (default queue: n = 10)")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="write the markdown table here (and all runs to .json)")
    args = p.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; allowed: {list(VARIANTS)}")
    if args.seeds < 1 or args.max_steps < 1 or args.eval_every < 1:
        p.error("--seeds, --max-steps and --eval-every must be positive")

    import logging
    import warnings

    import lightning.pytorch  # noqa: F401  (configures its loggers, quietened below)
    import torch

    from sqtorch.evaluation.reference import ValidationConfig

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # Lightning's hints (dataloader workers, deprecations)
    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)

    env_cfg, n = load_env(args.env)
    eval_cfg = ValidationConfig(every=args.eval_every)
    shared = Shared(env_cfg, n, args.k, eval_cfg)
    print(f"# {args.env} n = {n}, k = {args.k}: exact gap of the k-table's greedy policy = {shared.table_gap:.6f} "
          f"(reference built in {shared.seconds:.1f} s)", flush=True)
    horizon = args.cosine_horizon or args.max_steps
    results: dict[str, list[dict]] = {}
    t_all = time.perf_counter()
    for name in names:
        over, what = VARIANTS[name]
        algo = merge({"max_steps": horizon}, over)
        results[name] = []
        for seed in range(args.seeds):
            rec = train_one(env_cfg, n, args.k, algo, seed, args, shared, eval_cfg)
            results[name].append(rec)
            print(f"{name:14s} seed {seed}: reached at step {rec['reached_step']} (for good at "
                  f"{held_step(rec['checks'])}), final gap - table "
                  f"{rec['final_gap_minus_table']:+.5f} (gap {rec['final_gap']:.5f}), train {rec['wall_s']:.1f} s "
                  f"(exact checks {rec['check_s']:.1f} s)", flush=True)
    total = time.perf_counter() - t_all
    cmd = "python bench/sample_efficiency.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = table(results, args)
    header = (f"`{cmd}` — {args.env} n = {n}, k = {args.k}, seeds 0..{args.seeds - 1}, {args.max_steps} steps "
              f"(cosine horizon {horizon}), exact gap check every {args.eval_every} steps; table's exact gap "
              f"{shared.table_gap:.6f}; torch {torch.__version__}, {args.threads} thread(s); total wall {total:.0f} s")
    print()
    print(header)
    print()
    print(out)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(header + "\n\n" + out + "\n")
        meta = {"command": cmd, "table_gap": shared.table_gap, "total_wall_s": total, "tol": TOL,
                "variants": {k: VARIANTS[k][1] for k in names}}
        args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
