"""A data source from user code, for `data.source: "my_data:red_curve"` (see sigmoid_regression.yaml).

trainlab calls the function with `data.options` as keyword arguments; it may return one Dataset,
(train, test), (train, val, test) or a dict of them. A TensorDataset of (x, y) stays in memory.
"""
from __future__ import annotations

import torch
from torch.utils.data import TensorDataset


def red_curve(n: int = 400, noise: float = 0.05, seed: int = 0) -> TensorDataset:
    """A 1-D piecewise-smooth curve: a constant plus three sigmoid steps of different height,
    position and steepness (the notes' "red curve = constant + sum of Z-shaped curves").

    x: (n, 1) uniform in [-3, 3); y: (n,) float, so the task is regression.
    """
    gen = torch.Generator().manual_seed(seed)
    x = 6 * torch.rand(n, 1, generator=gen) - 3  # (n, 1)
    t = x[:, 0]
    y = (0.5 + 1.0 * torch.sigmoid(4 * (t + 1.5)) - 1.5 * torch.sigmoid(6 * t)
         + 0.8 * torch.sigmoid(3 * (t - 1.5)))
    y = y + noise * torch.randn(n, generator=gen)
    return TensorDataset(x, y)
