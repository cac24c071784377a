"""Vectorized simulator of the full n-agent system (docs/model.md §1): a batch of B rollouts x n agents.

Everything follows the device of the env tensors and draws from an explicit ``torch.Generator``
on that device, so a seed fixes every rollout.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, overload

import torch
from torch import Tensor

from sqtorch import runtime
from sqtorch.checks import check_k
from sqtorch.envs.base import GlobalLocalMDP


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


GATHER_MAX_K = 8  # sample_categorical: outcomes up to which the boundaries are gathered at once


def sample_categorical(cdf_cols: Tensor, row: Tensor, u: Tensor) -> Tensor:
    """Inverse-CDF draw from row ``row`` of a CDF table: ``j`` with ``cdf[j-1] <= u < cdf[j]``.

    ``cdf_cols [K, R]`` is the transposed CDF table (column ``j`` contiguous, last column exactly
    1), ``row`` and ``u`` (uniform in ``[0, 1)``) have the same shape. Zero-probability outcomes
    are never drawn. The draw is the number of inner boundaries ``cdf[j] <= u``: for
    ``K <= GATHER_MAX_K`` counted on one gathered ``[K - 1, ...]`` tensor (four ops whatever K),
    else by a loop over the K outcomes (a state count, never an agent count) that gathers no rows.
    """
    if cdf_cols.shape[0] <= GATHER_MAX_K:
        return (cdf_cols[:-1, row] <= u).sum(0)
    out = torch.zeros(u.shape, dtype=torch.int64, device=u.device)
    for j in range(cdf_cols.shape[0] - 1):
        out += cdf_cols[j].take(row) <= u
    return out


def cdf_columns(P: Tensor) -> Tensor:
    """``P [..., K]`` -> transposed row-CDF table ``[K, R]`` (last row exactly 1) for sampling."""
    cdf = P.reshape(-1, P.shape[-1]).cpu().cumsum(-1)  # once per env, on the CPU: deterministic anywhere
    cdf[:, -1] = 1.0
    return cdf.T.contiguous().to(P.device)


def sample_initial_state(
    env: GlobalLocalMDP, n: int, batch: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Initial states ``s_g [batch]`` (uniform) and ``s_l [batch, n]`` (int64, env device).

    Every local state is drawn i.i.d. from ``env.init_l`` (the type mix of sqtorch/envs/types.py), or
    uniformly when it is ``None`` (docs/model.md §5). The uniform case draws exactly as before
    ``init_l`` existed (same seed, same states); a non-uniform ``init_l`` uses one float64 uniform
    per agent and inverse-CDF sampling (a binary search, no ``[batch, n, L]`` tensor).
    """
    if n < 1:
        raise ValueError(f"n = {n} is outside the allowed range n >= 1")
    if batch < 1:
        raise ValueError(f"batch = {batch} is outside the allowed range batch >= 1")
    dev = env.device
    s_g = torch.randint(env.G, (batch,), generator=generator, device=dev)
    if env.init_l is None:
        s_l = torch.randint(env.L, (batch, n), generator=generator, device=dev)
    else:
        u = torch.rand((batch, n), generator=generator, device=dev, dtype=torch.float64)
        cdf = env.init_l.cumsum(0)
        cdf[-1] = 1.0
        s_l = torch.searchsorted(cdf, u, right=True)  # x with cdf[x-1] <= u < cdf[x]: never a zero-probability x
    return s_g, s_l


FLOYD_ONE_DRAW_MAX = 1 << 28  # CPU randint(h) below this h is `u mod h` of one 32-bit draw u (tested)


@lru_cache(maxsize=64)
def _floyd_moduli(n: int, k: int, device: torch.device) -> tuple[int, Tensor] | None:
    """``(lcm(n-k+1, .., n), [[n-k+1], .., [n]])`` for :func:`_floyd_subset`'s one draw, or ``None``
    where the lcm reaches :data:`FLOYD_ONE_DRAW_MAX` (CPU ``randint`` draws otherwise there)."""
    lcm = math.lcm(*range(n - k + 1, n + 1))
    return (lcm, torch.arange(n - k + 1, n + 1, device=device)[:, None]) if lcm < FLOYD_ONE_DRAW_MAX else None


def _floyd_subset(n: int, k: int, batch: int, generator: torch.Generator) -> Tensor:
    """Floyd's algorithm: for ``j = n-k .. n-1`` draw ``t ~ U{0..j}``, keep ``t`` (``j`` if taken).

    Exactly k uniform integers per row (independent of anything but ``(n, k, batch)``) and
    ``O(k^2)`` work per row instead of ``O(n)``; the resulting set is a uniform k-subset.
    The k columns are filled in place in a ``[k, batch]`` buffer (no stack); returns ``[batch, k]``.

    On the CPU, ``randint(h)`` is ``u mod h`` of one 32-bit draw ``u`` per value, drawn in memory
    order, for ``h <`` :data:`FLOYD_ONE_DRAW_MAX`. So while ``lcm(n-k+1, .., n)`` is below it, the k
    columns come from one ``randint(lcm, (k, batch))`` reduced ``mod j + 1`` per column (``h | lcm``,
    hence ``(u mod lcm) mod h = u mod h``): the same values and generator state as k separate draws,
    in two ops (tested against the column-by-column draws).
    """
    dev = generator.device
    moduli = _floyd_moduli(n, k, dev) if dev.type == "cpu" else None
    if moduli is not None:
        cols = torch.randint(moduli[0], (k, batch), generator=generator, device=dev).remainder_(moduli[1])
    else:
        cols = torch.empty(k, batch, dtype=torch.int64, device=dev)
    for i, t in enumerate(cols.unbind(0)):  # positions in the subset (k of them), not agents
        j = n - k + i
        if moduli is None:
            torch.randint(j + 1, (batch,), generator=generator, device=dev, out=t)
        if i:
            t.masked_fill_((cols[:i] == t).any(0), j)
    return cols.T.contiguous()


def sample_subset(n: int, k: int, batch: int, generator: torch.Generator) -> Tensor:
    """A fresh uniform k-subset of ``{0..n-1}`` without replacement per row: ``[batch, k]``.

    Order within a row is not uniform (only the set is): use it for counts, not positions.
    ``k = n`` returns every agent without drawing; ``k^2 <= 4 n`` uses Floyd's algorithm
    (k draws per row); otherwise the top-k of n uniform keys. The number of draws depends only
    on ``(n, k, batch)``, which keeps common random numbers common across policies.
    """
    check_k(k, n)
    dev = generator.device
    if k == n:
        return torch.arange(n, device=dev).expand(batch, n).clone()
    if k * k <= 4 * n:
        return _floyd_subset(n, k, batch, generator)
    keys = torch.rand(batch, n, generator=generator, device=dev)
    return keys.topk(k, dim=1, sorted=False).indices


def gather_agents(s_l: Tensor, idx: Tensor) -> Tensor:
    """The agents ``idx [B, k]`` of ``s_l [B, n]`` or ``[B, n, d]``: ``[B, k]`` or ``[B, k, d]``."""
    if s_l.dim() == 3:
        return s_l.gather(1, idx[:, :, None].expand(-1, -1, s_l.shape[2]))
    return s_l.gather(1, idx)


LOOKUP_ENTRIES = 1 << 18  # target size of a bucket table (rows x 2^bits): 256 KiB of uint8
IMPURE = 255  # bucket marker: an outcome boundary lies inside, resolve by the exact CDF


LOOKUP_MAX_CUTS = 2  # LookupSampler: CDF boundaries inside one bucket up to which it compares thresholds
LOOKUP_MIN_BITS = 4  # LookupSampler: at least 2^4 buckets per row


@dataclass(frozen=True)
class LookupSampler:
    """Exact inverse-CDF sampling through a bucket table (draws as :func:`sample_categorical`).

    ``u in [0, 1)`` falls in bucket ``q = floor(u 2^bits)`` (exact in float64). For a bucket that
    no CDF boundary cuts, ``table[row, q]`` is the outcome for every ``u`` in it; the few buckets
    that a boundary cuts hold ``IMPURE``. The draw is the number of inner CDF values ``b <= u``:
    ``base[row, q]`` counts those at or below the bucket's start, and each of the at most
    ``LOOKUP_MAX_CUTS`` boundaries strictly inside the bucket, ``cuts[j, row, q]`` (2.0 where there
    is none), adds ``u >= b``: two gathers and one comparison per cut level, the same for every
    ``u`` and with no data-dependent branch. ``cuts`` is ``None`` when some bucket has more cuts;
    then impure buckets are resolved by comparing ``u`` with the CDF. Identical draws for identical ``u``.
    """

    table: Tensor  # [R * 2^bits] uint8
    cdf_cols: Tensor  # [K, R] as from cdf_columns
    bits: int
    base: Tensor | None = None  # [R * 2^bits] uint8: #{b <= q / 2^bits}
    cuts: Tensor | None = None  # [C, R * 2^bits] float64, C <= LOOKUP_MAX_CUTS: boundaries inside the bucket

    @classmethod
    def build(cls, P: Tensor, entries: int = LOOKUP_ENTRIES, compact: bool = False) -> LookupSampler:
        """Table for the rows of ``P [..., K]`` (``K <= 254``), by counting boundaries per bucket.

        ``2^bits`` buckets per row with ``R * 2^bits`` about ``entries``; with ``compact`` the fewest
        buckets (at least ``2^LOOKUP_MIN_BITS`` per row, at most that many) for which no bucket holds
        more than ``LOOKUP_MAX_CUTS`` boundaries, so :meth:`sample_uint8` compares thresholds and its
        tables stay in cache (the same draws at any size; without such a size, the ``entries`` table).
        """
        cdf_cols = cdf_columns(P)
        K, R = cdf_cols.shape
        if K >= IMPURE:
            raise ValueError(f"LookupSampler supports at most {IMPURE - 1} outcomes, got {K}")
        bits = max(LOOKUP_MIN_BITS, min(16, (entries // max(R, 1)).bit_length() - 1))
        for small in range(LOOKUP_MIN_BITS, bits) if compact else ():  # at most 12 cheap builds, once per kernel
            sampler = cls._build(cdf_cols, small)
            if sampler.cuts is not None:
                return sampler
        return cls._build(cdf_cols, bits)

    @classmethod
    def _build(cls, cdf_cols: Tensor, bits: int) -> LookupSampler:
        """The table of ``cdf_cols [K, R]`` at ``2^bits`` buckets per row.

        Bucket q of row r holds outcome ``lo = #{inner CDF values b <= q / s}`` (``s = 2^bits``)
        unless ``hi = #{b < (q + 1) / s}`` is larger (a boundary cuts it: ``IMPURE``). As ``b s`` is
        exact, ``b <= q / s`` iff ``ceil(b s) <= q`` and ``b < (q + 1) / s`` iff ``floor(b s) <= q``:
        both counts are cumulative histograms, no binary search. A boundary cuts bucket
        ``floor(b s)`` iff ``b s`` is not an integer (and the bucket exists, ``b < 1``).
        """
        R = cdf_cols.shape[1]
        device = cdf_cols.device
        s = 1 << bits
        inner = cdf_cols[:-1].T  # [R, K - 1] inner boundaries, nondecreasing along a row
        scaled = inner.mul(s)  # in bucket units, exact

        def count_le(key: Tensor) -> Tensor:  # [R, 2^bits]: boundaries with key <= q
            hist = torch.zeros(R, s + 2, dtype=torch.int32, device=device)
            hist.scatter_add_(1, key.clamp(0, s + 1).long(), torch.ones_like(key, dtype=torch.int32))
            return hist.cumsum_(1)[:, :s]

        floor = scaled.floor()
        lo, hi = count_le(scaled.ceil()), count_le(floor)
        table = torch.where(hi > lo, IMPURE, lo).to(torch.uint8).reshape(-1)
        # the cutting boundaries, in row-major order: sorted by bucket, equal buckets adjacent
        is_cut = (scaled != floor) & (floor < s)
        bucket = (torch.arange(R, device=device)[:, None] * s + floor.long())[is_cut]
        pos = torch.arange(len(bucket), device=device)
        first = torch.ones_like(bucket, dtype=torch.bool)
        first[1:] = bucket[1:] != bucket[:-1]
        level = pos - torch.where(first, pos, 0).cummax(0).values  # j-th cut of its bucket
        levels = int(level.max()) + 1 if len(level) else 0  # one host read, at build time
        if levels > LOOKUP_MAX_CUTS:
            return cls(table=table, cdf_cols=cdf_cols, bits=bits)
        cuts = torch.full((levels, R * s), 2.0, dtype=cdf_cols.dtype, device=device)
        cuts[level, bucket] = inner[is_cut]
        return cls(table=table, cdf_cols=cdf_cols, bits=bits, base=lo.to(torch.uint8).reshape(-1), cuts=cuts)

    def sample(self, row: Tensor, u: Tensor) -> Tensor:
        """Outcome index (int64) for rows ``row`` and uniforms ``u`` (same shape)."""
        return self.sample_uint8(row, u).long()

    def sample_uint8(self, row: Tensor, u: Tensor) -> Tensor:
        """As :meth:`sample`, as uint8 (outcomes < 255): a quarter of the memory traffic downstream."""
        scale = 2**self.bits
        idx = (u * scale).long().add_(row, alpha=scale)  # row * 2^bits + bucket, one fused pass
        if self.cuts is not None:  # base + one comparison per cut level: no host read, no branch on values
            flat, u_flat = idx.reshape(-1), u.reshape(-1)
            out = self.base.index_select(0, flat)  # type: ignore[union-attr]
            for cut in self.cuts:  # at most LOOKUP_MAX_CUTS levels (boundaries per bucket), not agents
                out += u_flat >= cut.index_select(0, flat)
            return out.view(idx.shape)
        out = self.table.index_select(0, idx.reshape(-1)).reshape(idx.shape)  # take()'s values, a faster kernel
        if runtime.sync_free(out):  # resolve every impure bucket without nonzero(): no host sync per step
            exact = sample_categorical(self.cdf_cols, row, u).to(torch.uint8)
            return torch.where(out == IMPURE, exact, out)
        flat = out.view(-1)
        bad = torch.nonzero(flat == IMPURE).squeeze(1)
        if bad.numel():
            draws = sample_categorical(self.cdf_cols, row.reshape(-1)[bad], u.reshape(-1)[bad])
            flat[bad] = draws.to(torch.uint8)
        return out


_CACHES: dict[str, dict[int, tuple[Tensor, Any]]] = {"sampler": {}, "cdf": {}}
CACHE_SIZE = 16  # transition tensors remembered per cache (a few envs at a time)


def _cached(kind: str, P: Tensor, build: Callable[[Tensor], Any]) -> Any:
    """``build(P)``, computed once per transition tensor (keyed by identity, the tensor kept alive with it)."""
    cache = _CACHES[kind]
    hit = cache.get(id(P))
    if hit is not None and hit[0] is P:
        return hit[1]
    if len(cache) >= CACHE_SIZE:
        cache.pop(next(iter(cache)))
    value = build(P)
    cache[id(P)] = (P, value)
    return value


def lookup_sampler(P: Tensor) -> LookupSampler:
    """Cached :class:`LookupSampler` of the transition tensor ``P``."""
    return _cached("sampler", P, lambda p: LookupSampler.build(p, compact=True))


def cached_cdf_columns(P: Tensor) -> Tensor:
    """Cached :func:`cdf_columns` of ``P``: built once, no host read per step."""
    return _cached("cdf", P, cdf_columns)


def local_step(env: GlobalLocalMDP, s_g: Tensor, s_l: Tensor, a_g: Tensor, generator: torch.Generator) -> Tensor:
    """Next local states ``s_l' [B, m]``: agent i moves with ``P_l[s_g, a_g, s_i]``, one float64 uniform each.

    The local half of :func:`step` (same draws): for any number ``m`` of agents.
    """
    row = s_l + ((s_g * env.A + a_g) * env.L)[:, None]
    u_l = torch.rand(s_l.shape, generator=generator, device=s_l.device, dtype=torch.float64)
    if env.L < IMPURE:
        return lookup_sampler(env.P_l).sample(row, u_l)
    return sample_categorical(cached_cdf_columns(env.P_l), row, u_l)


def global_step(env: GlobalLocalMDP, s_g: Tensor, a_g: Tensor, generator: torch.Generator) -> Tensor:
    """Next global states ``s_g' [B]`` drawn from ``P_g[s_g, a_g]`` with one float64 uniform per row."""
    u_g = torch.rand(s_g.shape, generator=generator, device=s_g.device, dtype=torch.float64)
    return sample_categorical(cached_cdf_columns(env.P_g), s_g * env.A + a_g, u_g)


@overload
def step(
    env: GlobalLocalMDP, s_g: Tensor, s_l: Tensor, a_g: Tensor, generator: torch.Generator,
    cdf_g: Tensor | None = ..., cdf_l: Tensor | None = ..., reward: Literal[True] = ...,
) -> tuple[Tensor, Tensor, Tensor]: ...
@overload
def step(
    env: GlobalLocalMDP, s_g: Tensor, s_l: Tensor, a_g: Tensor, generator: torch.Generator,
    cdf_g: Tensor | None = ..., cdf_l: Tensor | None = ..., *, reward: Literal[False],
) -> tuple[Tensor, Tensor, None]: ...
def step(
    env: GlobalLocalMDP,
    s_g: Tensor,
    s_l: Tensor,
    a_g: Tensor,
    generator: torch.Generator,
    cdf_g: Tensor | None = None,
    cdf_l: Tensor | None = None,
    reward: bool = True,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One transition of the full system: returns ``(s_g', s_l', r(s, a_g))`` (``r`` is ``None``
    with ``reward=False``; the draws are the same either way).

    ``s_g [B]``, ``s_l [B, n]``, ``a_g [B]``. Every local agent moves independently with
    ``P_l[s_g, a_g, s_i]``; the global agent with ``P_g[s_g, a_g]``. Exactly one float64 uniform
    per local agent and one per row are drawn, whatever the actions (common random numbers).
    Local moves use the cached bucket table of ``env.P_l`` (:class:`LookupSampler`, same draws
    as inverse-CDF sampling); ``cdf_l`` is accepted for compatibility and used only if the
    table cannot be built. Pass ``cdf_g = cdf_columns(env.P_g)`` to skip rebuilding it.
    """
    cdf_g = cdf_columns(env.P_g) if cdf_g is None else cdf_g
    ga = s_g * env.A + a_g  # [B]
    row = s_l + (ga * env.L)[:, None]  # [B, n] row of (g, a, x) in P_l and r_l
    r = env.r_g[s_g, a_g] + env.r_l.reshape(-1).take(row).mean(-1) if reward else None  # docs/model.md §1
    u_l = torch.rand(s_l.shape, generator=generator, device=s_l.device, dtype=torch.float64)
    if env.L < IMPURE:
        s_l_next = lookup_sampler(env.P_l).sample(row, u_l)
    else:
        s_l_next = sample_categorical(cdf_columns(env.P_l) if cdf_l is None else cdf_l, row, u_l)
    u_g = torch.rand(s_g.shape, generator=generator, device=s_g.device, dtype=torch.float64)
    s_g_next = sample_categorical(cdf_g, ga, u_g)
    return s_g_next, s_l_next, r
