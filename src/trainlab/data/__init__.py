"""Data: `build_data(config)` turns `config.data` into a split, checked `DataBundle`.

source (registry.DATASETS or module:attr) -> SourceData
  -> task (config.task, else the source's, else inferred from the targets; see `infer_task`)
  -> splits (data.splits: val/test fractions, stratified, seeded; k-fold)
  -> label check -> standardisation (fitted on train only) -> transforms -> DataBundle
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch.utils.data import Dataset

from trainlab.config import Config, DataConfig
from trainlab.data.base import TASKS, ArrayDataset, DataBundle, SourceData
from trainlab.data.splits import kfold_indices, split_source, targets_of
from trainlab.data.transforms import attach_transforms
from trainlab.errors import ConfigError, DataError
from trainlab.registry import DATASETS, check_kwargs

__all__ = [
    "ArrayDataset",
    "DataBundle",
    "SourceData",
    "build_data",
    "load_source",
    "infer_task",
    "kfold_indices",
    "apply_scaler",
    "targets_of",
]

# Float targets holding only whole numbers are class indices when there are at most this many
# distinct values (e.g. a CSV label column 0..9); more (e.g. ages, prices) reads as regression.
MAX_CLASSES_FROM_FLOATS = 20


def load_source(cfg: DataConfig) -> SourceData:
    """Call the source named by `cfg.source` with `cfg.options` (checked against its signature)."""
    import trainlab.data.sources  # noqa: F401  (fills registry.DATASETS)

    name = cfg.source
    if name in DATASETS or ":" not in name or name.startswith("torchvision:"):
        factory = DATASETS.get(name, "data.source")  # unknown -> ConfigError with the closest names
        options = check_kwargs(factory, cfg.options, "data.options", skip=("cfg",))
        source = factory(cfg, **options)
    else:
        obj = DATASETS.get(name, "data.source")  # imports module:attr
        if not (inspect.isfunction(obj) or (inspect.isclass(obj) and issubclass(obj, Dataset))):
            raise ConfigError(
                f"data.source: {name!r} is a {type(obj).__name__}, not a Dataset class or a function "
                f"returning datasets"
            )
        from trainlab.data.user import user_source

        source = user_source(obj, cfg)
    if not isinstance(source, SourceData):
        raise TypeError(f"data source {name!r} returned {type(source).__name__}, not SourceData")
    return source


def infer_task(targets: torch.Tensor, class_names: list[str] | None = None) -> str:
    """The task a target tensor implies (used only when neither config.task nor the source says):

    - more than one target column, or any non-whole value      -> "regression"
    - class names known: 2 -> "binary", more -> "classification"
    - whole numbers with 2 distinct values                     -> "binary"
    - integer dtype (class indices), or float dtype with at most MAX_CLASSES_FROM_FLOATS
      distinct whole values that are all >= 0                  -> "classification"
    - anything else (e.g. float ages 18..90)                   -> "regression"
    """
    if targets.ndim > 1 and targets.shape[1] > 1:
        return "regression"
    t = targets.reshape(-1)
    if t.is_floating_point() and not bool(torch.all(t == t.round())):
        return "regression"
    if class_names is not None:
        return "binary" if len(class_names) == 2 else "classification"
    distinct = torch.unique(t)
    if len(distinct) == 2:
        return "binary"
    if not t.is_floating_point() or (len(distinct) <= MAX_CLASSES_FROM_FLOATS and bool(distinct.min() >= 0)):
        return "classification"
    return "regression"


def _as_task_targets(ds: Dataset | None, task: str) -> Dataset | None:
    """Class indices as int64, regression values as float32 (only ArrayDataset targets can be changed)."""
    if not isinstance(ds, ArrayDataset):
        return ds
    if task == "regression" and not ds.y.is_floating_point():
        return ds.with_targets(ds.y.to(torch.float32))
    if task != "regression" and ds.y.is_floating_point() and bool(torch.all(ds.y == ds.y.round())):
        return ds.with_targets(ds.y.to(torch.int64))
    return ds


def _check_labels(splits: dict[str, Dataset], num_classes: int, where: str) -> None:
    """Every label must be a whole number in [0, num_classes): the error names the value and the split."""
    for split, ds in splits.items():
        y = targets_of(ds).reshape(-1)
        if y.is_floating_point():
            bad = y[(y != y.round()) | ~torch.isfinite(y)]
            if len(bad):
                raise DataError(
                    f"{where}: label {bad[0].item()!r} in the {split} split is not a class index "
                    f"(a whole number); for numeric targets set task: regression"
                )
        bad = y[(y < 0) | (y >= num_classes)]
        if len(bad):
            value = bad[0].item()
            hint = (
                "binary targets are 0 and 1"
                if num_classes == 2
                else f"class indices are 0..{num_classes - 1}"
            )
            raise DataError(
                f"{where}: label {value:g} in the {split} split is outside [0, {num_classes}): {hint}; "
                f"relabel the data from 0, or set task (classification / regression) in the config"
            )


def _standardize(train: Dataset, others: list[Dataset | None]) -> tuple[list[Dataset | None], dict[str, Any]]:
    """Fit per-feature mean/std on the training split (over samples, axis 0) and apply it to every split."""
    arrays = [ds for ds in [train, *others] if ds is not None]
    if not all(isinstance(ds, ArrayDataset) for ds in arrays) or not train.storage.is_floating_point():
        raise ConfigError(
            "data.standardize: works on numeric in-memory features (csv and the built-in tabular "
            "sets); for images use `Normalize: auto` in data.transforms"
        )
    mean = train.x.mean(dim=0)  # (F,) or the shape of one sample
    std = train.x.std(dim=0, unbiased=False)
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):  # squares past float32's range
        column = int((~torch.isfinite(mean) | ~torch.isfinite(std)).reshape(-1).nonzero()[0])
        raise DataError(
            f"data.standardize: feature {column} (counted from 0) holds values too large to standardise "
            "in float32 (largest magnitude "
            f"{float(train.x.reshape(len(train.x), -1)[:, column].abs().max()):.3g}); "
            "rescale that column, or drop data.standardize"
        )
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant feature stays as it is, centred
    scaled = [
        None if ds is None else ArrayDataset((ds.x - mean) / std, ds.y, ds.transform)
        for ds in [train, *others]
    ]
    return scaled, {"mean": mean.tolist(), "std": std.tolist()}


def check_same_data(bundle: DataBundle, trained: dict[str, Any], checkpoint: Any) -> None:
    """Refuse data rebuilt from a run's config (eval, doctor) that no longer matches what the run trained on
    (`trained`: the checkpoint's preprocessing): another set of columns, classes or input shape."""
    now = bundle.preprocessing
    changes = []
    before_csv, now_csv = trained.get("csv") or {}, now.get("csv") or {}
    if before_csv.get("columns") and before_csv.get("columns") != now_csv.get("columns"):
        old, new = before_csv["columns"], now_csv.get("columns") or []
        added, gone = [c for c in new if c not in old], [c for c in old if c not in new]
        changes.append(
            "the CSV's columns changed "
            f"({', '.join([*(f'new {c!r}' for c in added), *(f'gone {c!r}' for c in gone)]) or 'reordered'})"
        )
    for key, what in (("class_names", "classes"), ("input_shape", "input shape")):
        if trained.get(key) is not None and now.get(key) is not None and list(trained[key]) != list(now[key]):
            old, new = list(trained[key]), list(now[key])
            if key == "class_names":
                gone, added = [c for c in old if c not in new], [c for c in new if c not in old]
                detail = (
                    ", ".join([*(f"gone {c!r}" for c in gone), *(f"new {c!r}" for c in added)]) or "reordered"
                )
            else:
                detail = f"{tuple(old)} when trained, {tuple(new)} now"
            changes.append(f"the {what} changed ({detail})")
    if changes:
        raise DataError(
            f"the data of this run changed since it was trained ({checkpoint}): {'; '.join(changes)}. "
            f"Evaluate on data laid out as in training (the run's config.yaml names it)"
        )


def apply_scaler(x: torch.Tensor, scaler: dict[str, Any]) -> torch.Tensor:
    """(x - mean) / std with the statistics saved in `preprocessing["scaler"]` (for predict)."""
    mean = torch.as_tensor(scaler["mean"], dtype=x.dtype)
    std = torch.as_tensor(scaler["std"], dtype=x.dtype)
    return (x - mean) / std


def _class_counts(ds: Dataset | None, class_names: list[str]) -> dict[str, int] | None:
    if ds is None:
        return None
    counts = torch.bincount(targets_of(ds).reshape(-1).long(), minlength=len(class_names))
    return {name: int(c) for name, c in zip(class_names, counts)}


def sample_shape(x: Any) -> tuple[int, ...] | None:
    """The shape of one input: a tensor's or array's, (C, H, W) of a PIL image, None otherwise."""
    if hasattr(x, "shape"):
        return tuple(int(d) for d in x.shape)
    if hasattr(x, "getbands") and hasattr(x, "size"):  # PIL.Image: size is (W, H)
        return (len(x.getbands()), x.size[1], x.size[0])
    return None


REGRESSION_LOSSES = ("mseloss", "l1loss", "smoothl1loss", "huberloss")


def build_data(config: Config) -> DataBundle:
    """Load `config.data.source`, decide the task, split, check labels, standardise, attach transforms."""
    cfg = config.data
    source = load_source(cfg)
    where = f"data source {cfg.source!r}" + (f" ({source.info['path']})" if "path" in source.info else "")

    # The task: config.task wins, then the source's own, then a regression loss (MSELoss on whole-number
    # targets is a regression, not 7 classes), then the targets tell (see infer_task).
    if len(source.train) == 0:
        raise DataError(f"{where}: the training data is empty (0 samples)")
    loss_task = "regression" if config.loss.name.lower() in REGRESSION_LOSSES else None
    task = (
        config.task
        if config.task != "auto"
        else (source.task or loss_task or infer_task(targets_of(source.train), source.class_names))
    )
    if task not in TASKS:
        raise ValueError(f"data source {cfg.source!r} declared unknown task {task!r}")
    source.train, source.val, source.test = (
        _as_task_targets(d, task) for d in (source.train, source.val, source.test)
    )

    train, val, test, split_info = split_source(source, cfg, config.seed, stratified=task != "regression")
    split_indices = split_info.pop("_indices", None)
    splits = {name: ds for name, ds in (("train", train), ("val", val), ("test", test)) if ds is not None}

    class_names = source.class_names
    if task == "regression":
        y = targets_of(train)
        output_dim = 1 if y.ndim == 1 else int(y.shape[1])
        class_names = None
    else:
        if class_names is None:  # whole-number labels: named "0", "1", ... up to the largest one
            top = 1 if task == "binary" else max(int(targets_of(ds).max()) for ds in splits.values())
            class_names = [str(i) for i in range(max(top + 1, 2))]
        num_classes = 2 if task == "binary" else len(class_names)
        if task == "binary" and len(class_names) != 2:
            raise DataError(
                f"{where}: task binary needs 2 classes, but the data has {len(class_names)} "
                f"({', '.join(class_names[:10])}); set task: classification"
            )
        _check_labels(splits, num_classes, where)
        output_dim = 1 if task == "binary" else num_classes

    source_preprocessing = source.info.pop("preprocessing", {})
    # The summary, from the split datasets before transforms (targets are read without loading inputs).
    info: dict[str, Any] = {
        "source": cfg.source,
        "sizes": {name: len(ds) for name, ds in splits.items()},
        **split_info,
        **source.info,
    }
    if class_names is not None:
        info["class_counts"] = {name: _class_counts(ds, class_names) for name, ds in splits.items()}

    preprocessing: dict[str, Any] = {
        "task": task,
        "class_names": class_names,
        "feature_names": source.feature_names,
    }
    preprocessing.update(source_preprocessing)
    if cfg.standardize:
        (train, val, test), preprocessing["scaler"] = _standardize(train, [val, test])

    raw_shape = sample_shape(train[0][0])
    # What the source told (e.g. image_mode, image_size for image folders) plus what is decided here.
    bundle_info = {
        **source.info,
        "source": cfg.source,
        "task": task,
        "class_names": class_names,
        "input_shape": raw_shape,
        "seed": config.seed,
    }
    train, val, test, extra = attach_transforms(train, val, test, cfg, bundle_info)
    preprocessing.update(extra)
    try:
        input_shape = sample_shape(train[0][0])  # the first time the transforms run
    except (ValueError, TypeError, RuntimeError) as e:
        if not (cfg.transforms or cfg.eval_transforms):
            raise
        raise DataError(
            f"data.transforms: applying the list to the first training sample (shape "
            f"{raw_shape}) failed: {str(e).splitlines()[0][:300]}"
        ) from None
    if input_shape is None:
        raise DataError(
            f"{where}: a training sample is a {type(train[0][0]).__name__}, not a tensor; add "
            f"ToImage and ToDtype to data.transforms (or return tensors from the dataset)"
        )
    preprocessing["input_shape"] = list(input_shape)

    return DataBundle(
        train=train,
        val=val,
        test=test,
        task=task,
        input_shape=input_shape,
        output_dim=output_dim,
        class_names=class_names,
        preprocessing=preprocessing,
        info=info,
        split_indices=split_indices,
    )
