"""DeepSets Q-network ``Q_theta(s_g, {s_i}_{i in Delta}) in R^A`` (docs/model.md §3).

``phi`` encodes each sampled agent from ``onehot(s_i)`` (optionally concatenated with
``onehot(s_g)``); the encodings are pooled over Delta (mean by default, so Q depends on the sampled
agents only through the empirical distribution ``F = c / k`` exactly like the tabular Q of docs/model.md §2,
and one network can be evaluated at any k); ``rho(pooled, embed(s_g))`` gives one value per global
action.

Because the per-agent input is one-hot, ``phi`` takes only ``L`` (or ``G * L``) distinct values.
:meth:`DeepSetsQ.forward_counts` therefore evaluates ``phi`` once per local state and pools with
count weights: the same function as the per-agent :meth:`DeepSetsQ.forward` (tested), but its
cost does not grow with k. With mean or sum pooling it also folds the first (linear) layer of
``rho`` into that table, so a row's first hidden layer is one small matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice

import torch
from torch import Tensor, nn

from sqtorch.checks import check_int
from sqtorch.envs.base import GlobalLocalMDP

POOLINGS = ("mean", "sum", "max")
DENSE_POOL_MAX = 1024  # widest G*L pooled by one [B, G*(L+1)] product; wider tables gather per row


@dataclass
class NetConfig:
    """DeepSets architecture (``algo.net.*``; docs/model.md §3)."""

    hidden: int = 64  # width of phi and rho; size of the pooled encoding
    embed_dim: int = 16  # embedding of s_g fed to rho
    phi_layers: int = 2
    rho_layers: int = 2
    pooling: str = "mean"  # mean (one net for every k) | sum | max
    global_in_phi: bool = True  # phi sees onehot(s_g) as well as onehot(s_i)

    def __post_init__(self) -> None:
        for key in ("hidden", "embed_dim", "phi_layers", "rho_layers"):
            check_int(f"algo.net.{key}", getattr(self, key), 1, "a positive integer")
        if self.pooling not in POOLINGS:
            raise ValueError(f"algo.net.pooling = '{self.pooling}' is unknown; allowed: {list(POOLINGS)}")


def q_scale_of(env: GlobalLocalMDP) -> float:
    """``max |r| / (1 - gamma)``: the size of any Q value, used to keep network outputs O(1)."""
    r_max = float(env.r_g.abs().max() + env.r_l.abs().max())
    return max(r_max, 1e-6) / (1.0 - env.gamma)


def mlp(d_in: int, hidden: int, d_out: int, layers: int) -> nn.Sequential:
    """``layers`` linear layers with ReLU between them (``layers >= 1``)."""
    if layers < 1:
        raise ValueError(f"layers = {layers} is outside the allowed range layers >= 1")
    dims = [d_in] + [hidden] * (layers - 1) + [d_out]
    mods: list[nn.Module] = []
    for i in range(layers):
        mods.append(nn.Linear(dims[i], dims[i + 1]))
        if i < layers - 1:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


class DeepSetsQ(nn.Module):
    """Permutation-invariant Q-network over (global state, k sampled local states) (docs/model.md §3).

    Args:
        G: number of global states.
        L: number of local states.
        A: number of global actions.
        net: the architecture (:class:`NetConfig`); or its fields as keyword arguments.
        q_scale: the output is ``q_offset + q_scale * rho(...)`` so the network works with O(1)
            numbers (set from the reward range and gamma by the LightningModule).
        q_offset: see ``q_scale``.
    """

    def __init__(
        self,
        G: int,
        L: int,
        A: int,
        net: NetConfig | None = None,
        q_scale: float = 1.0,
        q_offset: float = 0.0,
        **net_fields: object,
    ) -> None:
        super().__init__()
        cfg = net if net is not None else NetConfig(**net_fields)  # type: ignore[arg-type]
        self.G, self.L, self.A = G, L, A
        self.pooling = cfg.pooling
        self.global_in_phi = cfg.global_in_phi
        self.q_scale, self.q_offset = float(q_scale), float(q_offset)
        self.phi = mlp(L + (G if cfg.global_in_phi else 0), cfg.hidden, cfg.hidden, cfg.phi_layers)
        self.embed = nn.Embedding(G, cfg.embed_dim)
        self.rho = mlp(cfg.hidden + cfg.embed_dim, cfg.hidden, A, cfg.rho_layers)
        # phi's every input, row g * L + x (x without global_in_phi); not saved in checkpoints
        x = torch.arange(L)
        if cfg.global_in_phi:
            inputs = self._phi_input(torch.arange(G), x[None].expand(G, -1)).reshape(G * L, -1)
        else:
            inputs = nn.functional.one_hot(x, L).to(self.embed.weight.dtype)
        self.register_buffer("phi_inputs", inputs, persistent=False)
        self.register_buffer("local_index", x, persistent=False)

    def _phi_input(self, s_g: Tensor, x: Tensor) -> Tensor:
        """``onehot(x)`` (+ ``onehot(s_g)`` broadcast over x's trailing agent dim)."""
        dtype = self.embed.weight.dtype
        h = nn.functional.one_hot(x, self.L).to(dtype)
        if self.global_in_phi:
            g = nn.functional.one_hot(s_g, self.G).to(dtype)
            g = g[:, None, :].expand(*x.shape, self.G)
            h = torch.cat([h, g], dim=-1)
        return h

    def _head(self, s_g: Tensor, pooled: Tensor) -> Tensor:
        out = self.rho(torch.cat([pooled, self.embed(s_g)], dim=-1))
        return self.q_offset + self.q_scale * out

    def forward(self, s_g: Tensor, s_sub: Tensor) -> Tensor:
        """Per-agent DeepSets: ``s_g [B]`` (int), ``s_sub [B, k]`` (int) -> ``Q [B, A]``."""
        enc = self.phi(self._phi_input(s_g, s_sub))  # [B, k, d]
        if self.pooling == "mean":
            pooled = enc.mean(1)
        elif self.pooling == "sum":
            pooled = enc.sum(1)
        else:
            pooled = enc.max(1).values
        return self._head(s_g, pooled)

    def phi_flat(self) -> Tensor:
        """``phi`` at every input: ``[G * L, d]`` in row ``g * L + x`` (``[L, d]`` without ``global_in_phi``)."""
        return self.phi(self.phi_inputs)

    def phi_table(self, s_g: Tensor) -> Tensor:
        """``phi`` at every local state for each row's global state: ``[B, L, d]``."""
        table = self.phi_flat()
        if not self.global_in_phi:
            return table.expand(len(s_g), -1, -1)
        return table.reshape(self.G, self.L, -1)[s_g]

    def hidden_table(self) -> Tensor:
        """Pre-activation of ``rho``'s first layer per table row (mean and sum pooling).

        That layer is linear in the pooled encoding and in ``embed(s_g)``, so it applies to the
        ``phi`` table and to the embedding table first: ``T = phi_flat @ W_pool^T`` and
        ``E = embed.weight @ W_embed^T + b``. Rows ``g * (L + 1) + x`` hold ``T[g * L + x]`` for
        ``x < L`` and ``E[g]`` for ``x = L`` (without ``global_in_phi``: ``T`` then ``E``).
        """
        first = self.rho[0]
        d = first.in_features - self.embed.embedding_dim
        T = self.phi_flat() @ first.weight[:, :d].T  # [G*L (or L), h]
        E = nn.functional.linear(self.embed.weight, first.weight[:, d:], first.bias)  # [G, h]
        if not self.global_in_phi:
            return torch.cat([T, E])
        return torch.cat([T.reshape(self.G, self.L, -1), E[:, None, :]], 1).reshape(self.G * (self.L + 1), -1)

    def forward_counts(self, s_g: Tensor, c: Tensor, table: Tensor | None = None) -> Tensor:
        """Same Q from count vectors: ``s_g [B]``, ``c [B, L]`` (counts, any k) -> ``[B, A]``.

        Mean pooling uses ``F = c / sum(c)`` (docs/model.md §3), sum pooling the counts, max pooling the
        maximum over the local states present (``c_x > 0``). With mean or sum pooling a row's
        first hidden layer is ``sum_x w_x T[s_g, x] + E[s_g]`` (:meth:`hidden_table`; pass
        ``table`` to reuse one computed with the current weights): one matrix product of the
        weights ``w (x) onehot(s_g)`` with the table, so no ``[B, L, d]`` tensor or concatenated
        ``[B, d + embed_dim]`` input is built.
        """
        dtype = self.embed.weight.dtype
        c = c.to(dtype)
        if self.pooling == "max":
            pooled = self.phi_table(s_g).masked_fill((c <= 0)[..., None], float("-inf")).max(1).values
            return self._head(s_g, pooled)
        table = self.hidden_table() if table is None else table
        w = c / c.sum(-1, keepdim=True) if self.pooling == "mean" else c
        G, L = self.G, self.L
        if not self.global_in_phi:
            h = torch.cat([w, nn.functional.one_hot(s_g, G).to(dtype)], -1) @ table
        elif G * L > DENSE_POOL_MAX:  # the [B, G*(L+1)] weights would be wide and sparse: gather rows
            rows = table.reshape(G, L + 1, -1)[s_g]
            h = torch.einsum("bl,blh->bh", w, rows[:, :L]) + rows[:, L]
        else:
            base = s_g * (L + 1)
            W = torch.zeros(len(s_g), G * (L + 1), dtype=dtype, device=s_g.device)
            W.scatter_(1, base[:, None] + self.local_index, w).scatter_(1, (base + L)[:, None], 1.0)
            h = W @ table
        for layer in islice(self.rho, 1, None):
            h = layer(h)
        return self.q_offset + self.q_scale * h


def num_parameters(net: nn.Module) -> int:
    """Number of trainable parameters (reported beside the tabular table size, docs/model.md §5)."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
