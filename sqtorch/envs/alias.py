"""Walker/Vose alias tables: O(1) exact draws from many small categorical rows (used on hot paths).

A row ``p [K]`` becomes ``prob [K]`` and ``alias [K]``; with ``u ~ U[0, 1)``, ``v = K u``,
``j = floor(v)``, the draw is ``j`` if ``v - j < prob[j]`` else ``alias[j]``, which has law p
(Walker 1977; Vose 1991). Zero-probability outcomes have ``prob = 0`` and are never an alias.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def _alias_row(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vose's construction for one row, smallest entries first so zeros are paired while mass remains."""
    K = len(p)
    scaled = p * K
    prob = np.ones(K)
    alias = np.arange(K)
    small = sorted((i for i in range(K) if scaled[i] < 1.0), key=lambda i: scaled[i], reverse=True)
    large = [i for i in range(K) if scaled[i] >= 1.0]
    while small and large:
        s, l = small.pop(), large.pop()
        prob[s], alias[s] = scaled[s], l
        scaled[l] -= 1.0 - scaled[s]
        (small if scaled[l] < 1.0 else large).append(l)
    return prob, alias


@dataclass
class AliasTable:
    """Alias tables of every row of a stochastic tensor ``P [..., K]``, flattened to ``[R * K]``."""

    prob: Tensor  # float64 [R * K]
    alias: Tensor  # int64 [R * K]
    K: int

    @classmethod
    def from_probs(cls, P: Tensor) -> AliasTable:
        K = P.shape[-1]
        rows = P.reshape(-1, K).detach().cpu().double().numpy()
        built = [_alias_row(p) for p in rows]  # R = rows of the env kernel, a setup cost
        prob = torch.from_numpy(np.stack([b[0] for b in built]).reshape(-1)).to(P.device)
        alias = torch.from_numpy(np.stack([b[1] for b in built]).reshape(-1)).to(P.device)
        return cls(prob=prob, alias=alias, K=K)

    def draw(self, row: Tensor, u: Tensor) -> Tensor:
        """One draw per element from row ``row`` (int64, any shape) with uniforms ``u`` in [0, 1)."""
        v = u * self.K
        j = v.long()
        idx = row * self.K + j
        return torch.where(v - j < self.prob.take(idx), j, self.alias.take(idx))
