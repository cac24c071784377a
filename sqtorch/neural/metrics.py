"""Deprecated alias of :mod:`sqtorch.metrics` (moved in 0.2; this module goes in 0.3)."""

import warnings

from sqtorch.metrics import *  # noqa: F403
from sqtorch.metrics import ALL_TAGS, HPARAM_METRICS, OPTIMIZED_METRIC  # noqa: F401

warnings.warn("sqtorch.neural.metrics moved to sqtorch.metrics", DeprecationWarning, stacklevel=2)
