"""`build_model`: a zoo name, `sequential`, `torchvision:<name>` or a user `module:attr` class -> nn.Module.

Sizes come from the data: `input_shape` (one sample, e.g. (1, 28, 28)) and `output_dim` (classes,
1 for binary, or regression targets); a user's keyword arguments override them.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from trainlab.config import ModelConfig
from trainlab.errors import ConfigError, did_you_mean, short
from trainlab.models.init import apply_init
from trainlab.models.sequential import build_sequential
from trainlab.registry import MODELS, check_kwargs, import_object

AUTO = {3: "small_cnn", 2: "lstm", 1: "mlp"}  # by the rank of one sample: image, sequence, features


def auto_model_name(input_shape: Sequence[int]) -> str:
    return AUTO.get(len(input_shape), "mlp")


def build_model(
    cfg: ModelConfig, input_shape: Sequence[int] | Any, output_dim: int | None = None, task: str | None = None
) -> nn.Module:
    """Build the model `cfg` names for samples of `input_shape`, then apply `cfg.init`.

    `input_shape` may also be a `DataBundle`, which gives `input_shape`, `output_dim` and `task`.
    The zoo's sizes need only the shape and `output_dim`; `task` is accepted for symmetry with
    `build_loss` (a binary task already has output_dim 1).
    """
    if hasattr(input_shape, "input_shape"):  # a DataBundle
        bundle = input_shape
        input_shape, output_dim = bundle.input_shape, bundle.output_dim
    if output_dim is None:
        raise TypeError("build_model needs output_dim (or a DataBundle)")
    input_shape = tuple(int(s) for s in input_shape)
    name, kwargs = cfg.name, cfg.kwargs()
    if name != "sequential" and cfg.layers:
        raise ConfigError(
            f"model.layers: layers are read only with `model.name: sequential`, not with {name!r}"
        )
    if name == "auto":
        name = auto_model_name(input_shape)
    if name == "sequential":
        if kwargs:
            raise ConfigError(
                f"model.{next(iter(kwargs))}: `sequential` takes only `layers` and `init`; "
                f"give the layers' own arguments inside model.layers"
            )
        _probe_on_meta(lambda: build_sequential(cfg.layers, input_shape), "sequential (model.layers)")
        model = build_sequential(cfg.layers, input_shape)
    elif name.startswith("torchvision:"):
        model = build_torchvision(name.removeprefix("torchvision:"), kwargs, input_shape, output_dim)
    elif ":" in name:
        model = build_user_model(name, kwargs, input_shape, output_dim)
    else:
        factory = MODELS.get(name, "model.name")
        kwargs = check_kwargs(factory, kwargs, "model", skip=("input_shape", "output_dim"))
        model = _call(factory, name, input_shape=input_shape, output_dim=output_dim, **kwargs)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.name: {name!r} gave a {type(model).__name__}, not a torch.nn.Module")
    apply_init(model, cfg.init)
    return model.train()


def _call(factory, name: str, *args, **kwargs) -> Any:
    """Call a factory; a bad value of a user's argument (TypeError/ValueError, or a size torch refuses) is
    a config error. A zoo model is first built on the meta device (no memory, no RNG), so that sizes
    this machine cannot hold are refused with an estimate instead of failing inside torch."""
    shown = ", ".join(f"{k}={short(v)}" for k, v in kwargs.items() if k not in ("input_shape", "output_dim"))
    if name in MODELS:
        _probe_on_meta(lambda: factory(*args, **kwargs), f"{name!r}({shown})")
    try:
        return factory(*args, **kwargs)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(
            f"model: building {name!r}({shown}) failed: {str(e).splitlines()[0][:300]}"
        ) from None


def _probe_on_meta(build: Any, what: str) -> None:
    """Build once on the meta device (no memory, no random numbers drawn) and refuse a model whose training
    state (weights, gradients, two optimizer moments: 4 x fp32) exceeds this machine's memory. A build
    that fails there is left to the real build, which reports it."""
    try:
        with torch.device("meta"):
            model = build()
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001 - e.g. an op without a meta kernel: the real build decides
        return
    if not isinstance(model, nn.Module):
        return
    count = sum(p.numel() for p in model.parameters())
    need = 16 * count  # bytes
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > ram:
        raise ConfigError(
            f"model: {what} has {count:,} parameters; training it needs about "
            f"{_gb(need)} (weights, gradients and two optimizer moments in fp32), more than this "
            f"machine's {_gb(ram)} of memory; make the sizes smaller"
        )


def _gb(n: float) -> str:
    return f"{n / 2**30:,.1f} GB" if n < 2**40 else f"{n / 2**40:,.0f} TB"


# ----------------------------------------------------------------------------- user classes


# Constructor arguments filled from the data when the class takes them and the user did not give them.
def _from_data(input_shape: tuple[int, ...], output_dim: int) -> dict[str, Any]:
    filled = {
        "input_shape": input_shape,
        "output_dim": output_dim,
        "in_features": math.prod(input_shape),
        "num_classes": output_dim,
    }
    if len(input_shape) >= 2:
        filled["in_channels"] = input_shape[0]
    return filled


def build_user_model(
    spec: str, kwargs: dict[str, Any], input_shape: tuple[int, ...], output_dim: int
) -> nn.Module:
    """`module:attr` naming an nn.Module class (or a function returning one), with the user's kwargs."""
    factory = import_object(spec, "model.name")
    if not callable(factory):
        raise ConfigError(f"model.name: {spec!r} is a {type(factory).__name__}, not an nn.Module class")
    kwargs = check_kwargs(factory, kwargs, "model")
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    for k, v in _from_data(input_shape, output_dim).items():
        if k in params and k not in kwargs:
            kwargs[k] = v
    return _call(factory, spec, **kwargs)


# ----------------------------------------------------------------------------- torchvision


def build_torchvision(
    name: str, kwargs: dict[str, Any], input_shape: tuple[int, ...], output_dim: int
) -> nn.Module:
    """Any torchvision.models classification builder, `weights: null` unless given; the first conv takes
    the data's channels and the last Linear gives `output_dim` outputs."""
    import torchvision.models as tvm

    names = tvm.list_models(module=tvm)
    if name not in names:
        raise ConfigError(
            f"model.name: unknown torchvision model {name!r}{did_you_mean(name, names)}; "
            f"torchvision.models.list_models() lists them"
        )
    if len(input_shape) != 3:
        raise ConfigError(
            f"model.name: torchvision:{name} takes images (C, H, W); the data gives samples of shape "
            f"{input_shape}"
        )
    kwargs = dict(kwargs)
    weights = kwargs.setdefault("weights", None)
    builder = tvm.get_model_builder(name)
    model_class = inspect.signature(builder).return_annotation  # e.g. ResNet: check the user's keywords on it
    if inspect.isclass(model_class):
        own = inspect.signature(builder).parameters
        kwargs.update(check_kwargs(model_class, {k: v for k, v in kwargs.items() if k not in own}, "model"))
    if "aux_logits" in inspect.signature(builder).parameters or name in ("googlenet", "inception_v3"):
        kwargs.setdefault("aux_logits", False)  # a single output tensor for the loss
        if weights is None:
            kwargs.setdefault("init_weights", True)  # avoids torchvision's warning about the default
    if weights is None:
        kwargs.setdefault("num_classes", output_dim)
    try:
        model = builder(**kwargs)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(
            f"model: torchvision:{name} with {short(kwargs)} failed: {str(e).splitlines()[0]}"
        ) from None
    adapt_first_conv(model, input_shape[0])
    adapt_classifier(model, output_dim)
    return model


def _replace(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent, _, attr = dotted.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    """Give the first Conv2d `in_channels` inputs; pretrained kernels are averaged over the old channels."""
    name, conv = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), (None, None))
    if conv is None or conv.in_channels == in_channels:
        return
    if conv.groups != 1:
        raise ConfigError(
            f"model.name: the first convolution ({name}) is grouped; trainlab cannot adapt it to "
            f"{in_channels} input channels: convert the images to {conv.in_channels} channels"
        )
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        1,
        conv.bias is not None,
        conv.padding_mode,
    )
    with torch.no_grad():  # keep what pretrained kernels know: their mean over the input channels
        new.weight.copy_(
            conv.weight.mean(dim=1, keepdim=True).expand_as(new.weight) * conv.in_channels / in_channels
        )
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    _replace(model, name, new)


def adapt_classifier(model: nn.Module, output_dim: int) -> None:
    """Replace the last Linear (the classifier) when it does not give `output_dim` outputs."""
    name, fc = next(
        ((n, m) for n, m in reversed(list(model.named_modules())) if isinstance(m, nn.Linear)), (None, None)
    )
    if fc is None or fc.out_features == output_dim:
        return
    _replace(model, name, nn.Linear(fc.in_features, output_dim, bias=fc.bias is not None))
