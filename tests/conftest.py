"""Shared fixtures: compose the Hydra config of ``conf/`` the way ``train.py`` does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

import sqtorch.experiment  # noqa: F401  (registers the typed config groups)

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_cfg(*overrides, out=None)`` -> composed config writing into ``tmp_path``."""

    def _make(*overrides: str, out: Path | None = None) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(
                "config",
                overrides=[f"paths.output_dir={out or tmp_path}", "threads=1", *overrides],
            )

    yield _make
    GlobalHydra.instance().clear()


@pytest.fixture
def one_thread():
    """One torch thread: no OpenMP barriers waiting on threads that other processes preempt."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
