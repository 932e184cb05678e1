"""Every built-in offline source loads with the right shapes, task, classes and options."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from trainlab.config import load_config
from trainlab.data import build_data
from trainlab.errors import ConfigError
from trainlab.registry import DATASETS


def load(source, **data):
    return build_data(load_config({"data": {"source": source, **data}}))


@pytest.mark.parametrize(
    "source, n, shape, task, output_dim, classes",
    [
        ("digits", 1797, (1, 8, 8), "classification", 10, 10),
        ("iris", 150, (4,), "classification", 3, 3),
        ("wine", 178, (13,), "classification", 3, 3),
        ("breast_cancer", 569, (30,), "binary", 1, 2),
        ("diabetes", 442, (10,), "regression", 1, None),
        ("synthetic_linear", 100, (1,), "regression", 1, None),
        ("synthetic_sine", 600, (50, 1), "classification", 3, 3),
        ("logistic_hours", 200, (1,), "binary", 1, 2),
    ],
)
def test_builtin_shapes_tasks_classes(source, n, shape, task, output_dim, classes):
    b = load(source)
    assert sum(b.info["sizes"].values()) == n
    assert b.input_shape == shape and b.task == task and b.output_dim == output_dim
    assert (b.class_names is None) if classes is None else len(b.class_names) == classes
    x, y = b.train[0]
    assert x.shape == shape and x.dtype == torch.float32
    assert y.dtype == (torch.float32 if task == "regression" else torch.int64)
    if classes:  # every class shows up in training, labels are valid indices
        assert set(b.train.y.tolist()) == set(range(classes))


def test_every_registered_builtin_has_a_description_with_its_task():
    for name in (
        "digits",
        "iris",
        "wine",
        "breast_cancer",
        "diabetes",
        "mnist1d",
        "synthetic_linear",
        "synthetic_sine",
        "logistic_hours",
        "csv",
    ):
        description = DATASETS.entry(name, "data.source").description
        assert any(t in description for t in ("classification", "binary", "regression", "task")), name


def test_digits_as_uint8_images():
    b = load("digits", options={"dtype": "uint8"})
    assert b.train.x.dtype == torch.uint8 and int(b.train.x.max()) == 255
    with pytest.raises(ConfigError, match="data.options.dtype"):
        load("digits", options={"dtype": "int3"})


def test_mnist1d_is_generated_offline_with_its_own_split_and_leaves_global_rng_alone():
    random.seed(5)
    np.random.seed(5)
    expected = (random.random(), np.random.rand())
    random.seed(5)
    np.random.seed(5)
    b = load("mnist1d", options={"num_samples": 100})
    assert (random.random(), np.random.rand()) == expected
    assert (
        b.info["sizes"]["test"] == 20
        and b.input_shape == (1, 40)
        and b.class_names == [str(i) for i in range(10)]
    )
    again = load("mnist1d", options={"num_samples": 100})
    assert torch.equal(b.test.x, again.test.x)


def test_synthetic_linear_follows_its_formula():
    b = load(
        "synthetic_linear", options={"w": [1.0, -3.0], "b": 0.5, "n": 50}, val_fraction=0, test_fraction=0
    )
    x, y = b.train.x, b.train.y
    assert x.shape == (50, 2) and b.output_dim == 1
    torch.testing.assert_close(y, x[:, 0] - 3 * x[:, 1] + 0.5)
    default = load("synthetic_linear", val_fraction=0, test_fraction=0)
    torch.testing.assert_close(default.train.y, 2 * default.train.x[:, 0])  # the notes' y = 2x
    noisy = load("synthetic_linear", options={"noise": 0.5, "seed": 1}, val_fraction=0, test_fraction=0)
    residual = noisy.train.y - 2 * noisy.train.x[:, 0]
    assert 0.3 < residual.std().item() < 0.7


def test_synthetic_sine_classes_differ_in_frequency():
    b = load("synthetic_sine", options={"n": 90, "noise": 0.0}, val_fraction=0, test_fraction=0)
    x, y = b.train.x[..., 0], b.train.y  # (N, T)
    crossings = ((x[:, 1:] * x[:, :-1]) < 0).sum(1).float()  # zero crossings ~ 2 per cycle
    means = [crossings[y == k].mean().item() for k in range(3)]
    assert means[0] < means[1] < means[2]


def test_logistic_hours_more_hours_pass_more_often():
    b = load("logistic_hours", val_fraction=0, test_fraction=0)
    hours, passed = b.train.x[:, 0], b.train.y
    assert passed[hours > 7].float().mean() > 0.9 and passed[hours < 3].float().mean() < 0.1
    assert b.class_names == ["fail", "pass"] and b.preprocessing["feature_names"] == ["hours"]


def test_standardize_builtin_tabular_and_refuse_images():
    b = load("wine", standardize=True)
    torch.testing.assert_close(b.train.x.mean(0), torch.zeros(13), atol=1e-4, rtol=0)
    assert len(b.preprocessing["scaler"]["mean"]) == 13
    assert b.val.x.mean(0).abs().max() > 1e-3  # val is scaled with train's statistics, not its own
    with pytest.raises(ConfigError, match="data.standardize"):
        load("digits", standardize=True, options={"dtype": "uint8"})
