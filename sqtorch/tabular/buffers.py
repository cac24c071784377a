"""The tabular learner's worker pool and scratch memory.

Work is cut into fixed chunks (:func:`chunks`), so results never depend on the number of threads;
:func:`run_tasks` runs them on one persistent pool (torch releases the GIL inside its ops). Each
thread keeps its scratch tensors between chunks and sweeps (:class:`ScratchBuffers`), and large
random-read arrays live on transparent huge pages (:func:`huge_page_tensor`).
"""

from __future__ import annotations

import mmap
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import TypeVar

import torch
from torch import Tensor

T_ = TypeVar("T_")
PARALLEL_MIN_WORK = 1 << 22  # below this many element-ops a thread pool costs more than it saves


def run_tasks(fn: Callable[[T_], None], tasks: list[T_], work: int, workers: int) -> None:
    """``fn(task)`` for every task, on ``workers`` threads when ``work`` (element-ops) is large enough.

    Tasks must write disjoint outputs; their order of execution is unspecified.
    """
    if work < PARALLEL_MIN_WORK or workers < 2 or len(tasks) < 2:
        for task in tasks:
            fn(task)
        return
    list(_pool(workers).map(fn, tasks))


@lru_cache(maxsize=4)
def _pool(workers: int) -> ThreadPoolExecutor:
    """A persistent pool (its threads keep their scratch buffers between sweeps)."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sqtorch-tabular")


def chunks(n_rows: int, size: int) -> list[tuple[int, int]]:
    """``[s, e)`` row ranges of ``size`` rows (the last one shorter) covering ``range(n_rows)``."""
    return [(s, min(s + size, n_rows)) for s in range(0, n_rows, size)]


class ScratchBuffers(threading.local):
    """Per-thread scratch tensors by name, reused across chunks and sweeps (no allocation per chunk)."""

    def get(self, name: str, numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """A 1-D view of ``numel`` uninitialized elements of this thread's buffer ``name`` (grown when too small)."""
        buf = self.__dict__.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
            buf = self.__dict__[name] = torch.empty(numel, dtype=dtype, device=device)
        return buf[:numel]


def huge_page_tensor(numel: int, dtype: torch.dtype) -> Tensor:
    """An uninitialized 1-D CPU tensor in anonymous memory advised ``MADV_HUGEPAGE`` (plain memory elsewhere).

    Linux backs it with 2 MiB pages when transparent huge pages are ``always`` or ``madvise``, so
    random reads over it miss the TLB less; the mapping lives as long as the tensor
    (``torch.frombuffer`` keeps it referenced).
    """
    nbytes = numel * torch.empty(0, dtype=dtype).element_size()
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is None:
        return torch.empty(numel, dtype=dtype)
    mem = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # private: shared memory gets no THP
    try:
        mem.madvise(advice)
    except OSError:
        pass  # THP disabled: still an ordinary buffer
    with warnings.catch_warnings():  # "non-writable buffer": an anonymous mmap is writable
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(mem, dtype=dtype, count=numel)


__all__ = ["ScratchBuffers", "chunks", "huge_page_tensor", "run_tasks"]
