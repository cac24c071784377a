"""Validation curves of trained runs: ``eval/*`` against the optimizer step, read from the run's TensorBoard files.

A DeepSets run validates its greedy policy every ``eval.every`` steps on the n-agent system with
common random numbers (the same initial states and rollouts at every validation, docs/model.md §5),
so successive points of one curve differ by the policy alone. A study with ``plots:
[validation_curves]`` draws them and reports, per run, how much the validation return still moved
over the last quarter of training (:func:`tail_spread`) beside what it gained over the whole run: the
evidence that a run was trained until its curve flattened.
"""

from __future__ import annotations

import math
from pathlib import Path

from sqtorch import metrics as M

CURVE_KEYS = {M.EVAL_RETURN: "return", M.EVAL_RETURN_CI: "return_ci95", M.EVAL_GAP: "gap"}  # metric: curve field


def read_curves(run_dir: Path, keys: tuple[str, ...] = tuple(CURVE_KEYS)) -> dict[str, list[tuple[int, float]]]:
    """``{key: [(step, value), ...]}`` sorted by step, for the ``keys`` the run's event files hold.

    Several event files (a resumed run) are merged; a step logged twice keeps its last value.
    An unreadable or absent log gives ``{}`` (the caller draws no curve for it).
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not any(run_dir.glob("events.out.tfevents.*")):
        return {}
    try:
        acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        acc.Reload()
        tags = set(acc.Tags().get("scalars", []))
        out = {}
        for key in keys:
            if key in tags:
                by_step = {int(e.step): float(e.value) for e in acc.Scalars(key)}
                out[key] = sorted(by_step.items())
        return out
    except Exception:  # a torn event file: no curve, the study goes on
        return {}


def _merge_final(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """Lightning logs a validation at step ``t - 1`` and the run's final metrics at ``t``: keep one of the two."""
    if len(points) >= 2 and points[-1][0] == points[-2][0] + 1 and points[-1][1] == points[-2][1]:
        return points[:-2] + [points[-1]]
    return points


def tail_spread(points: list[tuple[int, float]], frac: float = 0.25) -> float:
    """``max - min`` of the values at the validations from the one nearest step ``(1 - frac) * last step``
    to the last (NaN with fewer than 2 points): how much a curve still moves at the end of training."""
    if len(points) < 2:
        return math.nan
    at = (1.0 - frac) * points[-1][0]
    first = min(range(len(points) - 1), key=lambda i: abs(points[i][0] - at))
    tail = [v for _, v in points[first:]]
    return max(tail) - min(tail)


def study_curves(runs: list) -> list[dict]:
    """One curve per trained run dir (deployed copies share their trained run's dir and are skipped).

    Each curve: ``env``, ``n``, ``algo``, ``k``, ``seed``, ``path``, ``steps`` and per key of
    :data:`CURVE_KEYS` its values (``return``, ``return_ci95``, ``gap``; absent keys left out), and
    ``tail_spread`` of the return over the last quarter of the steps.
    """
    curves, seen = [], set()
    for r in runs:
        if r.path in seen:
            continue
        seen.add(r.path)
        raw = read_curves(Path(r.path))
        ret = _merge_final(raw.get(M.EVAL_RETURN, []))
        if len(ret) < 2:
            continue
        steps = [s for s, _ in ret]
        c = dict(env=r.env_name, n=r.n, algo=r.algo, k=r.k, seed=r.seed, path=str(r.path), steps=steps,
                 tail_spread=tail_spread(ret))
        for key, name in CURVE_KEYS.items():
            values = dict(_merge_final(raw.get(key, [])))
            if all(s in values for s in steps):
                c[name] = [values[s] for s in steps]
        curves.append(c)
    return sorted(curves, key=lambda c: (c["env"], c["n"], c["algo"], c["k"], c["seed"]))
