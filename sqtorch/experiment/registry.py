"""The algorithm protocol and its registry: an algorithm is one module and one config.

An :class:`Algorithm` says, for one ``algo.name``, how to

- **train** a run from its validated config and leave its artifact in the run dir
  (:meth:`Algorithm.train`; ``config.yaml`` and ``metrics.json`` are written around it by
  :func:`sqtorch.experiment.run.run` and :func:`sqtorch.experiment.outputs.finish`),
- **load** the trained policy back from a run dir (:meth:`Algorithm.load`, for ``evaluate.py``),
- **count** the samples it drew, in the one unit every study uses: local-agent transitions drawn
  from the model (:meth:`Algorithm.samples`).

Its settings are a dataclass (:attr:`Algorithm.config`) that becomes the Hydra option
``algo=<name>``. :func:`register_algorithm` adds one; ``train.py``, ``evaluate.py`` and the run
loader look algorithms up here and nowhere branch on a name. The built-in ones (``tabular``,
``deepsets``, ``sb3_dqn``, ``sb3_ppo``) live in :mod:`sqtorch.experiment.algos`. Modules named in
the environment variable ``SQTORCH_PLUGINS`` (comma-separated) are imported when
:mod:`sqtorch.experiment` is, so a user's algorithm or environment registers itself in the
command-line entry points and in the jobs they launch (docs/training.md, "Your own algorithm").
"""

from __future__ import annotations

import importlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from hydra.core.config_store import ConfigStore

from sqtorch import metrics as M
from sqtorch.envs.local_actions import LocalActionMDP

if TYPE_CHECKING:  # only for annotations: the run context is built by sqtorch.experiment.run
    from omegaconf import DictConfig

    from sqtorch.experiment.config import RunSpec
    from sqtorch.runtime import SignalFlag

SUBSAMPLE_Q, BASELINE = "subsample-q", "baseline"
PLUGINS_ENV = "SQTORCH_PLUGINS"


@dataclass
class TrainContext:
    """What :meth:`Algorithm.train` gets: the composed config, its validated form, the run dir, the signal flag."""

    cfg: DictConfig  # the whole composed config (logger, trainer, callbacks groups)
    spec: RunSpec  # validated settings; spec.algo is an instance of Algorithm.config
    out: Path  # the run dir (exists; config.yaml is already in it)
    flag: SignalFlag  # set by SIGTERM/SIGINT: stop at a safe point, save, raise via flag.check()
    extra_callbacks: list = field(default_factory=list)  # Lightning callbacks (tests)


@dataclass
class LoadedPolicy:
    """A trained policy read back from its run dir, with what the study reports about it."""

    policy: Any  # has .k and .act(s_g [B], s_sub [B, k]) -> a_g [B]; .greedy() if deterministic
    label: str  # row label in study tables, e.g. "tabular m=20", "deepsets", "sb3 ppo counts"
    k: int  # agents the policy sees per step
    size: int  # table entries or parameters
    learn_seconds: float  # learning wall time
    kind: str = SUBSAMPLE_Q  # SUBSAMPLE_Q or BASELINE
    deterministic: bool = False  # a rerun gives the same policy bit for bit (compare= checks equality)


class Algorithm:
    """Base class of an algorithm (subclass it, set the class attributes, implement train and load)."""

    name: ClassVar[str]  # algo.name, the Hydra option algo=<name>
    config: ClassVar[type]  # dataclass of its settings; its instances have .name == name
    artifact: ClassVar[str]  # path in the run dir of what load() reads (marks a run as trained)
    interruptible: ClassVar[bool] = True  # False: SIGTERM/SIGINT end it the default way (no checkpoint)
    resumable: ClassVar[bool] = False  # True: resume_from() resolves ckpt_path (and Slurm requeues resume)
    local_actions: ClassVar[bool] = False  # True: for envs whose local agents act (LocalActionMDP)
    simulators: ClassVar[bool] = False  # True: trains on any Simulator (samples only), not just a GlobalLocalMDP

    def train(self, ctx: TrainContext) -> dict[str, float]:
        """Train, write the artifact into ``ctx.out``, evaluate; return the final metrics (via ``finish``)."""
        raise NotImplementedError

    def load(self, path: Path, cfg: dict, metrics: dict) -> LoadedPolicy:
        """The policy of the complete run dir ``path`` (``cfg``: its config.yaml, ``metrics``: metrics.json)."""
        raise NotImplementedError

    def samples(self, cfg: dict, metrics: dict, size: int) -> float:
        """Local-agent transitions drawn from the model while learning (NaN: none drawn).

        One unit for every algorithm: one local agent moved once by ``P_l`` (docs/model.md §1);
        global-state draws are not counted. Default: the run's ``train/samples`` metric.
        """
        return float(metrics.get(M.TRAIN_SAMPLES, math.nan))

    def check_env(self, config: Any, env: Any, n: int, k: int) -> None:
        """``ValueError`` naming the key if ``config`` (this algorithm's) cannot run on ``env``; default: any."""

    def resume_from(self, ckpt_path: Any, cfg: dict, n: int, k: int, device: str) -> str:
        """The checkpoint file to resume from, checked against this run; default: not resumable."""
        raise ValueError(f"ckpt_path is not supported by algo = '{self.name}' (only checkpointing algorithms "
                         "resume); rerun the same command")


ALGORITHMS: dict[str, Algorithm] = {}


def register_algorithm(algo: Algorithm) -> Algorithm:
    """Add ``algo`` under ``algo.name`` (replacing one of that name) and make ``algo=<name>`` a Hydra option."""
    for attr in ("name", "config", "artifact"):
        if not hasattr(algo, attr):
            raise ValueError(f"algorithm {type(algo).__name__} has no class attribute '{attr}'")
    if getattr(algo.config(), "name", None) != algo.name:
        raise ValueError(f"{algo.config.__name__}().name must equal the algorithm's name '{algo.name}'")
    ALGORITHMS[algo.name] = algo
    ConfigStore.instance().store(group="algo", name=algo.name, node=algo.config)
    return algo


def check_env_kind(algo: Algorithm, env: Any) -> None:
    """``ValueError`` in one line unless ``env``'s kind (local agents act or not) is the algorithm's."""
    acts = isinstance(env, LocalActionMDP)
    if acts != algo.local_actions:
        fits = sorted(name for name, a in ALGORITHMS.items() if a.local_actions == acts)
        kind = "act (LocalActionMDP)" if acts else "do not act (GlobalLocalMDP)"
        raise ValueError(f"algo = '{algo.name}' does not fit env '{getattr(env, 'name', '?')}', whose local agents "
                         f"{kind}; algorithms for it: {fits}")


def get_algorithm(name: Any) -> Algorithm:
    """The registered algorithm ``name``; ``ValueError`` listing the known ones otherwise."""
    if name not in ALGORITHMS:
        raise ValueError(f"algo = '{name}' is unknown; allowed: {sorted(ALGORITHMS)} (e.g. algo=tabular)")
    return ALGORITHMS[name]


def load_plugins(spec: str | None = None) -> list[str]:
    """Import the modules named in ``spec`` (default: ``$SQTORCH_PLUGINS``, comma-separated); returns them."""
    names = [s.strip() for s in (os.environ.get(PLUGINS_ENV, "") if spec is None else spec).split(",") if s.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ValueError(f"{PLUGINS_ENV}: module '{name}' cannot be imported: {e}") from e
    return names
