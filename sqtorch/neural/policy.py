"""Greedy subsampled policy of a DeepSets Q-network (docs/model.md §2 Algorithm 2, §3).

``act(s_g, s_sub) = argmax_a Q_theta(s_g, s_sub, a)`` with ties broken to the lowest action index
(``torch.argmax`` returns the first maximum). The same object has ``.k`` so every evaluator that
takes a tabular :class:`~sqtorch.tabular.qtable.QTable` also takes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sqtorch import runtime
from sqtorch.checks import check_int
from sqtorch.envs import build_env
from sqtorch.envs.base import check_states
from sqtorch.neural.checkpoint import load_checkpoint
from sqtorch.neural.deepsets import DeepSetsQ, NetConfig
from sqtorch.tabular.counts import all_counts

NET_PREFIX = "net."  # the online network's weights in a checkpoint's state_dict


class DeepSetsPolicy:
    """Greedy policy of ``net`` on k sampled agents; ``k`` may differ from the training k."""

    def __init__(self, net: DeepSetsQ, k: int) -> None:
        self.net, self.k = net, check_int("k", k, 1, "sampled agents the policy acts on")

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @torch.no_grad()
    def q(self, s_g: Tensor, s_sub: Tensor) -> Tensor:
        """``Q [B, A]`` at ``s_g [B]`` and sampled local states ``s_sub [B, k]``."""
        dev = self.device
        return self.net.q_states(s_g.to(dev), s_sub.to(dev))

    @torch.no_grad()
    def act(self, s_g: Tensor, s_sub: Tensor) -> Tensor:
        """Greedy global action ``[B]`` (ties: lowest index), on the device of ``s_g``."""
        agents = s_sub.shape[1] if s_sub.dim() > 1 else -1
        if agents != self.k or s_sub.dim() != (2 if self.net.finite else 3):
            want = "[B, k]" if self.net.finite else "[B, k, d]"
            raise ValueError(f"s_sub has shape {list(s_sub.shape)}, this policy takes {want} with k = {self.k}")
        if not runtime.sync_free(s_g):  # on CUDA the check would stall every step on a host sync
            check_states("s_g", s_g, self.net.G)
            if self.net.finite:
                check_states("s_sub", s_sub, self.net.L)
        return self.q(s_g, s_sub).argmax(-1).to(s_g.device)

    @torch.no_grad()
    def q_table(self) -> Tensor:
        """The network as a table ``[G, C(k+L-1, k), A]`` in count-vector rank order (docs/model.md §2)."""
        self.net._finite_only("q_table")
        G, L = self.net.G, self.net.L
        c = all_counts(self.k, L, self.device)  # [N, L]
        N = c.shape[0]
        s_g = torch.arange(G, device=self.device).repeat_interleave(N)
        return self.net.forward_counts(s_g, c.repeat(G, 1)).reshape(G, N, -1).double()

    def greedy(self) -> Tensor:
        """Greedy action table ``[G, N]`` (ties: lowest index), like ``QTable.greedy``."""
        return self.q_table().argmax(-1)

    @classmethod
    def from_checkpoint(cls, path: str | Path, k: int | None = None) -> DeepSetsPolicy:
        """Rebuild the network from a Lightning checkpoint alone: its hyper-parameters and weights.

        Loads with ``weights_only=True`` (no code from the file runs); ``k`` defaults to the
        training k (mean pooling: any k works).
        """
        ckpt = load_checkpoint(path)
        hp = ckpt["hyper_parameters"]
        net = net_from_checkpoint(ckpt, build_env(hp["env"]), path)
        return cls(net, hp["k"] if k is None else k)


def net_from_checkpoint(ckpt: dict, env: Any, path: str | Path = "checkpoint") -> DeepSetsQ:
    """The online network of a loaded checkpoint ``ckpt``, built for ``env`` (the env it learned on) from
    the checkpoint's ``algo.net`` and its weights, in eval mode; ``ValueError`` naming ``path`` if they do
    not fit."""
    net = DeepSetsQ.for_env(env, NetConfig(**ckpt["hyper_parameters"]["algo"]["net"]))
    weights = {key[len(NET_PREFIX) :]: w for key, w in ckpt["state_dict"].items() if key.startswith(NET_PREFIX)}
    try:
        net.load_state_dict(weights)
    except RuntimeError as e:  # missing keys or size mismatch: a foreign or edited file
        msg = " ".join(str(e).split())[:300]
        raise ValueError(f"{path}: weights do not fit the network its hyper-parameters describe ({msg})") from e
    return net.eval()
