"""A few samples read from a dataset or a loader without side effects: for shape checks, the loss
check, FLOP counting, the layout trial, TensorBoard's sample images and the metrics' output size.

Peeking moves no loader position and no random stream the training run depends on (the global RNG is
forked; a batch transform's own generator is restored), so a run with more peeks is the same run.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from trainlab.data.base import ArrayDataset
from trainlab.data.loaders import TensorLoader


def sample_batch(source: Any, n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` (inputs, targets) of a Dataset, a DataLoader or trainlab's loaders, as model
    inputs (after the data's transform). Raises TypeError when the data has no tensor samples."""
    # a loader's dataset (TensorLoader, ResumableDataLoader, DataLoader); a Dataset as it is (a
    # TransformedDataset's own `.dataset` is the data before its transforms)
    dataset = source if isinstance(source, Dataset) else getattr(source, "dataset", source)
    # tensors to gather from: an ArrayDataset, a TensorLoader (x on its device), a loader's ArrayDataset
    tensors = source if isinstance(source, (ArrayDataset, TensorLoader)) else None
    tensors = dataset if tensors is None and isinstance(dataset, ArrayDataset) else tensors
    transform = getattr(tensors if tensors is not None else source, "transform", None)
    generator = getattr(transform, "generator", None)  # a BatchTransform's own random stream
    saved = generator.get_state() if generator is not None else None
    try:
        with torch.random.fork_rng(devices=[]):
            if tensors is not None:
                x = tensors.gather(slice(0, n))
                return (transform(x) if transform is not None else x), tensors.y[:n]
            items = [dataset[i] for i in range(min(n, len(dataset)))]
            return (
                torch.stack([torch.as_tensor(a) for a, _ in items]),
                torch.stack([torch.as_tensor(b) for _, b in items]),
            )
    finally:
        if generator is not None:
            generator.set_state(saved)
