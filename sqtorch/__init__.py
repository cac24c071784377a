"""sqtorch: SUBSAMPLE-Q (Anand & Qu, arXiv 2403.00222) for one global agent over n local agents."""

from sqtorch.envs import GlobalLocalMDP, make_env, register_env

__version__ = "0.3.0"
__all__ = ["GlobalLocalMDP", "make_env", "register_env", "__version__"]
