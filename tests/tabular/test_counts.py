import itertools

import pytest
import torch

from sqtorch.tabular.counts import (
    all_counts,
    counts_of,
    num_counts,
    rank,
    rank_states,
    unrank,
)


@pytest.mark.parametrize("k,L", [(1, 3), (3, 4), (5, 5), (2, 25), (7, 2)])
def test_rank_is_a_bijection_onto_range(k, L):
    N = num_counts(k, L)
    brute = {tuple(sum(1 for s in x if s == v) for v in range(L)) for x in itertools.product(range(L), repeat=k)}
    C = all_counts(k, L)
    assert len(brute) == N == C.shape[0]
    assert {tuple(c) for c in C.tolist()} == brute
    assert torch.equal(rank(C), torch.arange(N))
    assert torch.equal(unrank(torch.arange(N), k, L), C)


def test_rank_of_states_is_permutation_invariant():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 6, (500, 5), generator=gen)
    perm = x[:, torch.randperm(5, generator=gen)]
    assert torch.equal(rank_states(x, 6), rank_states(perm, 6))
    assert torch.equal(rank_states(x, 6), rank(counts_of(x, 6)))


def test_mixed_totals_are_rejected():
    with pytest.raises(ValueError, match="same total"):
        rank(torch.tensor([[1, 0], [1, 1]]))
