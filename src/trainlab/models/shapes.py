"""The dry-run shape check (one batch through the model before training) and the model summary.

A shape mismatch deep inside a model surfaces in PyTorch as, e.g.,
`mat1 and mat2 shapes cannot be multiplied (64x1250 and 800x500)`. `check_shapes` runs one batch
with forward pre-hooks on every module, so it knows which module was running when the error came and
what it received, and turns that into a message naming the layer and both shapes:

    model.layers.5 (Linear) expects 800 input features, got 1250 from input of shape (64, 50, 5, 5) flattened
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from trainlab.errors import ConfigError

# Words of PyTorch's shape-mismatch messages; other RuntimeErrors (out of memory, ...) pass through.
_SHAPE_WORDS = re.compile(r"shape|size|dimension|channels|mat1|mat2|input\[|kernel|\bdim\b", re.IGNORECASE)


def _shapes(args: tuple) -> list[tuple[int, ...]]:
    return [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]


def _is_leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None


def _mismatch(
    module: nn.Module, shape: tuple[int, ...] | None, previous: tuple[nn.Module, list] | None
) -> tuple[str, str] | None:
    """(what the layer expects vs what it got, how to fix it) for the layer kinds we can explain."""
    if shape is None or len(shape) == 0:
        return None
    if isinstance(module, nn.Linear) and shape[-1] != module.in_features:
        origin = f"from input of shape {shape}"
        if (
            previous is not None
            and isinstance(previous[0], nn.Flatten)
            and previous[1]
            and len(previous[1][0]) > len(shape)
        ):
            origin = f"from input of shape {previous[1][0]} flattened"
        return (
            f"expects {module.in_features} input features, got {shape[-1]} {origin}",
            f"set its in_features to {shape[-1]} (or use LazyLinear), "
            "or resize the input to the size it was made for",
        )
    if isinstance(module, _ConvNd) and len(shape) >= 2 and shape[1] != module.in_channels:
        return (
            f"expects {module.in_channels} input channels, got {shape[1]} from input of shape {shape}",
            f"set its in_channels to {shape[1]} (or use a Lazy conv layer)",
        )
    if isinstance(module, _BatchNorm) and len(shape) >= 2 and shape[1] != module.num_features:
        return (
            f"expects {module.num_features} features (channels), got {shape[1]} from input of shape {shape}",
            f"set its num_features to {shape[1]}",
        )
    if isinstance(module, nn.RNNBase) and shape[-1] != module.input_size:
        return (
            f"expects {module.input_size} features per step, got {shape[-1]} from input of shape {shape}",
            f"set its input_size to {shape[-1]}",
        )
    return None


def check_shapes(model: nn.Module, x: torch.Tensor, output_dim: int | None = None) -> torch.Size:
    """A dry forward pass of batch `x` (no grad, eval mode, mode restored); returns the output shape.

    A shape mismatch becomes a ConfigError naming the layer (`model.<dotted name> (Class)`, or
    `model.layers.<i>` for a `sequential` model) and both shapes. With `output_dim`, an output whose
    last axis differs from it (e.g. 500 outputs for 10 classes) is an error too.
    """
    prefix = getattr(model, "config_key", "model")
    stack: list[tuple[str, nn.Module, list]] = []  # modules entered and not yet left: the innermost is last
    leaves: list[tuple[nn.Module, list]] = []  # leaf modules in call order, with their input shapes
    handles = []

    def enter(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            stack.append((name, module, _shapes(args)))
            if _is_leaf(module):
                leaves.append((module, _shapes(args)))

        return hook

    def leave(module: nn.Module, args: tuple, output) -> None:
        stack.pop()

    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(enter(name)))
        handles.append(module.register_forward_hook(leave))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except RuntimeError as e:
        if isinstance(e, torch.OutOfMemoryError) or not stack:
            raise
        name, module, shapes = stack[-1]
        shape = shapes[0] if shapes else None
        previous = (
            leaves[-2] if len(leaves) >= 2 and leaves[-1][0] is module else (leaves[-1] if leaves else None)
        )
        explained = _mismatch(module, shape, previous)
        if explained is None and not _SHAPE_WORDS.search(str(e)):
            raise
        where = f"{prefix}.{name}" if name else prefix
        detail, fix = explained or (
            f"got input of shape {shape}: {str(e).splitlines()[0]}",
            "check the sizes this layer was made for",
        )
        raise ConfigError(
            f"{where} ({type(module).__name__}) {detail}. The data gives batches of shape "
            f"{tuple(x.shape)}; {fix}."
        ) from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise ConfigError(
            f"model.name: the model returns {type(out).__name__}, not a tensor; the loss needs one "
            f"output tensor (B, outputs) per batch"
        )
    if output_dim is not None and out.shape[-1] != output_dim and not (output_dim == 1 and out.dim() == 1):
        raise ConfigError(
            f"model: the model's output has shape {tuple(out.shape)} but the data needs {output_dim} "
            f"output{'s' if output_dim != 1 else ''} per sample (classes, or 1 logit for a binary "
            f"task, or the number of regression targets); change the last layer"
        )
    return out.shape


def model_summary(
    model: nn.Module, input_shape: Sequence[int], device: str | torch.device | None = None
) -> str:
    """torchinfo's table (layer, output shape, parameters), depth 3, for a batch of one sample.

    torchinfo moves the model to `device`; by default that is where the model already is.
    """
    from torchinfo import summary

    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    try:
        stats = summary(
            model,
            input_size=(1, *input_shape),
            depth=3,
            col_names=("output_size", "num_params"),
            device=device,
            mode="eval",
            verbose=0,
        )
    finally:
        model.train(was_training)
    # torchinfo 1.8 prints its Units enum as "Units.MEGABYTES" on Python 3.11+; write its value ("M")
    from torchinfo import Units

    text = str(stats)
    for unit in Units:
        text = text.replace(f"({unit})", f"({unit.value})")
    return text
