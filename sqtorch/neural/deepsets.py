"""DeepSets Q-network ``Q_theta(s_g, {s_i}_{i in Delta}) in R^A`` (docs/model.md §3).

``phi`` encodes each sampled agent from ``onehot(s_i)`` (optionally concatenated with
``onehot(s_g)``); the encodings are pooled over Delta (mean by default, so Q depends on the sampled
agents only through the empirical distribution ``F = c / k`` exactly like the tabular Q of docs/model.md §2,
and one network can be evaluated at any k); ``rho(pooled, embed(s_g))`` gives one value per global
action.

Continuous local states (a :class:`~sqtorch.envs.protocol.Simulator` with a continuous
:class:`~sqtorch.envs.protocol.LocalSpace`, ``s_sub [B, k, d]``): ``phi`` reads the feature vector
``(x - loc) / scale`` (no one-hot; ``loc``/``scale`` from
:func:`~sqtorch.neural.sim_data.simulator_scales`, saved with the weights), pooling is the same,
and :meth:`DeepSetsQ.q_states` runs the per-agent :meth:`DeepSetsQ.forward`.

Because the per-agent input is one-hot, ``phi`` takes only ``L`` (or ``G * L``) distinct values.
:meth:`DeepSetsQ.forward_counts` therefore evaluates ``phi`` once per local state and pools with
count weights: the same function as the per-agent :meth:`DeepSetsQ.forward` (tested), but its
cost does not grow with k. With mean or sum pooling it also folds the first (linear) layer of
``rho`` into that table, so a row's first hidden layer is one small matrix product.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from typing import TypeVar

import torch
from torch import Tensor, nn

from sqtorch.checks import check_int
from sqtorch.envs.base import GlobalLocalMDP
from sqtorch.envs.protocol import Simulator
from sqtorch.neural.sim_data import q_scale_of_simulator, simulator_scales
from sqtorch.tabular.counts import all_counts, counts_of

T = TypeVar("T")
POOLINGS = ("mean", "sum", "max")
DENSE_POOL_MAX = 1024  # widest G*L pooled by one [B, G*(L+1)] product; wider tables gather per row
VALUE_TABLE_MAX = 1 << 20  # most entries G * (k+1)^L of frozen_values' radix-coded table (4 MiB of float32)


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


@lru_cache(maxsize=16)
def count_vectors(k: int, L: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Every count vector of k agents over L states ``[C(k+L-1, k), L]`` (rank order) and the radix weights
    ``w_x = (k+1)^x`` of their codes ``sum_x c_x w_x``. A pure function of ``(k, L)``, cached per device
    (callers must not modify it): built once, so a later :meth:`DeepSetsQ.frozen_values` reads nothing
    on the host."""
    return all_counts(k, L, device), (k + 1) ** torch.arange(L, device=device)


def q_scale_of(env: Simulator) -> float:
    """``max |r| / (1 - gamma)``: the size of any Q value, used to keep network outputs O(1).

    For a simulator without reward tensors ``max |r|`` comes from a short rollout
    (:func:`~sqtorch.neural.sim_data.simulator_scales`).
    """
    if not isinstance(env, GlobalLocalMDP):
        return q_scale_of_simulator(env)
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
        L: number of local states (finite local states; ignored when ``local_dim`` is set).
        A: number of global actions.
        net: the architecture (:class:`NetConfig`); or its fields as keyword arguments.
        q_scale: the output is ``q_offset + q_scale * rho(...)`` so the network works with O(1)
            numbers (set from the reward range and gamma by the LightningModule).
        q_offset: see ``q_scale``.
        local_dim: ``d`` of continuous local states ``[..., d]`` (``None``: finite, one-hot input).
        loc: ``[d]`` feature offset of continuous states (default 0): ``phi`` reads ``(x - loc) / scale``.
        scale: ``[d]`` feature scale of continuous states (default 1).
    """

    def __init__(
        self,
        G: int,
        L: int,
        A: int,
        net: NetConfig | None = None,
        q_scale: float = 1.0,
        q_offset: float = 0.0,
        local_dim: int | None = None,
        loc: Tensor | None = None,
        scale: Tensor | None = None,
        **net_fields: object,
    ) -> None:
        super().__init__()
        cfg = net if net is not None else NetConfig(**net_fields)  # type: ignore[arg-type]
        self.finite = local_dim is None
        self.G, self.L, self.A = G, (L if self.finite else 0), A
        self.pooling = cfg.pooling
        self.global_in_phi = cfg.global_in_phi
        self.q_scale, self.q_offset = float(q_scale), float(q_offset)
        d_in = self.L if local_dim is None else check_int("local_dim", local_dim, 1, "dimension of a local state")
        self.phi = mlp(d_in + (G if cfg.global_in_phi else 0), cfg.hidden, cfg.hidden, cfg.phi_layers)
        self.embed = nn.Embedding(G, cfg.embed_dim)
        self.rho = mlp(cfg.hidden + cfg.embed_dim, cfg.hidden, A, cfg.rho_layers)
        if local_dim is not None:  # saved with the weights: a loaded policy normalizes as in training
            self.register_buffer("x_loc", torch.zeros(local_dim) if loc is None else loc.float().reshape(local_dim))
            ones = torch.ones(local_dim)
            self.register_buffer("x_scale", ones if scale is None else scale.float().reshape(local_dim))
            return
        # phi's every input, row g * L + x (x without global_in_phi); not saved in checkpoints
        x = torch.arange(L)
        if cfg.global_in_phi:
            inputs = self._phi_input(torch.arange(G), x[None].expand(G, -1)).reshape(G * L, -1)
        else:
            inputs = nn.functional.one_hot(x, L).to(self.embed.weight.dtype)
        self.register_buffer("phi_inputs", inputs, persistent=False)
        self.register_buffer("local_index", x, persistent=False)

    @classmethod
    def for_env(cls, env: Simulator, net: NetConfig | None = None, **kwargs: object) -> DeepSetsQ:
        """The network for ``env``: one-hot input for finite local states, normalized features for continuous ones."""
        if env.local.is_finite:
            return cls(env.G, env.L, env.A, net, q_scale=q_scale_of(env), **kwargs)  # type: ignore[arg-type]
        r_max, loc, scale = simulator_scales(env)
        return cls(env.G, 0, env.A, net, q_scale=r_max / (1.0 - float(env.gamma)), local_dim=env.local.d,
                   loc=loc, scale=scale, **kwargs)  # type: ignore[arg-type]

    def _phi_input(self, s_g: Tensor, x: Tensor) -> Tensor:
        """``onehot(x)`` or the normalized features of ``x [..., k, d]`` (+ ``onehot(s_g)`` on every agent)."""
        dtype = self.embed.weight.dtype
        if self.finite:
            h = nn.functional.one_hot(x, self.L).to(dtype)
        else:
            h = ((x - self.x_loc) / self.x_scale).to(dtype)
        if self.global_in_phi:
            g = nn.functional.one_hot(s_g, self.G).to(dtype)
            g = g[:, None, :].expand(*h.shape[:-1], self.G)
            h = torch.cat([h, g], dim=-1)
        return h

    def q_states(self, s_g: Tensor, s_sub: Tensor, table: Tensor | None = None) -> Tensor:
        """``Q [B, A]`` at ``s_g [B]`` and k local states ``s_sub [B, k]`` (finite: the count path,
        :meth:`forward_counts` with ``table``) or ``[B, k, d]`` (continuous: :meth:`forward`)."""
        if self.finite:
            return self.forward_counts(s_g, counts_of(s_sub, self.L), table)
        return self.forward(s_g, s_sub)

    def _finite_only(self, what: str) -> None:
        if not self.finite:
            raise ValueError(f"{what} needs finite local states; this network reads continuous ones (use q_states)")

    def _head(self, s_g: Tensor, pooled: Tensor) -> Tensor:
        out = self.rho(torch.cat([pooled, self.embed(s_g)], dim=-1))
        return self.q_offset + self.q_scale * out

    def forward(self, s_g: Tensor, s_sub: Tensor) -> Tensor:
        """Per-agent DeepSets: ``s_g [B]`` (int), ``s_sub [B, k]`` (int) or ``[B, k, d]`` (float) -> ``Q [B, A]``."""
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
        self._finite_only("phi_flat")
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

    def frozen(self, name: str, build: Callable[[], T], by_value: bool = False) -> T:
        """``build()`` without autograd, computed once per set of weights and kept under ``name``.

        For a network that is not trained between calls (the target network between syncs): the
        result is kept with a key of every parameter's device, storage and in-place version counter,
        so any change of the weights (a sync's copy, a Polyak step, ``load_state_dict``, a device
        move) recomputes it. A fused or multi-tensor optimizer step changes no version counter: for a
        network being trained, ``by_value`` keeps a copy of the weights with the result instead and
        compares the weights with it by value (one copy per build, one comparison per call). Kept in
        a plain attribute: not a buffer, not in the state dict.
        """
        params = list(self.parameters())
        cache = self.__dict__.setdefault("_frozen", {})
        hit = cache.get(name)
        if by_value:
            fresh = hit is not None and len(hit[0]) == len(params) and all(
                a.device == p.device and torch.equal(a, p) for a, p in zip(hit[0], params, strict=True)
            )
        else:
            key = tuple((p.device, p.data_ptr(), p._version) for p in params)
            fresh = hit is not None and hit[0] == key
        if not fresh:
            with torch.no_grad():
                hit = ([p.detach().clone() for p in params] if by_value else key, build())
            cache[name] = hit
        return hit[1]

    def frozen_hidden_table(self) -> Tensor:
        """:meth:`hidden_table` without autograd, once per set of weights (:meth:`frozen`)."""
        return self.frozen("hidden_table", self.hidden_table)

    def value_table_fits(self, k: int) -> bool:
        """Whether :meth:`frozen_values` at ``k`` fits in ``VALUE_TABLE_MAX`` entries (finite local states)."""
        return self.finite and self.G * (k + 1) ** self.L <= VALUE_TABLE_MAX

    def frozen_values(self, k: int) -> tuple[Tensor, Tensor]:
        """``V(g, c) = max_a Q(g, c, a)`` at every global state and count vector of k agents, without autograd.

        Returns ``(V [G * (k+1)^L], w [L])``: the value of ``(g, c)`` is ``V[g (k+1)^L + sum_x c_x w_x]``
        with ``w_x = (k+1)^x`` (a mixed-radix code of the counts ``c [L]``, ``sum(c) = k``; the codes of
        no count vector hold NaN). :meth:`forward_counts` on the ``G * C(k+L-1, k)`` count vectors, so
        a target of ``B * m`` successors costs one gather instead of a forward pass (docs/model.md §3);
        the values are the forward pass's. Computed once per set of weights (:meth:`frozen`).
        Needs :meth:`value_table_fits`.
        """
        if not self.value_table_fits(k):
            raise ValueError(f"frozen_values: G * (k+1)^L = {self.G} * {k + 1}^{self.L} exceeds VALUE_TABLE_MAX = "
                             f"{VALUE_TABLE_MAX} (or the local states are continuous)")

        def build() -> tuple[Tensor, Tensor]:
            dev = self.embed.weight.device
            c, w = count_vectors(k, self.L, dev)  # [N, L], [L]
            N, R = len(c), (k + 1) ** self.L
            g = torch.arange(self.G, device=dev)
            table = self.frozen_hidden_table() if self.pooling != "max" else None
            v = self.forward_counts(g.repeat_interleave(N), c.repeat(self.G, 1), table).max(-1).values
            V = torch.full((self.G * R,), float("nan"), dtype=v.dtype, device=dev)
            V[(g[:, None] * R + (c * w).sum(-1)).reshape(-1)] = v
            return V, w

        return self.frozen(f"values_k{k}", build)

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
