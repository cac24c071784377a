"""Vectorized simulator of the full n-agent system (SPEC §1): a batch of B rollouts x n agents.

Everything follows the device of the env tensors and draws from an explicit ``torch.Generator``
on that device, so a seed fixes every rollout.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sqtorch.envs.base import GlobalLocalMDP


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def sample_categorical(cdf_cols: Tensor, row: Tensor, u: Tensor) -> Tensor:
    """Inverse-CDF draw from row ``row`` of a CDF table: ``j`` with ``cdf[j-1] <= u < cdf[j]``.

    ``cdf_cols [K, R]`` is the transposed CDF table (column ``j`` contiguous, last column exactly
    1), ``row`` and ``u`` (uniform in ``[0, 1)``) have the same shape. Zero-probability outcomes
    are never drawn. Loops over the K outcomes (a state count, never an agent count), so no
    ``[..., K]`` tensor of gathered rows is materialized.
    """
    out = torch.zeros(u.shape, dtype=torch.int64, device=u.device)
    for j in range(cdf_cols.shape[0] - 1):
        out += cdf_cols[j].take(row) <= u
    return out


def cdf_columns(P: Tensor) -> Tensor:
    """``P [..., K]`` -> transposed row-CDF table ``[K, R]`` (last row exactly 1) for sampling."""
    cdf = P.reshape(-1, P.shape[-1]).cumsum(-1)
    cdf[:, -1] = 1.0
    return cdf.T.contiguous()


def sample_initial_state(
    env: GlobalLocalMDP, n: int, batch: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Uniform initial states: ``s_g [batch]`` and ``s_l [batch, n]`` (int64, env device)."""
    if n < 1:
        raise ValueError(f"n = {n} is outside the allowed range n >= 1")
    if batch < 1:
        raise ValueError(f"batch = {batch} is outside the allowed range batch >= 1")
    dev = env.device
    s_g = torch.randint(env.G, (batch,), generator=generator, device=dev)
    s_l = torch.randint(env.L, (batch, n), generator=generator, device=dev)
    return s_g, s_l


def _floyd_subset(n: int, k: int, batch: int, generator: torch.Generator) -> Tensor:
    """Floyd's algorithm: for ``j = n-k .. n-1`` draw ``t ~ U{0..j}``, keep ``t`` (``j`` if taken).

    Exactly k uniform integers per row (independent of anything but ``(n, k, batch)``) and
    ``O(k^2)`` work per row instead of ``O(n)``; the resulting set is a uniform k-subset.
    """
    out = torch.empty(batch, k, dtype=torch.int64, device=generator.device)
    for i in range(k):  # positions in the subset (k of them), not agents
        j = n - k + i
        t = torch.randint(j + 1, (batch,), generator=generator, device=generator.device)
        taken = (out[:, :i] == t[:, None]).any(1)
        out[:, i] = torch.where(taken, j, t)
    return out


def sample_subset(n: int, k: int, batch: int, generator: torch.Generator) -> Tensor:
    """A fresh uniform k-subset of ``{0..n-1}`` without replacement per row: ``[batch, k]``.

    Order within a row is not uniform (only the set is): use it for counts, not positions.
    ``k = n`` returns every agent without drawing; ``k^2 <= 4 n`` uses Floyd's algorithm
    (k draws per row); otherwise the top-k of n uniform keys. The number of draws depends only
    on ``(n, k, batch)``, which keeps common random numbers common across policies.
    """
    if not 1 <= k <= n:
        raise ValueError(f"k = {k} is outside the allowed range 1 <= k <= n = {n}")
    dev = generator.device
    if k == n:
        return torch.arange(n, device=dev).expand(batch, n).clone()
    if k * k <= 4 * n:
        return _floyd_subset(n, k, batch, generator)
    keys = torch.rand(batch, n, generator=generator, device=dev)
    return keys.topk(k, dim=1, sorted=False).indices


def step(
    env: GlobalLocalMDP,
    s_g: Tensor,
    s_l: Tensor,
    a_g: Tensor,
    generator: torch.Generator,
    cdf_g: Tensor | None = None,
    cdf_l: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One transition of the full system: returns ``(s_g', s_l', r(s, a_g))``.

    ``s_g [B]``, ``s_l [B, n]``, ``a_g [B]``. Every local agent moves independently with
    ``P_l[s_g, a_g, s_i]``; the global agent with ``P_g[s_g, a_g]``. Pass precomputed
    ``cdf_columns(env.P_g)`` / ``cdf_columns(env.P_l)`` to skip rebuilding them every step.
    """
    cdf_g = cdf_columns(env.P_g) if cdf_g is None else cdf_g
    cdf_l = cdf_columns(env.P_l) if cdf_l is None else cdf_l
    r = env.reward(s_g, s_l, a_g)
    ga = s_g * env.A + a_g  # [B]
    u_l = torch.rand(s_l.shape, generator=generator, device=s_l.device, dtype=torch.float64)
    s_l_next = sample_categorical(cdf_l, ga[:, None] * env.L + s_l, u_l)
    u_g = torch.rand(s_g.shape, generator=generator, device=s_g.device, dtype=torch.float64)
    s_g_next = sample_categorical(cdf_g, ga, u_g)
    return s_g_next, s_l_next, r
