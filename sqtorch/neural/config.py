"""Settings of neural SUBSAMPLE-Q (``algo=deepsets``): the one place their defaults live.

Hydra composes ``algo`` from :class:`DeepSetsConfig` (registered by :mod:`sqtorch.experiment.
config`), the LightningModule takes it as is, and ``__post_init__`` checks every range, so a bad
value fails before anything is trained or written (docs/model.md §3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqtorch.checks import check_float, check_int, check_positive
from sqtorch.neural.data import DataConfig
from sqtorch.neural.deepsets import NetConfig

LOSSES = ("huber", "mse")
LR_SCHEDULES = ("constant", "cosine")



@dataclass
class OptimConfig:
    """Adam and its schedule (``algo.optim.*``)."""

    lr: float = 3.0e-3
    weight_decay: float = 0.0
    grad_clip: float | None = 10.0  # gradient-norm clipping (null: off)
    lr_schedule: str = "cosine"  # constant | cosine (over max_steps)

    def __post_init__(self) -> None:
        check_positive("algo.optim.lr", self.lr)
        check_float("algo.optim.weight_decay", self.weight_decay, 0.0, hi_open=True)
        check_positive("algo.optim.grad_clip", self.grad_clip, allow_none=True)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"algo.optim.lr_schedule = '{self.lr_schedule}' is unknown; allowed: {list(LR_SCHEDULES)}")


@dataclass
class DeepSetsConfig:
    """Neural SUBSAMPLE-Q: DeepSets Q-network on fitted-Q targets from the generative model."""

    name: str = "deepsets"
    net: NetConfig = field(default_factory=NetConfig)
    m: int = 8  # next-state samples per item
    batch_size: int = 256
    max_steps: int = 5000  # optimizer steps
    loss: str = "huber"  # huber | mse
    huber_delta: float = 1.0  # on the scaled output (Q / (max|r| / (1 - gamma)))
    target_sync: int = 20  # hard target-network copy every N steps (ignored when tau is set)
    tau: float | None = None  # Polyak factor of a soft target update, e.g. 0.01
    double_q: bool = False  # double Q-learning targets: a' chosen by the online net, valued by the target net
    checkpoint_every: int = 500  # optimizer steps between checkpoints
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        expected = type(self).__dataclass_fields__["name"].default
        if self.name != expected:
            raise ValueError(f"algo.name = '{self.name}' does not match {type(self).__name__} (expected '{expected}')")
        for key in ("m", "batch_size", "max_steps", "target_sync", "checkpoint_every"):
            check_int(f"algo.{key}", getattr(self, key), 1, "a positive integer")
        if self.loss not in LOSSES:
            raise ValueError(f"algo.loss = '{self.loss}' is unknown; allowed: {list(LOSSES)}")
        check_positive("algo.huber_delta", self.huber_delta)
        if self.tau is not None and not 0.0 < float(self.tau) <= 1.0:
            raise ValueError(f"algo.tau = {self.tau} is outside the allowed range 0 < tau <= 1 (or null)")
        if not isinstance(self.double_q, bool):
            raise ValueError(f"algo.double_q = {self.double_q!r} is not a boolean (true or false)")
        # nested dicts (a checkpoint's hyper-parameters, plain-Python callers) become configs
        for key, cls in (("net", NetConfig), ("optim", OptimConfig), ("data", DataConfig)):
            value = getattr(self, key)
            if isinstance(value, dict):
                setattr(self, key, cls(**value))
        if self.data.state_dist == "trajectory" and self.m != 1:
            raise ValueError(f"algo.m = {self.m}: trajectory data holds one observed successor per item "
                             "(algo.data.state_dist = 'trajectory'); set algo.m=1")


MFQ_STATE_DISTS = ("uniform", "simplex")


@dataclass
class DeepSetsMFQConfig(DeepSetsConfig):
    """DeepSets SUBSAMPLE-MFQ (``algo=deepsets_mfq``, docs/model.md §7.9): a DeepSets Q-network over the k
    (local state, local action) pairs; the max over the other agents' actions is exact enumeration."""

    name: str = "deepsets_mfq"
    data: DataConfig = field(default_factory=lambda: DataConfig(state_dist="simplex"))
    max_tables: int = 2_000_000  # G * C(k + L Al - 1, k) pair-count tables enumerated per target: the limit
    tie_tol: float | None = None  # greedy ties of the executed policy; None: 1e-6 * q_scale (float32 noise)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.data.state_dist not in MFQ_STATE_DISTS:
            raise ValueError(f"algo.data.state_dist = '{self.data.state_dist}' is not supported by deepsets_mfq; "
                             f"allowed: {list(MFQ_STATE_DISTS)} (items are drawn over (state, action) pairs)")
        check_int("algo.max_tables", self.max_tables, 1, "pair-count tables enumerated per target")
        if self.double_q:
            raise ValueError("algo.double_q = True is not supported by deepsets_mfq (its target's max over "
                             "the other agents' actions enumerates the target network); set algo.double_q=false")
        if self.tie_tol is not None:
            check_float("algo.tie_tol", self.tie_tol, 0.0, hi_open=True, what="a finite number >= 0, or null")
