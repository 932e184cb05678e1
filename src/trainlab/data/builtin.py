"""Built-in data sources that work offline: scikit-learn's bundled sets, mnist1d, synthetic sets.

Each is `source(cfg: DataConfig, **options) -> SourceData` with tensors in `ArrayDataset`s;
`data.options` in the config are the keyword arguments after `cfg` (checked by `build_data`).
"""

from __future__ import annotations

import random

import numpy as np
import torch
from sklearn import datasets as skdatasets

from trainlab.config import DataConfig
from trainlab.data.base import ArrayDataset, SourceData
from trainlab.errors import ConfigError
from trainlab.registry import DATASETS


def _tabular(bunch, task: str, class_names: list[str] | None = None) -> SourceData:
    """A scikit-learn Bunch as (N, F) float32 features; class indices as int64, values as float32."""
    x = torch.as_tensor(bunch.data, dtype=torch.float32)
    y = torch.as_tensor(bunch.target, dtype=torch.float32 if task == "regression" else torch.int64)
    names = (
        class_names
        if class_names is not None
        else ([str(c) for c in bunch.target_names] if task != "regression" else None)
    )
    return SourceData(
        train=ArrayDataset(x, y),
        task=task,
        class_names=names,
        feature_names=[str(f) for f in bunch.feature_names],
    )


@DATASETS.register(
    "digits", "scikit-learn 8x8 handwritten digits: 1797 images 1x8x8, classification, 10 classes"
)
def digits(cfg: DataConfig, dtype: str = "float32") -> SourceData:
    """`dtype: float32` gives pixels in [0, 1]; `dtype: uint8` gives 0..255 images (like image files)."""
    bunch = skdatasets.load_digits()
    pixels = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8); raw 0..16
    if dtype == "uint8":
        x = (pixels * 255).round().to(torch.uint8)
    elif dtype == "float32":
        x = pixels
    else:
        raise ConfigError(f"data.options.dtype: {dtype!r} is not 'float32' or 'uint8'")
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    return SourceData(
        train=ArrayDataset(x, y), task="classification", class_names=[str(i) for i in range(10)]
    )


@DATASETS.register("iris", "iris flowers: 150 samples x 4 features, classification, 3 classes")
def iris(cfg: DataConfig) -> SourceData:
    return _tabular(skdatasets.load_iris(), "classification")


@DATASETS.register("wine", "wine cultivars: 178 samples x 13 features, classification, 3 classes")
def wine(cfg: DataConfig) -> SourceData:
    return _tabular(skdatasets.load_wine(), "classification")


@DATASETS.register(
    "breast_cancer",
    "breast cancer (Wisconsin): 569 samples x 30 features, binary, malignant (0) / benign (1)",
)
def breast_cancer(cfg: DataConfig) -> SourceData:
    return _tabular(skdatasets.load_breast_cancer(), "binary")


@DATASETS.register(
    "diabetes", "scikit-learn diabetes progression: 442 samples x 10 features, regression (1 target)"
)
def diabetes(cfg: DataConfig, scaled: bool = True) -> SourceData:
    """`scaled: true` (sklearn's default) gives mean-centred features scaled to unit norm."""
    return _tabular(skdatasets.load_diabetes(scaled=scaled), "regression")


@DATASETS.register(
    "mnist1d",
    "MNIST-1D, generated offline: 5000 sequences 1x40 (4000 train / 1000 test), classification, 10 classes",
)
def mnist1d(cfg: DataConfig, num_samples: int = 5000, seed: int = 42) -> SourceData:
    """The mnist1d package's generator (never its download); its own 80/20 train/test split.

    seed 42 is the package's default and gives the published benchmark data.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    if num_samples < 20:
        raise ConfigError(f"data.options.num_samples: mnist1d needs at least 20 samples, got {num_samples}")
    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    # make_dataset reseeds Python's and NumPy's global generators: put them back afterwards.
    states = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])

    def arrays(x: np.ndarray, y: np.ndarray) -> ArrayDataset:  # (N, 40) -> (N, 1, 40): one channel
        return ArrayDataset(
            torch.as_tensor(x, dtype=torch.float32).unsqueeze(1), torch.as_tensor(y, dtype=torch.int64)
        )

    return SourceData(
        train=arrays(data["x"], data["y"]),
        test=arrays(data["x_test"], data["y_test"]),
        task="classification",
        class_names=[str(i) for i in range(10)],
    )


@DATASETS.register(
    "synthetic_linear", "y = w.x + b + noise (default y = 2x): 100 samples x len(w) features, regression"
)
def synthetic_linear(
    cfg: DataConfig,
    w: float | list[float] = 2.0,
    b: float = 0.0,
    noise: float = 0.0,
    n: int = 100,
    seed: int = 0,
    low: float = 0.0,
    high: float = 5.0,
) -> SourceData:
    """x uniform in [low, high) with len(w) features; Gaussian noise of std `noise` on y."""
    weights = torch.as_tensor([w] if isinstance(w, (int, float)) else w, dtype=torch.float32)  # (F,)
    if weights.ndim != 1 or len(weights) == 0:
        raise ConfigError(f"data.options.w: {w!r} is not a number or a list of numbers")
    if n < 2:
        raise ConfigError(f"data.options.n: needs at least 2 samples, got {n}")
    gen = torch.Generator().manual_seed(seed)
    x = low + (high - low) * torch.rand(n, len(weights), generator=gen)  # (n, F)
    y = x @ weights + b + noise * torch.randn(n, generator=gen)  # (n,)
    names = ["x"] if len(weights) == 1 else [f"x{i}" for i in range(len(weights))]
    return SourceData(train=ArrayDataset(x, y), task="regression", feature_names=names)


@DATASETS.register(
    "synthetic_sine",
    "noisy sine sequences (T, 1) for RNNs: 600 samples, classification of the frequency, "
    "3 classes (1, 2, 3 cycles)",
)
def synthetic_sine(
    cfg: DataConfig, n: int = 600, seq_len: int = 50, num_classes: int = 3, noise: float = 0.1, seed: int = 0
) -> SourceData:
    """Class k is a sine of k+1 cycles per sequence, with random phase and amplitude in [0.5, 1.5].

    Inputs are (N, T, 1), batch-first as `nn.RNN(batch_first=True)` expects; the target is the class.
    """
    if num_classes < 2 or n < num_classes or seq_len < 4:
        raise ConfigError(
            f"data.options: synthetic_sine needs num_classes >= 2, n >= num_classes and "
            f"seq_len >= 4 (got num_classes={num_classes}, n={n}, seq_len={seq_len})"
        )
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes  # balanced classes
    y = y[torch.randperm(n, generator=gen)]
    t = torch.linspace(0, 1, seq_len)  # (T,)
    phase = 2 * torch.pi * torch.rand(n, 1, generator=gen)
    amplitude = 0.5 + torch.rand(n, 1, generator=gen)
    cycles = (y + 1).to(torch.float32).unsqueeze(1)  # (N, 1)
    x = amplitude * torch.sin(2 * torch.pi * cycles * t + phase) + noise * torch.randn(
        n, seq_len, generator=gen
    )
    return SourceData(
        train=ArrayDataset(x.unsqueeze(-1), y),
        task="classification",  # x: (N, T, 1)
        class_names=[f"{k + 1} cycle{'s' if k else ''}" for k in range(num_classes)],
    )


@DATASETS.register(
    "logistic_hours",
    "hours studied -> pass (synthetic, the logistic regression exercise): 200 samples x 1 feature, "
    "binary, fail (0) / pass (1)",
)
def logistic_hours(
    cfg: DataConfig, n: int = 200, threshold: float = 5.0, slope: float = 1.5, seed: int = 0
) -> SourceData:
    """hours uniform in [0, 10); P(pass) = sigmoid(slope * (hours - threshold))."""
    if n < 2:
        raise ConfigError(f"data.options.n: needs at least 2 samples, got {n}")
    gen = torch.Generator().manual_seed(seed)
    hours = 10 * torch.rand(n, 1, generator=gen)  # (n, 1)
    p_pass = torch.sigmoid(slope * (hours[:, 0] - threshold))
    y = torch.bernoulli(p_pass, generator=gen).to(torch.int64)
    return SourceData(
        train=ArrayDataset(hours, y), task="binary", class_names=["fail", "pass"], feature_names=["hours"]
    )
