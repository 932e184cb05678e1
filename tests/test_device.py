"""engine/device.py: unwrapping wrappers, the busy-machine check."""
import torch
from torch import nn

from trainlab.engine.device import unwrap


def test_unwrap_takes_off_ddp_and_compile_but_not_a_user_models_own_module_attribute():
    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.module = nn.Linear(2, 2)  # a user's attribute that happens to be called `module`

    holder = Holder()
    assert unwrap(holder) is holder
    assert unwrap(torch.compile(holder)) is holder
