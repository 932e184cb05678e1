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


def resolve_channels_last(model: nn.Module, x: torch.Tensor, setting: bool | str, device: torch.device,
                          precision: str = "fp32") -> bool:
    """Whether to train in the channels-last layout, and if so the model converted to it.

    `train.channels_last: auto` turns it on for a model with 2-d convolutions on the CPU (oneDNN's
    NHWC kernels: a 1.2-1.7x faster training step for every conv net of the zoo on a 2-core machine;
    BENCHMARKS.md), when a trial forward on `x` works in that layout: a forward that calls
    `.view(B, -1)` on conv features needs contiguous tensors, and `auto` then keeps them. `true` makes
    that failure a config error. On CUDA `auto` stays off (not measured here); `true` is the usual
    advice there with bf16/fp16 (tensor cores). `precision` is kept for that choice.
    """
    if setting is False or x.dim() != 4 or not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return False
    if setting == "auto" and device.type != "cpu":
        return False
    model.to(memory_format=torch.channels_last)
    was = model.training
    try:
        model.eval()  # no BatchNorm statistics moved, no dropout drawn by the trial
        with torch.inference_mode():
            model(x[:2].to(device).contiguous(memory_format=torch.channels_last))
    except RuntimeError as e:
        model.to(memory_format=torch.contiguous_format)
        if setting == "auto":
            return False
        raise ConfigError(f"train.channels_last: true, but the model's forward fails on channels-last inputs "
                          f"({str(e).splitlines()[0][:160]}); use .reshape or .flatten(1) instead of .view on conv "
                          f"features, or set train.channels_last: false") from None
    finally:
        model.train(was)
    return True
