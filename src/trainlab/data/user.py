"""Datasets from user code: `data.source: "my_data:MyDataset"` (a Dataset class) or a function.

    class MyDataset(Dataset):                     def make_data(root, size=100):
        def __init__(self, root, train=True): ...     return train_ds, val_ds, test_ds

A class is constructed with `data.options` (plus `root=data.root` and `download=data.download` when
it takes them); one that takes `train` (or `split`) is built once per split, like torchvision's
datasets. A function returns a dataset, a (train, test) or (train, val, test) tuple, a
{"train", "val", "test"} dict or a `SourceData`.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch.utils.data import Dataset, TensorDataset

from trainlab.config import DataConfig
from trainlab.data.base import ArrayDataset, SourceData
from trainlab.errors import ConfigError, DataError
from trainlab.registry import check_kwargs

_USER_ERRORS = (TypeError, ValueError, KeyError, IndexError, OSError)


def _params(obj: Any) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return {}


def _call(obj: Any, kwargs: dict[str, Any], what: str, key: str) -> Any:
    try:
        return obj(**kwargs)
    except _USER_ERRORS as e:
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise DataError(f"{key}: {what}({args}) failed: {type(e).__name__}: {e}") from e


def build_dataset_splits(
    cls: Any, options: dict[str, Any], root: str | None, download: bool, key: str = "data.source"
) -> tuple[Any, Any, Any]:
    """(train, val, test) from a dataset class: one split per `train=True/False` or `split=...` value."""
    params = _params(cls)
    name = getattr(cls, "__name__", str(cls))
    kwargs = check_kwargs(cls, options, "data.options")
    if "root" in params and "root" not in kwargs:
        if root is None and params["root"].default is inspect.Parameter.empty:
            raise ConfigError(f"data.root: {name} (data.source) takes a root folder; set data.root")
        if root is not None:
            kwargs["root"] = root
    if "download" in params and "download" not in kwargs:
        kwargs["download"] = download
    if "train" in params and "train" not in kwargs:
        return (
            _call(cls, {**kwargs, "train": True}, name, key),
            None,
            _call(cls, {**kwargs, "train": False}, name, key),
        )
    if "split" in params and "split" not in kwargs:
        train = _call(cls, {**kwargs, "split": "train"}, name, key)
        found: dict[str, Any] = {}
        for split, names in (("val", ("val", "valid", "validation")), ("test", ("test",))):
            for value in names:
                try:
                    found[split] = cls(**kwargs, split=value)
                    break
                except (ValueError, KeyError):  # torchvision's verify_str_arg: no such split
                    continue
        return train, found.get("val"), found.get("test")
    return _call(cls, kwargs, name, key), None, None


def _as_dataset(obj: Any, what: str, key: str) -> Dataset | None:
    if obj is None:
        return None
    if isinstance(obj, TensorDataset) and len(obj.tensors) == 2:
        return ArrayDataset(*obj.tensors)  # tensors already in memory: the fast path can index them
    if not (hasattr(obj, "__getitem__") and hasattr(obj, "__len__")):
        raise DataError(
            f"{key}: {what} is a {type(obj).__name__}, not a Dataset (it needs __len__ and __getitem__)"
        )
    return obj


def user_source(obj: Any, cfg: DataConfig) -> SourceData:
    """A `SourceData` from a user Dataset class or a function returning dataset(s)."""
    key = f"data.source {cfg.source!r}"
    options = dict(cfg.options)
    if inspect.isclass(obj):
        train, val, test = build_dataset_splits(obj, options, cfg.root, cfg.download, key)
        result: Any = (train, val, test)
    elif callable(obj):
        params = _params(obj)
        options = check_kwargs(obj, options, "data.options", skip=("root", "download"))
        for name, value in (("root", cfg.root), ("download", cfg.download)):
            if name in params and name not in options and value is not None:
                options[name] = value
        result = _call(obj, options, getattr(obj, "__name__", "the function"), key)
    else:
        raise ConfigError(
            f"{key}: names a {type(obj).__name__}; data.source 'module:attr' must name a Dataset "
            f"class or a function that returns datasets"
        )
    if isinstance(result, SourceData):
        return result
    if isinstance(result, dict):
        unknown = set(result) - {"train", "val", "test"}
        if unknown or "train" not in result:
            raise DataError(
                f"{key}: returned a dict with keys {sorted(result)}; use 'train' and optionally 'val', 'test'"
            )
        result = (result["train"], result.get("val"), result.get("test"))
    if isinstance(result, (tuple, list)):
        if len(result) == 2:
            result = (result[0], None, result[1])  # (train, test), like torchvision's train=True/False
        if len(result) != 3:
            raise DataError(
                f"{key}: returned {len(result)} items; return a dataset, (train, test) or (train, val, test)"
            )
    else:
        result = (result, None, None)
    train, val, test = (
        _as_dataset(d, what, key) for d, what in zip(result, ("the training set", "val", "test"))
    )
    if train is None:
        raise DataError(f"{key}: returned no training set")
    classes = getattr(train, "classes", None)
    if not (isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes)):
        classes = None
    return SourceData(
        train=train,
        val=val,
        test=test,
        class_names=list(classes) if classes else None,
        info={"source": cfg.source},
    )
