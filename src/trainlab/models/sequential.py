"""`model.name: sequential`: the notes' `nn.Sequential(...)` written as a YAML component list.

    model:
      name: sequential
      layers:
        - Conv2d: [3, 20, 5]
        - MaxPool2d: [2]
        - Flatten
        - LazyLinear: [10]     # Lazy layers take their input size from the data

Any torch.nn class (or `module:attr` class) can be a layer. Lazy layers are materialised by one dry
forward pass on zeros of the data's sample shape, which also reports a mismatch by layer name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from trainlab.components import build_list
from trainlab.errors import ConfigError

CONFIG_KEY = "model.layers"


def build_sequential(layers: list[Any] | None, input_shape: Sequence[int]) -> nn.Sequential:
    if not layers:
        raise ConfigError(
            f"{CONFIG_KEY}: `model.name: sequential` needs a list of layers, e.g. "
            f"layers: [Flatten, {{Linear: [{int(torch.tensor(input_shape).prod())}, 10]}}]"
        )
    modules = build_list(layers, [nn], CONFIG_KEY)
    for i, m in enumerate(modules):
        if not isinstance(m, nn.Module):
            raise ConfigError(
                f"{CONFIG_KEY}[{i}]: {type(m).__name__} is not a torch.nn.Module, so it cannot be a layer"
            )
    model = nn.Sequential(*modules)
    # check_shapes names a failing layer `model.layers.<i> (Class)`, matching the YAML list.
    model.config_key = CONFIG_KEY
    if has_lazy(model):
        materialise(model, input_shape)
    return model


def has_lazy(model: nn.Module) -> bool:
    return any(isinstance(m, LazyModuleMixin) and m.has_uninitialized_params() for m in model.modules())


def materialise(model: nn.Module, input_shape: Sequence[int]) -> None:
    """One dry forward pass (batch of 2 zeros, eval mode) so Lazy layers create their parameters."""
    from trainlab.models.shapes import check_shapes

    check_shapes(model, torch.zeros(2, *input_shape))
