"""What every data source produces.

A source returns a `SourceData`: one dataset (split later by `data.splits`) or its own train/val/test
datasets, plus what is known about it (task, class names). Tensor-backed data is an `ArrayDataset`,
which the fast in-memory loader batches by indexing (no per-sample `__getitem__`, no collate).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset

TASKS = ("classification", "binary", "regression")


class ArrayDataset(Dataset):
    """In-memory samples `x` (N, ...) and targets `y` (N,) or (N, k).

    `transform` maps a batch of inputs (B, ...) to model inputs; it is applied per batch by the fast
    loader and to a batch of one by `__getitem__`, so both paths give the same values. Images are
    kept as uint8 (N, C, H, W) and converted to float per batch, which saves 4x memory.

    With `rows` (a LongTensor), sample i is row `rows[i]` of the tensor given as `x` (`storage`), and
    a `subset` picks rows instead of copying them: for a memory-mapped image cache (decode_split), so
    that the splits cut from it stay on disk. Read inputs with `gather(index)` (the rows asked for);
    the `x` property copies every row of the split.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        rows: torch.Tensor | None = None,
    ):
        if len(x if rows is None else rows) != len(y):
            raise ValueError(f"x has {len(x if rows is None else rows)} samples but y has {len(y)}")
        self.storage, self.y, self.transform, self.rows = x, y, transform, rows

    @property
    def x(self) -> torch.Tensor:
        """The inputs of every sample (N, ...): the storage itself, or a copy of the rows it uses."""
        return self.storage if self.rows is None else self.storage[self.rows]

    def gather(self, index: torch.Tensor | slice) -> torch.Tensor:
        """The inputs of the samples at `index` (positions in this dataset)."""
        return self.storage[index if self.rows is None else self.rows[index]]

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.gather(slice(i, i + 1))
        if self.transform is not None:
            x = self.transform(x)
        return x[0], self.y[i]

    def subset(self, index: torch.Tensor | list[int]) -> ArrayDataset:
        """The samples at `index`: a copy of their inputs, or only their row numbers when `rows` is set."""
        index = torch.as_tensor(index, dtype=torch.long)
        if self.rows is not None:
            return ArrayDataset(self.storage, self.y[index], self.transform, self.rows[index])
        return ArrayDataset(self.storage[index], self.y[index], self.transform)

    def with_transform(self, transform: Callable | None) -> ArrayDataset:
        return ArrayDataset(self.storage, self.y, transform, self.rows)

    def with_targets(self, y: torch.Tensor) -> ArrayDataset:
        return ArrayDataset(self.storage, y, self.transform, self.rows)


@dataclass
class SourceData:
    """What a data source hands back before splitting."""

    train: Dataset  # all the data when the source has no split of its own
    val: Dataset | None = None
    test: Dataset | None = None
    task: str | None = None  # None: inferred from the targets
    class_names: list[str] | None = None
    feature_names: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)  # e.g. {"skipped_files": 2}


@dataclass
class DataBundle:
    """Split, checked data ready for loaders, plus everything `predict` needs later."""

    train: Dataset
    val: Dataset | None
    test: Dataset | None
    task: str  # "classification" | "binary" | "regression"
    input_shape: tuple[int, ...]  # one sample, e.g. (1, 8, 8), (10,), (T, F)
    output_dim: int  # classes for classification, 1 for binary, targets for regression
    class_names: list[str] | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)  # plain types only (saved in checkpoints)
    info: dict[str, Any] = field(default_factory=dict)  # dataset summary for the report
    # for splits cut from one source by data.val_fraction/test_fraction: each split's indices into it
    split_indices: dict[str, Any] | None = None

    @property
    def num_classes(self) -> int | None:
        return self.output_dim if self.task == "classification" else (2 if self.task == "binary" else None)
