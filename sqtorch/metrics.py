"""TensorBoard / checkpoint / sweeper metric names of both algorithms, in one place (docs/model.md §3, §5).

Every ``self.log`` call, the ``ModelCheckpoint`` monitor, ``metrics.json`` and the value returned to
Hydra sweepers use these constants, so a renamed tag cannot silently break a monitor.
"""

from __future__ import annotations

TRAIN_TD_LOSS = "train/td_loss"
TRAIN_Q_MEAN = "train/q_mean"
TRAIN_TARGET_MEAN = "train/target_mean"
TRAIN_SAMPLES = "train/samples"
TRAIN_WALL_SECONDS = "train/wall_seconds"
TRAIN_PARAMETERS = "train/parameters"
TRAIN_GLOBAL_STEP = "train/global_step"
SAMPLES_PER_SECOND = "charts/samples_per_second"
LEARNING_RATE = "charts/learning_rate"

EVAL_RETURN = "eval/return"
EVAL_RETURN_CI = "eval/return_ci95"
EVAL_GAP = "eval/gap"
EVAL_GAP_TABULAR = "eval/gap_vs_tabular"
EVAL_AGREEMENT = "eval/agreement"
EVAL_Q_REL_ERROR = "eval/q_rel_error"

TABULAR_RESIDUAL = "tabular/bellman_residual"
TABULAR_ELAPSED = "tabular/elapsed_seconds"
TABULAR_TABLE_SIZE = "tabular/table_entries"
TABULAR_LEARN_SECONDS = "tabular/learn_seconds"
TABULAR_BUILD_SECONDS = "tabular/build_seconds"
TABULAR_ITERATIONS = "tabular/iterations"
TABULAR_CONVERGED = "tabular/converged"

#: The metric a Hydra sweeper optimizes and ``train`` returns (higher is better).
OPTIMIZED_METRIC = EVAL_RETURN

#: Metrics registered with the TensorBoard HPARAMS tab (``default_hp_metric=False``).
HPARAM_METRICS = (EVAL_RETURN, EVAL_GAP, EVAL_GAP_TABULAR, EVAL_AGREEMENT)

ALL_TAGS = (
    TRAIN_TD_LOSS,
    TRAIN_Q_MEAN,
    TRAIN_TARGET_MEAN,
    TRAIN_SAMPLES,
    TRAIN_WALL_SECONDS,
    TRAIN_PARAMETERS,
    TRAIN_GLOBAL_STEP,
    SAMPLES_PER_SECOND,
    LEARNING_RATE,
    EVAL_RETURN,
    EVAL_RETURN_CI,
    EVAL_GAP,
    EVAL_GAP_TABULAR,
    EVAL_AGREEMENT,
    EVAL_Q_REL_ERROR,
    TABULAR_RESIDUAL,
    TABULAR_ELAPSED,
    TABULAR_TABLE_SIZE,
    TABULAR_LEARN_SECONDS,
    TABULAR_BUILD_SECONDS,
    TABULAR_ITERATIONS,
    TABULAR_CONVERGED,
)
