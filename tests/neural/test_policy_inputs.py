"""A DeepSets policy refuses states outside the env's state spaces, naming the first bad index."""

from __future__ import annotations

import pytest
import torch

from sqtorch.experiment import run
from sqtorch.neural import DeepSetsPolicy

pytestmark = pytest.mark.usefixtures("one_thread")


def test_deepsets_act_rejects_out_of_range_states(make_cfg, tmp_path):
    run(make_cfg("debug=fast", "trainer=cpu", "logger=none", "k=2", out=tmp_path))
    policy = DeepSetsPolicy.from_checkpoint(tmp_path / "checkpoints" / "final.ckpt")
    with pytest.raises(ValueError, match=r"s_sub\[0, 0\] = 5 is outside the state space \{0..4\}"):
        policy.act(torch.tensor([0]), torch.tensor([[5, 0]]))
    with pytest.raises(ValueError, match=r"s_g\[0\] = -1 is outside"):
        policy.act(torch.tensor([-1]), torch.tensor([[0, 0]]))

