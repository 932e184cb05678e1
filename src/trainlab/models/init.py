"""`model.init`: torch.nn.init schemes applied by layer type after the model is built.

    init: xavier_uniform                 # every weight matrix / conv kernel (dim >= 2); biases unchanged
    init:                                # or by layer type
      Linear: xavier_uniform
      Conv2d: {scheme: kaiming_normal, nonlinearity: relu}
      LSTM: orthogonal
      default: {scheme: normal, std: 0.02}   # weights of layers no other key names
      bias: zeros                        # every bias

A scheme is a torch.nn.init function without its trailing underscore, with that function's keyword
arguments beside it. For xavier_* and orthogonal, `nonlinearity` (and `param`) give the gain through
`torch.nn.init.calculate_gain`, e.g. 5/3 for tanh, sqrt(2) for relu. `normal` defaults to std 0.01
(torch's own default, std 1, is far too large for a weight).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from trainlab.errors import ConfigError, did_you_mean, short
from trainlab.registry import check_kwargs

KEY = "model.init"
SCHEMES = (
    "uniform",
    "normal",
    "trunc_normal",
    "constant",
    "ones",
    "zeros",
    "eye",
    "dirac",
    "xavier_uniform",
    "xavier_normal",
    "kaiming_uniform",
    "kaiming_normal",
    "orthogonal",
    "sparse",
)
_GAIN_SCHEMES = ("xavier_uniform", "xavier_normal", "orthogonal")
NONLINEARITIES = ("linear", "conv1d", "conv2d", "conv3d", "sigmoid", "tanh", "relu", "leaky_relu", "selu")
_DEFAULTS = {"normal": {"std": 0.01}, "trunc_normal": {"std": 0.02}}
# Group names accepted besides torch.nn class names.
_GROUPS = {"Conv": nn.modules.conv._ConvNd, "BatchNorm": nn.modules.batchnorm._BatchNorm, "RNN*": nn.RNNBase}


def parse_scheme(value: Any, key: str) -> tuple[str, dict[str, Any]]:
    """'xavier_uniform' or {scheme: kaiming_normal, nonlinearity: relu} -> (scheme, kwargs), checked."""
    if isinstance(value, str):
        scheme, kwargs = value, {}
    elif isinstance(value, Mapping) and "scheme" in value:
        kwargs = dict(value)
        scheme = kwargs.pop("scheme")
    else:
        raise ConfigError(
            f"{key}: {short(value)} is not an init scheme; write a name (xavier_uniform) or a mapping "
            f"{{scheme: kaiming_normal, nonlinearity: relu}}"
        )
    scheme = str(scheme).removesuffix("_")
    if scheme not in SCHEMES:
        raise ConfigError(
            f"{key}: unknown init scheme {scheme!r}{did_you_mean(scheme, SCHEMES)}; "
            f"choose from {', '.join(SCHEMES)}"
        )
    kwargs = {**_DEFAULTS.get(scheme, {}), **kwargs}
    if scheme in _GAIN_SCHEMES and "nonlinearity" in kwargs:
        nonlinearity, param = kwargs.pop("nonlinearity"), kwargs.pop("param", None)
        try:
            kwargs["gain"] = nn.init.calculate_gain(nonlinearity, param)
        except ValueError:
            raise ConfigError(
                f"{key}.nonlinearity: unknown nonlinearity {nonlinearity!r}"
                f"{did_you_mean(str(nonlinearity), NONLINEARITIES)}; choose from "
                f"{', '.join(NONLINEARITIES)}"
            ) from None
    kwargs = check_kwargs(getattr(nn.init, scheme + "_"), kwargs, key, skip=("tensor",))
    return scheme, kwargs


def _init(tensor: torch.Tensor, scheme: str, kwargs: dict[str, Any], key: str, name: str) -> None:
    try:
        getattr(nn.init, scheme + "_")(tensor, **kwargs)
    except ValueError as e:  # e.g. xavier on a 1-d tensor: fan in/out are undefined
        raise ConfigError(
            f"{key}: {scheme} cannot initialise {name} of shape {tuple(tensor.shape)}: {e}"
        ) from None


def _layer_class(name: str) -> type:
    if name in _GROUPS:
        return _GROUPS[name]
    cls = getattr(nn, name, None)
    if inspect.isclass(cls) and issubclass(cls, nn.Module):
        return cls
    known = [n for n in dir(nn) if inspect.isclass(getattr(nn, n)) and issubclass(getattr(nn, n), nn.Module)]
    raise ConfigError(
        f"{KEY}.{name}: "
        f"unknown layer type {name!r}{did_you_mean(name, [*known, *_GROUPS, 'bias', 'default'])}; "
        "keys are torch.nn class names (Linear, Conv2d, ...), Conv, BatchNorm, 'default' or 'bias'"
    )


def _weights(module: nn.Module, matrices_only: bool) -> list[tuple[str, torch.Tensor]]:
    """A module's own weights (`weight`, `weight_ih_l0`, ...); with matrices_only, those with dim >= 2."""
    return [
        (n, p)
        for n, p in module.named_parameters(recurse=False)
        if n.startswith("weight") and (p.dim() >= 2 or not matrices_only)
    ]


def apply_init(model: nn.Module, spec: str | Mapping[str, Any] | None) -> None:
    """Initialise `model`'s parameters in place by `spec` (see the module docstring)."""
    if not spec:
        return
    if isinstance(spec, str):
        scheme, kwargs = parse_scheme(spec, KEY)
        for mod_name, module in model.named_modules():
            for name, p in _weights(module, matrices_only=True):
                _init(p, scheme, kwargs, KEY, f"{mod_name}.{name}")
        return
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{KEY}: expected a scheme name or a mapping by layer type, got {spec!r}")
    by_type = [
        (_layer_class(k), *parse_scheme(v, f"{KEY}.{k}"), f"{KEY}.{k}")
        for k, v in spec.items()
        if k not in ("bias", "default")
    ]
    default = parse_scheme(spec["default"], f"{KEY}.default") if "default" in spec else None
    bias = parse_scheme(spec["bias"], f"{KEY}.bias") if "bias" in spec else None
    for mod_name, module in model.named_modules():
        rule = next(((s, kw, key) for cls, s, kw, key in by_type if isinstance(module, cls)), None)
        if rule is not None:
            for name, p in _weights(module, matrices_only=False):
                _init(p, rule[0], rule[1], rule[2], f"{mod_name}.{name}")
        elif default is not None:
            for name, p in _weights(module, matrices_only=True):
                _init(p, default[0], default[1], f"{KEY}.default", f"{mod_name}.{name}")
        if bias is not None:
            for name, p in module.named_parameters(recurse=False):
                if name.startswith("bias"):
                    _init(p, bias[0], bias[1], f"{KEY}.bias", f"{mod_name}.{name}")
