"""Recurrent sequence models: nn.RNN / nn.LSTM / nn.GRU (batch_first) and a Linear on the last step.

How a sample of `input_shape` becomes a sequence (B, T, F):
    (T, F)     T steps of F features (as the notes' RNN, batch_first)
    (1, T)     a one-channel signal such as mnist1d: T steps of 1 feature
    (F,)       flat features: F steps of 1 feature
    (C, H, W)  an image read row by row: H steps of C*W features (28 steps of 28 for MNIST)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from trainlab.errors import ConfigError
from trainlab.registry import MODELS


def sequence_shape(input_shape: Sequence[int]) -> tuple[str, int]:
    """(how to view the input, features per step)."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 1:
        return "flat", 1
    if len(shape) == 2:
        return ("channel", 1) if shape[0] == 1 else ("steps", shape[1])
    if len(shape) == 3:
        return "rows", shape[0] * shape[2]
    raise ConfigError(
        f"model.name: a recurrent model takes sequences (T, F), signals (1, T), flat features (F,) or "
        f"images (C, H, W); the data gives samples of shape {shape}"
    )


class SequenceModel(nn.Module):
    """`cell` in {"rnn", "lstm", "gru"} over the sequence; the head reads the last step's hidden state
    (for a bidirectional net: the forward direction at the last step and the backward one at the first)."""

    def __init__(
        self,
        cell: str,
        input_shape: Sequence[int],
        output_dim: int,
        hidden_size: int = 64,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.view, input_size = sequence_shape(input_shape)
        rnn_class = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = rnn_class(
            input_size,
            hidden_size,
            num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.directions = 2 if bidirectional else 1
        self.fc = nn.Linear(hidden_size * self.directions, output_dim)

    def as_sequence(self, x: torch.Tensor) -> torch.Tensor:
        if self.view == "flat":
            return x.reshape(x.shape[0], -1, 1)  # (B, F) -> (B, F, 1)
        if self.view == "channel":
            return x.transpose(1, 2)  # (B, 1, T) -> (B, T, 1)
        if self.view == "rows":
            b, c, h, w = x.shape
            return x.permute(0, 2, 1, 3).reshape(b, h, c * w)  # (B, C, H, W) -> (B, H, C*W)
        return x  # (B, T, F)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h_n = self.rnn(self.as_sequence(x))  # h_n: (layers * directions, B, hidden)
        if isinstance(h_n, tuple):  # LSTM returns (h_n, c_n)
            h_n = h_n[0]
        last = h_n[-self.directions :]  # the top layer's final state, one per direction
        return self.fc(torch.cat(list(last), dim=1))  # (B, hidden * directions) -> (B, output_dim)


def _register(cell: str, description: str) -> None:
    def factory(
        input_shape,
        output_dim,
        hidden_size: int = 64,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
    ):
        return SequenceModel(cell, input_shape, output_dim, hidden_size, num_layers, bidirectional, dropout)

    factory.__name__ = cell
    MODELS.add(cell, factory, description)


_register(
    "rnn", "nn.RNN (tanh) over the sequence + Linear on the last step: hidden_size, num_layers, bidirectional"
)
_register(
    "lstm", "nn.LSTM over the sequence + Linear on the last step: hidden_size, num_layers, bidirectional"
)
_register("gru", "nn.GRU over the sequence + Linear on the last step: hidden_size, num_layers, bidirectional")
