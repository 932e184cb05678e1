"""Component lists: the notes' `nn.Sequential(...)` and `transforms.Compose([...])` written as YAML.

- ReLU                              # bare name: no arguments
- Conv2d: [3, 64, 3, 1, 1]          # positional arguments
- Normalize: {mean: [0.5], std: [0.5]}   # keyword arguments
- ToDtype: {dtype: float32, scale: true} # a value naming a torch dtype becomes that dtype
"""

from __future__ import annotations

import inspect
from types import ModuleType
from typing import Any

import torch

from trainlab.errors import ConfigError, did_you_mean, short
from trainlab.registry import check_kwargs, import_object

_DTYPES = {
    name: getattr(torch, name)
    for name in (
        "float32",
        "float64",
        "float16",
        "bfloat16",
        "uint8",
        "int8",
        "int16",
        "int32",
        "int64",
        "bool",
        "float",
        "double",
        "half",
        "long",
        "int",
    )
}


def to_dtype(value: Any) -> Any:
    """'float32' -> torch.float32 (also 'torch.float32'); anything else unchanged, lists recursed."""
    if isinstance(value, str) and value.removeprefix("torch.") in _DTYPES:
        return _DTYPES[value.removeprefix("torch.")]
    if isinstance(value, dict):
        return {k: to_dtype(v) for k, v in value.items()}
    return value


# Transforms whose first argument is a size: a two-number list is that size, not two arguments.
_SIZE_FIRST = {"Resize", "CenterCrop", "RandomCrop", "RandomResizedCrop", "FiveCrop", "TenCrop"}


def parse_item(item: Any, key: str) -> tuple[str, list[Any], dict[str, Any]]:
    """One list item -> (class name, args, kwargs)."""
    if isinstance(item, str):
        return item, [], {}
    if isinstance(item, dict) and len(item) == 1:
        ((name, value),) = item.items()
        if value is None:
            return name, [], {}
        if isinstance(value, dict):
            return name, [], {k: to_dtype(v) for k, v in value.items()}
        if isinstance(value, list):
            if name in _SIZE_FIRST and len(value) == 2 and all(isinstance(v, int) for v in value):
                return name, [list(value)], {}  # `- Resize: [224, 224]` means size (224, 224)
            return name, [to_dtype(v) for v in value], {}
        return name, [to_dtype(value)], {}
    raise ConfigError(
        f"{key}: {short(item)} is not a component: write a name (- ReLU), a name with a list of "
        f"positional arguments (- Conv2d: [1, 10, 5]) or with a mapping of keyword arguments"
    )


def resolve_class(name: str, namespaces: list[ModuleType], key: str) -> Any:
    if ":" in name:
        return import_object(name, key)
    for ns in namespaces:
        obj = getattr(ns, name, None)
        if obj is not None and inspect.isclass(obj):
            return obj
    known = sorted(
        {n for ns in namespaces for n in dir(ns) if not n.startswith("_") and inspect.isclass(getattr(ns, n))}
    )
    where = " or ".join(ns.__name__ for ns in namespaces)
    raise ConfigError(f"{key}: unknown class {name!r} in {where}{did_you_mean(name, known)}")


def build_list(items: list[Any] | None, namespaces: list[ModuleType], key: str) -> list[Any]:
    """Instantiate every component of a list; errors name `key[i]`."""
    built = []
    for i, item in enumerate(items or []):
        where = f"{key}[{i}]"
        name, args, kwargs = parse_item(item, where)
        cls = resolve_class(name, namespaces, where)
        kwargs = check_kwargs(cls, kwargs, where)
        try:
            built.append(cls(*args, **kwargs))
        except (TypeError, ValueError, RuntimeError) as e:  # RuntimeError: a size torch refuses (-5)
            call = ", ".join([*map(short, args), *(f"{k}={short(v)}" for k, v in kwargs.items())])
            raise ConfigError(f"{where}: {name}({call}) failed: {str(e).splitlines()[0][:300]}") from None
    return built
