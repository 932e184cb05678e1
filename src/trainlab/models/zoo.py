"""The model zoo: the notes' models as factories `factory(input_shape, output_dim, **kwargs)`.

`input_shape` is one sample without the batch dimension, e.g. (10,) for 10 features, (1, 28, 28)
for an MNIST image, (1, 40) for a one-channel signal such as mnist1d; `output_dim` is the number of
classes (classification), 1 (binary: one logit, the sigmoid lives in BCEWithLogitsLoss) or the
number of targets (regression). Every size inside a model (the first fully connected layer's input
included) is computed from `input_shape`, so a model never disagrees with its data.

Convolutional models take images (C, H, W) with 2-d layers and signals (C, L) with 1-d layers; a
flat (F,) input is viewed as a square one-channel image when F is a square (784 -> 1x28x28), else as
a one-channel signal (1, F). The recurrent models are in `models/rnn.py`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from trainlab.errors import ConfigError, did_you_mean
from trainlab.registry import MODELS

ACTIVATIONS = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
}


def make_activation(name: str, key: str = "model.activation") -> nn.Module:
    if name not in ACTIVATIONS:
        raise ConfigError(
            f"{key}: unknown activation {name!r}{did_you_mean(name, ACTIVATIONS)}; "
            f"choose from {', '.join(ACTIVATIONS)}"
        )
    return ACTIVATIONS[name]()


def num_features(input_shape: Sequence[int]) -> int:
    """Features of one sample once flattened: (1, 8, 8) -> 64."""
    return math.prod(input_shape)


# ----------------------------------------------------------------------------- flat models


@MODELS.register("linear", "linear regression y = w·x + b (flattens its input)")
def linear(input_shape, output_dim, bias: bool = True):
    # bias: false is the notes' y = w·x
    return nn.Sequential(
        OrderedDict(flatten=nn.Flatten(), linear=nn.Linear(num_features(input_shape), output_dim, bias=bias))
    )


@MODELS.register(
    "logistic", "logistic regression: one Linear to a logit (BCEWithLogitsLoss applies the sigmoid)"
)
def logistic(input_shape, output_dim):
    # output_dim is 1 for a binary task; with C classes this is multinomial (softmax) regression.
    return linear(input_shape, output_dim)


@MODELS.register(
    "sigmoid_net", "y = b + cᵀσ(b + W x): a sum of `units` sigmoids (activation: relu for ReLUs)"
)
def sigmoid_net(input_shape, output_dim, units: int = 32, activation: str = "sigmoid"):
    # The notes' "constant + sum of sigmoid curves": hidden Linear (b + W x), σ, output Linear (b + cᵀ·).
    act = make_activation(activation)
    return nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            hidden=nn.Linear(num_features(input_shape), units),
            act=act,
            out=nn.Linear(units, output_dim),
        )
    )


@MODELS.register(
    "mlp", "multi-layer perceptron: hidden, activation, dropout, batch_norm (flattens its input)"
)
def mlp(
    input_shape,
    output_dim,
    hidden: Sequence[int] = (64, 32),
    activation: str = "relu",
    dropout: float = 0.0,
    batch_norm: bool = False,
):
    layers: list[nn.Module] = [nn.Flatten()]
    width = num_features(input_shape)
    for h in hidden:
        layers.append(nn.Linear(width, h))
        if batch_norm:
            layers.append(nn.BatchNorm1d(h))
        layers.append(make_activation(activation))
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, output_dim))
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- conv building blocks


class Layers:
    """The 1-d or 2-d variants of the layers a conv net needs, chosen by the sample's rank."""

    def __init__(self, dims: int):
        self.dims = dims
        self.Conv = (nn.Conv1d, nn.Conv2d)[dims - 1]
        self.MaxPool = (nn.MaxPool1d, nn.MaxPool2d)[dims - 1]
        self.AvgPool = (nn.AvgPool1d, nn.AvgPool2d)[dims - 1]
        self.BatchNorm = (nn.BatchNorm1d, nn.BatchNorm2d)[dims - 1]


def spatial_shape(input_shape: Sequence[int], model: str) -> tuple[int, ...]:
    """The (C, H, W) or (C, L) shape a conv net sees for a sample of `input_shape`."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 1:
        side = math.isqrt(shape[0])
        return (1, side, side) if side * side == shape[0] else (1, shape[0])
    if len(shape) in (2, 3):
        return shape
    raise ConfigError(
        f"model.name: {model} takes images (C, H, W), signals (C, L) or flat features (F,); "
        f"the data gives samples of shape {shape}"
    )


class ConvNet(nn.Module):
    """Base of the zoo's conv nets: views the input as `sample_shape`, runs `features`, then `head`."""

    name = "conv net"

    def __init__(self, input_shape: Sequence[int]):
        super().__init__()
        self.sample_shape = spatial_shape(input_shape, self.name)
        self.layers = Layers(len(self.sample_shape) - 1)

    def flat_size(self) -> int:
        """Features after `self.features` for one sample: a dry run on zeros, so sizes always agree."""
        try:
            with torch.no_grad():
                was = self.training
                self.eval()
                out = self.features(torch.zeros(1, *self.sample_shape))
                self.train(was)
        except RuntimeError as e:
            raise ConfigError(
                f"model.name: {self.name} cannot take samples of shape {self.sample_shape}: they are too "
                f"small for its convolutions and poolings ({str(e).splitlines()[0]}); resize the input "
                f"(data.transforms) or pick a model for small inputs such as small_cnn"
            ) from None
        return out[0].numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != len(self.sample_shape) + 1:  # flat (B, F) -> (B, 1, s, s) or (B, 1, F)
            x = x.reshape(x.shape[0], *self.sample_shape)
        return self.head(torch.flatten(self.features(x), 1))


@MODELS.register(
    "small_cnn", "two conv3x3-BN-ReLU-maxpool blocks and an fc head (for 8x8 digits and any small image)"
)
class SmallCNN(ConvNet):
    name = "small_cnn"

    def __init__(
        self,
        input_shape,
        output_dim,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        dropout: float = 0.25,
        batch_norm: bool = True,
    ):
        super().__init__(input_shape)
        L, blocks, c_in = self.layers, [], self.sample_shape[0]
        for c in channels:
            blocks += [L.Conv(c_in, c, 3, padding=1, bias=not batch_norm)]
            blocks += [L.BatchNorm(c)] if batch_norm else []
            # ceil_mode keeps a size-1 axis at 1, so tiny inputs (e.g. 1-row images) still fit.
            blocks += [nn.ReLU(), L.MaxPool(2, ceil_mode=True)]
            c_in = c
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(self.flat_size(), hidden), nn.ReLU(), nn.Linear(hidden, output_dim)
        )


@MODELS.register("lenet", "the notes' MNIST CNN: conv k5 ->10, pool, conv k5 ->20, pool, fc (320 for 28x28)")
class LeNet(ConvNet):
    name = "lenet"

    def __init__(self, input_shape, output_dim, channels: Sequence[int] = (10, 20), kernel_size: int = 5):
        super().__init__(input_shape)
        L = self.layers
        c1, c2 = channels
        # relu(pool(conv(x))) twice, as in the notes; 1x28x28 -> 10x12x12 -> 20x4x4 = 320 features.
        self.features = nn.Sequential(
            L.Conv(self.sample_shape[0], c1, kernel_size),
            L.MaxPool(2),
            nn.ReLU(),
            L.Conv(c1, c2, kernel_size),
            L.MaxPool(2),
            nn.ReLU(),
        )
        self.head = nn.Linear(self.flat_size(), output_dim)


@MODELS.register(
    "cnn_classifier", "the notes' food classifier: 3 conv-BN-ReLU-pool blocks 64/128/512, fc 1024-32"
)
class CNNClassifier(ConvNet):
    """Three Conv3x3(pad 1)-BatchNorm-ReLU-MaxPool2 blocks, then FC 1024 - 32 - classes.

    The notes print a 512x4x4 fc input, which only holds with five blocks on 128x128 images; three
    blocks give 512x16x16 (a 134M-parameter fc). Here the fc input is computed from the data;
    `adaptive_pool: 4` pools the features to 4x4 first, giving the notes' 512x4x4 fc on any size.
    """

    name = "cnn_classifier"

    def __init__(
        self,
        input_shape=(3, 128, 128),
        output_dim=11,
        channels: Sequence[int] = (64, 128, 512),
        fc: Sequence[int] = (1024, 32),
        adaptive_pool: int | None = None,
    ):
        super().__init__(input_shape)
        L, blocks, c_in = self.layers, [], self.sample_shape[0]
        for c in channels:
            blocks += [L.Conv(c_in, c, 3, 1, 1), L.BatchNorm(c), nn.ReLU(), L.MaxPool(2, 2, 0)]
            c_in = c
        if adaptive_pool:
            blocks.append((nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)[L.dims - 1](adaptive_pool))
        self.features = nn.Sequential(*blocks)
        head, width = [], self.flat_size()
        for h in fc:
            head += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.head = nn.Sequential(*head, nn.Linear(width, output_dim))


class InceptionA(nn.Module):
    """The notes' Inception block: four branches concatenated on channels, 16 + 24 + 24 + 24 = 88."""

    out_channels = 88

    def __init__(self, in_channels: int, L: Layers):
        super().__init__()
        self.branch1x1 = L.Conv(in_channels, 16, 1)
        self.branch5x5 = nn.Sequential(L.Conv(in_channels, 16, 1), L.Conv(16, 24, 5, padding=2))
        self.branch3x3 = nn.Sequential(
            L.Conv(in_channels, 16, 1), L.Conv(16, 24, 3, padding=1), L.Conv(24, 24, 3, padding=1)
        )
        self.branch_pool = nn.Sequential(L.AvgPool(3, stride=1, padding=1), L.Conv(in_channels, 24, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Every branch keeps the spatial size, so they concatenate on dim 1 (channels).
        return torch.cat(
            [self.branch1x1(x), self.branch5x5(x), self.branch3x3(x), self.branch_pool(x)], dim=1
        )


@MODELS.register(
    "inception", "the notes' Inception net: conv k5, pool, InceptionA, conv k5, pool, InceptionA, fc"
)
class InceptionNet(ConvNet):
    name = "inception"

    def __init__(self, input_shape, output_dim):
        super().__init__(input_shape)
        L = self.layers
        # 1x28x28 -> 10x12x12 -> 88x12x12 -> 20x4x4 -> 88x4x4 = 1408 features.
        self.features = nn.Sequential(
            L.Conv(self.sample_shape[0], 10, 5),
            L.MaxPool(2),
            nn.ReLU(),
            InceptionA(10, L),
            L.Conv(InceptionA.out_channels, 20, 5),
            L.MaxPool(2),
            nn.ReLU(),
            InceptionA(20, L),
        )
        self.head = nn.Linear(self.flat_size(), output_dim)


class ResidualBlock(nn.Module):
    """The notes' residual block: out = relu(x + conv2(relu(conv1(x)))); 3x3 convs with padding 1
    keep C, H and W, so x and y can be added."""

    def __init__(self, channels: int, L: Layers):
        super().__init__()
        self.conv1 = L.Conv(channels, channels, 3, padding=1)
        self.conv2 = L.Conv(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(torch.relu(self.conv1(x)))
        return torch.relu(x + y)


@MODELS.register(
    "resnet_small",
    "the notes' residual net: conv k5 ->16, pool, ResidualBlock, conv k5 ->32, pool, block, fc",
)
class ResNetSmall(ConvNet):
    name = "resnet_small"

    def __init__(self, input_shape, output_dim):
        super().__init__(input_shape)
        L = self.layers
        # 1x28x28 -> 16x12x12 -> 32x4x4 = 512 features.
        self.features = nn.Sequential(
            L.Conv(self.sample_shape[0], 16, 5),
            L.MaxPool(2),
            nn.ReLU(),
            ResidualBlock(16, L),
            L.Conv(16, 32, 5),
            L.MaxPool(2),
            nn.ReLU(),
            ResidualBlock(32, L),
        )
        self.head = nn.Linear(self.flat_size(), output_dim)
