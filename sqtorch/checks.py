"""Argument checks shared by every entry path (Python API, Hydra configs, Gymnasium, baselines).

Each check returns the value in its canonical Python type or raises ``ValueError`` with one message
format, written here once: ``"<name> = <value> is outside the allowed range <rule> (<meaning>)"``.
Integers accept Python and numpy integers and refuse ``bool`` (a ``True`` passed as a count is a
bug, not a 1); floats accept any real number except ``bool`` and refuse NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def out_of_range(name: str, value: Any, rule: str, what: str = "") -> ValueError:
    """The one range error: ``name = value is outside the allowed range rule (what)``."""
    return ValueError(f"{name} = {value!r} is outside the allowed range {rule}" + (f" ({what})" if what else ""))


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(name: str, value: Any, lo: int, what: str = "", hi: int | None = None) -> int:
    """``int(value)`` if it is an integer with ``lo <= value`` (and ``value <= hi`` when given)."""
    if not _is_int(value) or value < lo or (hi is not None and value > hi):
        rule = f"{lo} <= {name} <= {hi}" if hi is not None else f"{name} >= {lo}"
        raise out_of_range(name, value, rule, what)
    return int(value)


def check_optional_int(name: str, value: Any, lo: int, what: str = "") -> int | None:
    """``None`` stays ``None`` (a documented default); anything else goes through :func:`check_int`."""
    return None if value is None else check_int(name, value, lo, f"{what}, or null" if what else "or null")


def check_k(k: Any, n: Any, what: str = "sampled local agents") -> int:
    """The subsample size: an integer ``1 <= k <= n`` (docs/model.md §2)."""
    n = check_int("n", n, 1, "number of local agents")
    if not _is_int(k) or not 1 <= k <= n:
        raise out_of_range("k", k, f"1 <= k <= n = {n}", what)
    return int(k)


def check_float(
    name: str,
    value: Any,
    lo: float = -math.inf,
    hi: float = math.inf,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    what: str = "",
) -> float:
    """``float(value)`` if it is a real number in the interval ``lo .. hi`` (ends open where asked; NaN fails)."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    x = float(value) if ok else math.nan
    inside = (x > lo if lo_open else x >= lo) and (x < hi if hi_open else x <= hi)  # NaN compares False
    if not inside:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise out_of_range(name, value, f"{left}{lo:g}, {hi:g}{right}", what)
    return x


def check_positive(name: str, value: Any, what: str = "a finite number > 0", allow_none: bool = False) -> float | None:
    """A finite number ``> 0`` (``None`` too when ``allow_none``)."""
    if value is None and allow_none:
        return None
    return check_float(name, value, 0.0, math.inf, lo_open=True, hi_open=True,
                       what=what + (", or null" if allow_none else ""))


def check_unit(name: str, value: Any, what: str = "") -> float:
    """A number in ``[0, 1]``."""
    return check_float(name, value, 0.0, 1.0, what=what)


def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    """``value`` if it is one of ``allowed``, else ``ValueError`` listing them."""
    if value not in allowed:
        raise ValueError(f"{name} = {value!r} is unknown; allowed: {list(allowed)}")
    return value


__all__ = [
    "check_choice",
    "check_float",
    "check_int",
    "check_k",
    "check_optional_int",
    "check_positive",
    "check_unit",
    "out_of_range",
]
