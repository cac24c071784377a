"""runtime: files are written whole or not at all."""

from __future__ import annotations

import pytest
import torch

from sqtorch.runtime import atomic_write
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

