"""Microbenchmark: the machine's random-read rate, the ceiling of a tabular Bellman sweep.

    python bench/random_read.py [--mib 512] [--threads 2]

A sweep of the m-sample learner is ``|table| * m`` reads ``V[idx]`` at random positions of a
value vector much larger than the caches (k >= 6). This measures the same access pattern with
nothing else around it: ``torch.index_select`` of int32 random indices from a float64 array of
``--mib`` MiB, in chunks of 2^17 reads, on ``--threads`` Python threads (each with its own
output buffer; torch itself on one thread, as inside ``learn``). Also reported: the rate when
3 consecutive reads share a cache line (the learner's layout for 3 actions; docs/model.md §2),
the in-cache rate (a 1 MiB array), which bounds small k, and the rate from an array on
transparent huge pages (as the learner keeps ``V^T`` of large tables since issue 13).
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor

import torch

CHUNK = 1 << 17


def read_rate(
    numel: int, threads: int, line_share: int = 1, total: int = 1 << 25, reps: int = 3, huge: bool = False
) -> float:
    """Best-of-``reps`` random reads per second (float64 values, int32 indices; ``huge``: on huge pages)."""
    gen = torch.Generator().manual_seed(0)
    v = torch.rand(numel, dtype=torch.float64, generator=gen)
    if huge:
        from sqtorch.tabular.learner import huge_page_tensor

        v = huge_page_tensor(numel, torch.float64).copy_(v)
    base = torch.randint(0, numel - line_share, (total // line_share, 1), dtype=torch.int32, generator=gen)
    idx = (base + torch.arange(line_share, dtype=torch.int32)).view(-1)
    chunks = [idx[s : s + CHUNK] for s in range(0, len(idx), CHUNK)]
    outs = [torch.empty(CHUNK, dtype=torch.float64) for _ in range(threads)]

    def work(t: int) -> None:
        for c in chunks[t::threads]:
            torch.index_select(v, 0, c, out=outs[t][: len(c)])

    best = float("inf")
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in range(reps):
            t0 = time.perf_counter()
            list(pool.map(work, range(threads)))
            best = min(best, time.perf_counter() - t0)
    return len(idx) / best


def measure(mib: int = 512, threads: int = 2) -> dict:
    """Random-read rates (reads/s) for a ``mib`` MiB array and a 1 MiB (cache-resident) one."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        numel = mib * 2**20 // 8
        return dict(
            mib=mib,
            threads=threads,
            random_reads_per_s=read_rate(numel, threads),
            random_reads_per_s_1thread=read_rate(numel, 1),
            line_shared_3_reads_per_s=read_rate(numel, threads, line_share=3),
            in_cache_reads_per_s=read_rate(2**20 // 8, threads),
            huge_page_reads_per_s=read_rate(numel, threads, huge=True),
        )
    finally:
        torch.set_num_threads(prev)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mib", type=int, default=512, help="size of the value array (MiB)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    print(json.dumps(measure(a.mib, a.threads)))


if __name__ == "__main__":
    main()
