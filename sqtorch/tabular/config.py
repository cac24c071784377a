"""Settings of tabular SUBSAMPLE-Q (``algo=tabular``): the one place their defaults live."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from sqtorch.checks import check_int

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class TabularConfig:
    """:func:`sqtorch.tabular.learner.learn` settings (docs/model.md §2); ranges checked on construction."""

    name: str = "tabular"
    m: Any = 20  # next-state samples per (g, c, a), or "exact"
    T: int = 1000  # maximum value-iteration sweeps
    tol: float = 1.0e-8  # stop when the fixed point is known to within tol (sup norm)
    dtype: str = "float64"  # float64 | float32
    max_memory_gib: float = 8.0  # refuse tables whose learner would need more memory than this

    def __post_init__(self) -> None:
        if self.name != "tabular":
            raise ValueError(f"algo.name = '{self.name}' does not match TabularConfig (expected 'tabular')")
        if self.m != "exact":
            check_int("algo.m", self.m, 1, "next-state samples, or 'exact'")
        check_int("algo.T", self.T, 1, "maximum sweeps")
        if not 0 < float(self.tol) < math.inf:
            raise ValueError(f"algo.tol = {self.tol} is outside the allowed range: a finite number > 0")
        if self.dtype not in DTYPES:
            raise ValueError(f"algo.dtype = '{self.dtype}' is unknown; allowed: {list(DTYPES)}")
        if not 0 < float(self.max_memory_gib) < math.inf:
            raise ValueError(
                f"algo.max_memory_gib = {self.max_memory_gib} is outside the allowed range: a finite number > 0"
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]
