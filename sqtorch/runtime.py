"""Process-level helpers shared by every layer: torch threads, seed streams, units, statistics."""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from sqtorch.checks import check_int

GiB = float(1 << 30)
Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def derive_seed(seed: int, *stream: int) -> int:
    """A well-mixed non-negative 63-bit seed for ``stream`` of ``seed`` (independent generators)."""
    state = np.random.SeedSequence([int(seed), *map(int, stream)]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def sync_free(t: torch.Tensor) -> bool:
    """Whether hot loops must not read ``t``'s values on the host (``int(t)``, ``nonzero``, bool masks).

    True off the CPU: on CUDA each such read stalls the stream until the queued kernels finish, so
    per-step loops skip value checks there (done once at set-up) and resolve data-dependent cases
    with ``torch.where`` instead of ``nonzero``. tests/test_execution.py counts the host reads of the
    step loop on the CPU with this set to True.
    """
    return t.device.type != "cpu"


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[int]:
    """Run the block with ``num_threads`` torch CPU threads (``None``: unchanged), then restore.

    Yields the thread count that was set before, so a caller may run its own pool of that size
    while torch ops stay single-threaded (``torch_threads(1)``). On a CPU shared with other busy
    processes one thread is often faster than several (OpenMP barriers wait for preempted threads).
    """
    before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(check_int("num_threads", num_threads, 1, "torch CPU threads"))
    try:
        yield before
    finally:
        torch.set_num_threads(before)


@contextmanager
def no_deterministic_fill() -> Iterator[None]:
    """Run the block without deterministic mode's fill of new memory, then restore the setting.

    Under ``torch.use_deterministic_algorithms(True)`` (the Trainer's ``deterministic=True``) torch
    fills every tensor it allocates uninitialized (``torch.empty`` and the internal allocations
    of many ops) with NaN or the integer maximum, so that a read of uninitialized memory is
    reproducible. A block that never reads uninitialized memory computes the same values
    either way (``torch.utils.deterministic.fill_uninitialized_memory``'s own documentation);
    sqtorch's training step is such a block, and skipping the ~150 fills of each step saves
    time (bench/RESULTS.md). tests/neural/test_train_step.py trains with and without the fill
    and compares the weights bit for bit.
    """
    flags = torch.utils.deterministic
    before = flags.fill_uninitialized_memory
    flags.fill_uninitialized_memory = False
    try:
        yield
    finally:
        flags.fill_uninitialized_memory = before


@contextmanager
def no_autograd_dispatch() -> Iterator[None]:
    """Run the block's ops below autograd's dispatch layer: the same kernels and values, less overhead per op.

    What ``torch.inference_mode`` does inside (``torch._C._AutoDispatchBelowADInplaceOrView``),
    without marking the tensors it makes as inference tensors, so they can be used in a graph later.
    Nothing inside records a graph, and in-place ops inside do not bump version counters: use it
    only for a block whose results no gradient flows through and which modifies in place only
    tensors it made itself (sampling a batch, a target without gradients). Outside that rule,
    version-keyed caches (:meth:`sqtorch.neural.deepsets.DeepSetsQ.frozen`) and autograd's own checks
    would miss a change. A torch without the guard runs the block under ``torch.no_grad()``.
    """
    guard = getattr(torch._C, "_AutoDispatchBelowADInplaceOrView", None)
    with guard() if guard is not None else torch.no_grad():
        yield


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Create ``path`` whole or not at all: ``write(f)`` into a temporary file beside it, fsync, rename.

    A kill at any instant leaves the previous version of ``path`` (or none), never a torn file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_state(path: str | Path, state: dict) -> None:
    """``torch.save(state)`` to ``path`` whole or not at all (:func:`atomic_write`)."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_state(path: str | Path, keys: tuple[str, ...], what: str) -> dict:
    """The dict saved by :func:`save_state`, loaded with ``weights_only=True`` (no code from the file runs).

    A torn, foreign or malicious file, or one without every key of ``keys``, is one ``ValueError``
    naming the file and ``what`` it should be.
    """
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"{path}: not a readable {what} ({type(e).__name__}: {first})") from e
    if not isinstance(d, dict) or any(key not in d for key in keys):
        raise ValueError(f"{path}: not a {what} (needs keys {list(keys)})")
    return d


def write_text_atomic(path: str | Path, text: str) -> None:
    """:func:`atomic_write` of a UTF-8 text file."""
    atomic_write(path, lambda f: f.write(text.encode()))


class Interrupted(BaseException):
    """A run stopped by SIGTERM/SIGINT after saving its state; the process should exit ``128 + signum``.

    A ``BaseException`` (like ``KeyboardInterrupt``), so that a Hydra sweep stops instead of
    starting its remaining jobs on a machine that is being taken away.
    """

    def __init__(self, signum: int, detail: str = "") -> None:
        self.signum, self.detail = int(signum), detail
        super().__init__(f"interrupted by {signal.Signals(self.signum).name}{': ' + detail if detail else ''}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class SignalFlag:
    """Records SIGTERM / SIGINT instead of dying, so a loop can stop at a safe point (see :func:`catch_signals`)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, frame: object) -> None:
        self.signum = signum

    def check(self, detail: str = "") -> None:
        """Raise :class:`Interrupted` if a signal has arrived."""
        if self.signum is not None:
            raise Interrupted(self.signum, detail)


@contextmanager
def catch_signals(signums: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[SignalFlag]:
    """Within the block, SIGTERM and SIGINT (or ``signums``) set a :class:`SignalFlag` instead of ending the process.

    The signals are unblocked for the block, so one that arrived while the process held them
    blocked (``signal.pthread_sigmask``, e.g. during start-up) is recorded on entry; the previous
    mask is restored on exit.
    """
    flag = SignalFlag()
    previous = {s: signal.getsignal(s) for s in signums}
    for s in signums:
        signal.signal(s, flag)
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, signums)  # a signal held back until now arrives here
    try:
        yield flag
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for s, handler in previous.items():
            signal.signal(s, handler)
