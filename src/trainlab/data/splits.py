"""Train / validation / test splits and k-fold cross-validation, seeded and stratified.

    source with one dataset        -> test_fraction off the whole, then val_fraction of the whole
    source with train + test       -> val_fraction of train becomes val; test is kept
    source with train + val + test -> kept as it is
    data.k_fold = K, data.fold = i -> the test split is made (or kept) as above, the rest is cut into
                                      K folds and fold i is the validation split

Classification targets are split stratified (each split keeps the class proportions) with
scikit-learn; when a class is too small for that, the split falls back to a plain shuffled one and
`info["stratified"]` says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split
from torch.utils.data import ConcatDataset, Dataset, Subset

from trainlab.config import DataConfig
from trainlab.data.base import ArrayDataset, SourceData
from trainlab.errors import ConfigError, DataError


def targets_of(dataset: Dataset) -> torch.Tensor:
    """All targets of a dataset as a tensor, without loading inputs where the dataset allows it.

    ArrayDataset: its `y`; torchvision-style datasets: their `.targets`; Subset / ConcatDataset: from
    their parents; anything else: one pass of `dataset[i][1]` (slow for images: expose `.targets`).
    """
    if isinstance(dataset, ArrayDataset):
        return dataset.y
    if isinstance(dataset, Subset):
        return targets_of(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    if isinstance(dataset, ConcatDataset):
        return torch.cat([targets_of(d) for d in dataset.datasets])
    targets = getattr(dataset, "targets", None)
    if targets is not None and len(targets) == len(dataset):
        return torch.as_tensor(np.asarray(targets))
    return torch.stack([torch.as_tensor(dataset[i][1]) for i in range(len(dataset))])


def take(dataset: Dataset, index: np.ndarray) -> Dataset:
    """The samples at `index` (an ArrayDataset stays one, so the fast loader still applies)."""
    if isinstance(dataset, ArrayDataset):
        return dataset.subset(torch.as_tensor(index, dtype=torch.long))
    return Subset(dataset, [int(i) for i in index])


def _labels_for_stratify(targets: torch.Tensor | None, stratified: bool) -> np.ndarray | None:
    if not stratified or targets is None or targets.ndim != 1:
        return None
    return targets.cpu().numpy()


def split_off(
    index: np.ndarray, size: float | int, targets: torch.Tensor | None, seed: int, stratified: bool
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Split `index` into (kept, taken) with `size` of it taken; returns whether it was stratified.

    `size` is a fraction of `index` (float) or a count (int), as in sklearn's `train_test_split`.
    """
    labels = _labels_for_stratify(targets, stratified)
    if labels is not None:
        try:
            kept, taken = train_test_split(index, test_size=size, random_state=seed, stratify=labels[index])
            return np.sort(kept), np.sort(taken), True
        except ValueError:
            pass  # a class with a single sample, or fewer taken samples than classes: plain split
    kept, taken = train_test_split(index, test_size=size, random_state=seed)
    return np.sort(kept), np.sort(taken), False


def kfold_indices(
    targets: torch.Tensor | np.ndarray | int, k: int, seed: int, stratified: bool
) -> list[tuple[np.ndarray, np.ndarray]]:
    """k (train_idx, val_idx) pairs whose val parts partition range(N); shuffled with `seed`.

    `targets` is the (N,) targets (or just N when there is nothing to stratify on). Stratified folds
    keep class proportions; they fall back to plain folds when a class has fewer than k samples.
    """
    n = targets if isinstance(targets, int) else len(targets)
    if k < 2:
        raise ConfigError(f"data.k_fold: needs at least 2 folds, got {k}")
    if k > n:
        raise ConfigError(f"data.k_fold: {k} folds need at least {k} samples to split, but there are {n}")
    placeholder = np.zeros(n)
    labels = None
    if stratified and not isinstance(targets, int):
        labels = np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets)
        if labels.ndim != 1 or np.unique(labels, return_counts=True)[1].min() < k:
            labels = None
    if labels is not None:
        folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(placeholder, labels)
    else:
        folds = KFold(n_splits=k, shuffle=True, random_state=seed).split(placeholder)
    return [(np.sort(tr).astype(np.int64), np.sort(va).astype(np.int64)) for tr, va in folds]


def _concat(a: Dataset, b: Dataset) -> Dataset:
    if isinstance(a, ArrayDataset) and isinstance(b, ArrayDataset):
        return ArrayDataset(torch.cat([a.x, b.x]), torch.cat([a.y, b.y]), a.transform)
    return ConcatDataset([a, b])


def split_source(
    source: SourceData, cfg: DataConfig, seed: int, stratified: bool
) -> tuple[Dataset, Dataset | None, Dataset | None, dict[str, Any]]:
    """(train, val, test, info) from a source, following `cfg.val_fraction`, `test_fraction`, k-fold."""
    info: dict[str, Any] = {}
    if cfg.fold is not None and cfg.k_fold is None:
        raise ConfigError("data.fold: is set but data.k_fold is not; set data.k_fold to the number of folds")
    train, val, test = source.train, source.val, source.test
    # Where each split came from: a random cut of the training data is from the training
    # distribution (doctor uses this to tell overfitting from mismatch).
    info["val_from"] = "source" if val is not None else ("k_fold" if cfg.k_fold else "val_fraction")
    info["test_from"] = "source" if test is not None else ("test_fraction" if cfg.test_fraction > 0 else None)
    targets = targets_of(train)
    index = np.arange(len(train))
    cut: dict[str, np.ndarray] = {}  # indices into the source's training set of the splits cut from it

    # 1. The test split: the source's own, else test_fraction of everything.
    if test is None and val is None and cfg.test_fraction > 0:
        _check_size(len(train), cfg.test_fraction, "data.test_fraction")
        index, test_idx, info["stratified"] = split_off(index, cfg.test_fraction, targets, seed, stratified)
        test = take(train, test_idx)
        cut["test"] = test_idx

    # 2. Validation: fold i of K, or the source's own, or val_fraction (of the whole data when the
    #    source had a single dataset, of its train split when it had a test split of its own).
    if cfg.k_fold is not None:
        fold = cfg.fold if cfg.fold is not None else 0
        if fold >= cfg.k_fold:
            raise ConfigError(
                f"data.fold: {fold} is not a fold of data.k_fold={cfg.k_fold} (use 0..{cfg.k_fold - 1})"
            )
        pool: Dataset = take(train, index)
        if val is not None:  # the source's own val split joins the pool that is cut into folds
            pool = _concat(pool, val)
        pool_targets = targets_of(pool)
        folds = kfold_indices(
            pool_targets if pool_targets.ndim == 1 else len(pool), cfg.k_fold, seed, stratified
        )
        train_idx, val_idx = folds[fold]
        train, val = take(pool, train_idx), take(pool, val_idx)
        info.update(k_fold=cfg.k_fold, fold=fold)
    elif val is None and cfg.val_fraction > 0:
        whole = len(source.train) if source.test is None else len(index)
        count = int(round(cfg.val_fraction * whole))
        if count < 1 or count >= len(index):
            raise DataError(
                f"data.val_fraction: {cfg.val_fraction} of {whole} samples leaves no validation or "
                f"no training samples; change data.val_fraction (0 turns validation off)"
            )
        index, val_idx, strat = split_off(index, count, targets, seed, stratified)
        info["stratified"] = info.get("stratified", True) and strat
        val = take(train, val_idx)
        train = take(train, index)
        cut["val"] = val_idx
    elif len(index) != len(train):
        train = take(train, index)
    if cut and cfg.k_fold is None:
        info["_indices"] = {"train": index, **cut}  # build_data keeps them out of the JSON summary
    return train, val, test, info


def _check_size(n: int, fraction: float, key: str) -> None:
    taken = int(np.ceil(fraction * n))
    if taken < 1 or taken >= n:
        raise DataError(
            f"{key}: {fraction} of {n} samples leaves an empty split; change {key} (0 turns it off)"
        )
