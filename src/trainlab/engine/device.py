"""Where training runs, and the user's module inside its wrappers."""
from __future__ import annotations

import torch
from torch import nn

from trainlab.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """`auto` is cuda > mps > cpu; asking for cuda where there is none is a config error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} asked for but CUDA is not available here; use auto or cpu")
    return device


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DistributedDataParallel and/or torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
