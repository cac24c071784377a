"""runtime: files are written whole or not at all."""

from __future__ import annotations

import pytest
import torch

from sqtorch.runtime import atomic_write, no_autograd_dispatch
from sqtorch.tabular import QTable


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "qtable.pt"
    table = QTable(torch.zeros(2, 3, 2), 2, 2)
    table.save(path)
    before = path.read_bytes()

    def torn(f):
        f.write(b"partial")
        raise KeyboardInterrupt  # a kill in the middle of the write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, torn)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qtable.pt"]  # no temporary file left



def test_no_autograd_dispatch_computes_the_same_values_and_records_no_graph():
    """The block's ops give the values they give outside it, record no graph even on tensors that
    require gradients, and what they make can enter a graph later (unlike an inference tensor)."""
    torch.manual_seed(0)
    w = torch.randn(5, 3, requires_grad=True)
    x = torch.randn(7, 5)
    idx = torch.tensor([2, 0, 1, 1])
    outside = (x @ w).relu().sum(1)
    with no_autograd_dispatch():
        inside = (x @ w).relu().sum(1)
        rows = idx * 1  # made inside, used as an index of a graph below
    assert torch.equal(inside, outside.detach())
    assert not inside.requires_grad and inside.grad_fn is None
    (x[rows] @ w).sum().backward()  # an inference tensor here would raise
    assert torch.equal(w.grad, x[idx].sum(0)[:, None].expand(5, 3))
