"""Counting the torch calls that read tensor values on the host (each a stream sync on CUDA)."""

import torch
from torch.overrides import TorchFunctionMode

HOST_READS = {"item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero", "argwhere",
              "unique", "masked_select", "cpu"}


class HostReads(TorchFunctionMode):
    """Counts the torch calls that read tensor values on the host (a stream sync on CUDA), bool masks included."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.names: list[str] = []  # the calls counted, in order

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        masks = name in ("__getitem__", "__setitem__") and any(
            isinstance(a, torch.Tensor) and a.dtype == torch.bool for a in torch.utils._pytree.tree_leaves(args[1:2])
        )
        if name in HOST_READS or masks:
            self.count += 1
            self.names.append(name)
        return func(*args, **(kwargs or {}))
