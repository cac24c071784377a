"""A callback that sends the training process a signal at a chosen hook (tests of the run lifecycle)."""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning.pytorch as pl


class SignalAfterValidation(pl.Callback):
    """Sends ``signum`` to this process at the end of the first training-time validation at or after
    ``step``: after the batch hooks of that step, before Lightning's loop looks at its own SIGTERM flag."""

    def __init__(self, step: int, signum: int = int(signal.SIGTERM)) -> None:
        self.step, self.signum, self.sent = step, signum, False

    def on_validation_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if not self.sent and not trainer.sanity_checking and trainer.global_step >= self.step:
            self.sent = True
            os.kill(os.getpid(), self.signum)
