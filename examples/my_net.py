"""A model from user code, for `model.name: "my_net:Net"` (see user_model.yaml).

trainlab imports `my_net` from the config's folder and calls `Net(**kwargs)`: the YAML keys beside
`name` are the keyword arguments, and `input_shape` / `num_classes` (also `in_features`,
`in_channels`, `output_dim`) are filled from the data when the constructor takes them.
"""
from __future__ import annotations

import torch
from torch import nn


class Net(nn.Module):
    """conv3x3 -> ReLU -> global average pool -> Linear, for images (C, H, W) of any size.

    `width` is the number of conv channels; `dropout` is applied before the classifier.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 16, dropout: float = 0.0):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"Net takes images (C, H, W), got samples of shape {tuple(input_shape)}")
        channels = input_shape[0]
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),  # (B, C, H, W) -> (B, width, H, W)
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),  # (B, width, 1, 1): the head does not depend on H and W
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, num_classes) logits for CrossEntropyLoss
