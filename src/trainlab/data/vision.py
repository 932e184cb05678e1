"""torchvision datasets from `data.root`: mnist, fashion_mnist, kmnist, cifar10, cifar100, and any
`torchvision.datasets` class by name (`data.source: SVHN`, its own arguments in `data.options`).

The MNIST family and CIFAR are decoded once: their `.data` / `.targets` become uint8 (N, C, H, W)
`ArrayDataset`s for the fast in-memory loader (no per-sample PIL conversion), with the train/test
split the dataset defines. Other classes stay lazy (PIL images, decoded in DataLoader workers).
Nothing downloads unless `data.download: true`; missing files are a `DataError` naming what to put where.
"""

from __future__ import annotations

import functools
import gzip
import inspect
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torchvision.datasets as tvd

from trainlab.config import DataConfig
from trainlab.data.base import ArrayDataset, SourceData
from trainlab.data.user import build_dataset_splits
from trainlab.errors import ConfigError, DataError
from trainlab.registry import DATASETS, Entry


def _is_mnist_like(cls: type) -> bool:
    # EMNIST/QMNIST keep .data/.targets like MNIST but store other files; the file list below is MNIST's.
    return issubclass(cls, tvd.MNIST) and all(url.endswith(".gz") for url, _ in getattr(cls, "resources", []))


def expected_files(cls: type) -> list[str]:
    """Paths relative to data.root that `cls` reads (empty when unknown)."""
    if _is_mnist_like(cls):
        return [f"{cls.__name__}/raw/{os.path.basename(url)[:-3]}(.gz)" for url, _ in cls.resources]
    if issubclass(cls, tvd.CIFAR10):
        names = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        return [f"{cls.base_folder}/{f}" for f in names]
    return []


def _gunzip_raw(cls: type, root: Path) -> None:
    """torchvision reads MNIST's extracted files only; extract the .gz files a user copied there."""
    if not _is_mnist_like(cls):
        return
    raw = root / cls.__name__ / "raw"
    for url, _ in cls.resources:
        name = os.path.basename(url)[:-3]
        if not (raw / name).exists() and (raw / f"{name}.gz").exists():
            with gzip.open(raw / f"{name}.gz", "rb") as src, open(raw / name, "wb") as dst:
                shutil.copyfileobj(src, dst)


def _missing(cls: type, cfg: DataConfig, error: Exception) -> DataError:
    root = Path(cfg.root or ".").expanduser().resolve()
    files = expected_files(cls)
    listed = f" Expected: {', '.join(str(root / f) for f in files)}." if files else ""
    how = (
        "Downloading failed"
        if cfg.download
        else "Set data.download: true to download them where there is a network (trainlab train cfg.yaml "
        "data.download=true), or copy the files there"
    )
    return DataError(
        f"data.source {cfg.source!r}: the {cls.__name__} files are not in data.root={root} "
        f"(torchvision: {error}).{listed} {how}."
    )


def _build(cls: type, cfg: DataConfig, options: dict[str, Any]) -> tuple[Any, Any, Any]:
    if cfg.root is None and "root" in inspect.signature(cls).parameters:
        raise ConfigError(
            f"data.root: data.source {cfg.source!r} reads {cls.__name__} from data.root; set it to "
            f"the folder that holds (or will hold, with data.download: true) "
            f"{', '.join(expected_files(cls)[:2]) or 'the files'}"
        )
    root = str(Path(cfg.root).expanduser()) if cfg.root is not None else None
    if root is not None:
        _gunzip_raw(cls, Path(root))
    try:
        return build_dataset_splits(cls, options, root, cfg.download, f"data.source {cfg.source!r}")
    except DataError as e:
        cause = e.__cause__
        if isinstance(cause, OSError) or (isinstance(cause, RuntimeError) and "download" in str(cause)):
            raise _missing(cls, cfg, cause) from None
        raise
    except RuntimeError as e:  # "Dataset not found. You can use download=True to download it"
        raise _missing(cls, cfg, e) from None
    except OSError as e:  # a failed download (no network), an unreadable file
        raise _missing(cls, cfg, e) from None


def _to_array(ds: Any) -> ArrayDataset:
    """MNIST: .data uint8 (N, H, W) tensor; CIFAR: .data uint8 (N, H, W, C) numpy -> uint8 (N, C, H, W)."""
    data = torch.as_tensor(ds.data)
    x = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)
    y = torch.as_tensor(ds.targets, dtype=torch.long)
    return ArrayDataset(x.contiguous(), y[:, 0] if y.ndim == 2 else y)  # QMNIST: (N, 8), the class first


def torchvision_source(cls: type, cfg: DataConfig, **options: Any) -> SourceData:
    """SourceData from a torchvision dataset class, decoded to tensors for the MNIST family and CIFAR."""
    train, val, test = _build(cls, cfg, options)
    classes = getattr(train, "classes", None)
    class_names = [str(c) for c in classes] if isinstance(classes, (list, tuple)) else None
    info: dict[str, Any] = {"source": cls.__name__, "root": str(cfg.root)}
    if issubclass(cls, (tvd.MNIST, tvd.CIFAR10)) and hasattr(train, "data"):
        train, val, test = (_to_array(d) if d is not None else None for d in (train, val, test))
        channels = train.x.shape[1]
        info.update(
            image_mode="L" if channels == 1 else "RGB", image_size=list(train.x.shape[2:]), in_memory=True
        )
    return SourceData(
        train=train,
        val=val,
        test=test,
        task="classification" if class_names else None,
        class_names=class_names,
        info=info,
    )


def _register(name: str, cls: type, description: str) -> None:
    def source(cfg: DataConfig, **options: Any) -> SourceData:
        return torchvision_source(cls, cfg, **options)

    source.__name__ = name
    DATASETS.add(name, source, description)


_register("mnist", tvd.MNIST, "MNIST digits, 1x28x28, 10 classes, 60k/10k (torchvision, from data.root)")
_register(
    "fashion_mnist", tvd.FashionMNIST, "FashionMNIST clothing, 1x28x28, 10 classes, 60k/10k (torchvision)"
)
_register("kmnist", tvd.KMNIST, "Kuzushiji-MNIST, 1x28x28, 10 classes, 60k/10k (torchvision)")
_register("cifar10", tvd.CIFAR10, "CIFAR-10, 3x32x32, 10 classes, 50k/10k (torchvision, from data.root)")
_register("cifar100", tvd.CIFAR100, "CIFAR-100, 3x32x32, 100 classes, 50k/10k (torchvision)")


def dataset_classes() -> dict[str, type]:
    return {
        n: c
        for n, c in vars(tvd).items()
        if inspect.isclass(c)
        and issubclass(c, torch.utils.data.Dataset)
        and not n.startswith("_")
        and n not in ("VisionDataset", "DatasetFolder", "ImageFolder")
    }


def _fallback(name: str) -> Entry | None:
    """`data.source: SVHN` (or svhn): any torchvision.datasets class, with data.options as its arguments."""
    classes = dataset_classes()
    lowered = {n.lower(): c for n, c in classes.items()}
    cls = classes.get(name) or lowered.get(name.lower())
    if cls is None:
        return None
    return Entry(name, functools.partial(torchvision_source, cls), f"torchvision.datasets.{cls.__name__}")


DATASETS.fallback = _fallback
DATASETS.extra_names = lambda: sorted(dataset_classes())
