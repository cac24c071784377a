"""Settings of tabular SUBSAMPLE-Q (``algo=tabular``): the one place their defaults live."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from sqtorch.checks import check_choice, check_float, check_int, check_positive

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
    bins: int | None = None  # continuous local states: bins per coordinate (sqtorch/envs/discretize.py)

    def __post_init__(self) -> None:
        expected = type(self).__dataclass_fields__["name"].default
        if self.name != expected:
            raise ValueError(f"algo.name = '{self.name}' does not match {type(self).__name__} (expected '{expected}')")
        if self.m != "exact":
            check_int("algo.m", self.m, 1, "next-state samples, or 'exact'")
        check_int("algo.T", self.T, 1, "maximum sweeps")
        check_positive("algo.tol", self.tol)
        check_choice("algo.dtype", self.dtype, list(DTYPES))
        check_positive("algo.max_memory_gib", self.max_memory_gib)
        if self.bins is not None:
            check_int("algo.bins", self.bins, 2, "bins per continuous local-state coordinate, or null")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


@dataclass
class TabularMFQConfig(TabularConfig):
    """:func:`sqtorch.tabular.mfq.learn_mfq` settings (``algo=tabular_mfq``, docs/model.md §7)."""

    name: str = "tabular_mfq"
    m: Any = "exact"  # next-state samples per (g, a_g, z), or "exact"
    tie_tol: float | None = None  # greedy ties (MFQPolicy); None: from the solver's error bound

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bins is not None:
            raise ValueError(f"algo.bins = {self.bins}: tabular_mfq needs finite local states; remove algo.bins")
        if self.tie_tol is not None:
            check_float("algo.tie_tol", self.tie_tol, 0.0, hi_open=True, what="a finite number >= 0, or null")


@dataclass
class TabularLocalRuleConfig(TabularConfig):
    """``algo=tabular_local_rule``: SUBSAMPLE-Q for the global agent, local agents on ``rule`` (docs/model.md §7.8)."""

    name: str = "tabular_local_rule"
    m: Any = "exact"
    rule: list[int] = field(default_factory=lambda: [0])  # local action per local state (one entry: for all)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bins is not None:
            raise ValueError(f"algo.bins = {self.bins}: tabular_local_rule needs finite local states; remove algo.bins")
        if len(self.rule) < 1:
            raise ValueError("algo.rule is empty: give one local action per local state, or one for all")
        self.rule = [check_int(f"algo.rule[{i}]", a, 0, "a local action") for i, a in enumerate(self.rule)]

    def rule_for(self, L: int, Al: int) -> list[int]:
        """The rule as ``L`` local actions; ``ValueError`` naming ``algo.rule`` if it does not fit the env."""
        if len(self.rule) not in (1, L):
            raise ValueError(f"algo.rule has {len(self.rule)} entries; the env has L = {L} local states "
                             "(give L entries, or one for all)")
        for i, a in enumerate(self.rule):
            check_int(f"algo.rule[{i}]", a, 0, f"a local action of the env, in {{0..{Al - 1}}}", hi=Al - 1)
        return self.rule * L if len(self.rule) == 1 else list(self.rule)
