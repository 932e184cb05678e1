"""torchvision sources from tiny files in the real formats (IDX, pickled CIFAR batches), through
torchvision's own classes."""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd

import trainlab.data.vision  # noqa: F401  (registers the sources)
from trainlab.config import DataConfig
from trainlab.data.base import ArrayDataset
from trainlab.data.transforms import attach_transforms
from trainlab.data.user import user_source
from trainlab.errors import ConfigError, DataError
from trainlab.registry import DATASETS


def _idx_images(images: np.ndarray) -> bytes:
    n, h, w = images.shape
    return struct.pack(">iiii", 2051, n, h, w) + images.astype(np.uint8).tobytes()


def _idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">ii", 2049, len(labels)) + labels.astype(np.uint8).tobytes()


def _write_mnist(root, folder, n_train=5, n_test=3, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        arrays[prefix] = (images, labels)
        for name, data in (
            (f"{prefix}-images-idx3-ubyte", _idx_images(images)),
            (f"{prefix}-labels-idx1-ubyte", _idx_labels(labels)),
        ):
            if gz:
                (raw / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (raw / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("source, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_family_from_idx_files(tmp_path, source, folder):
    arrays = _write_mnist(tmp_path, folder)
    src = DATASETS.get(source)(DataConfig(source=source, root=str(tmp_path)))
    assert isinstance(src.train, ArrayDataset) and isinstance(src.test, ArrayDataset) and src.val is None
    assert src.train.x.shape == (5, 1, 28, 28) and src.train.x.dtype == torch.uint8
    assert torch.equal(src.train.x[:, 0], torch.from_numpy(arrays["train"][0]))
    assert src.test.y.tolist() == arrays["t10k"][1].tolist()
    assert len(src.class_names) == 10
    assert src.info["image_mode"] == "L" and src.info["image_size"] == [28, 28]


def test_mnist_gz_files_copied_by_hand_are_extracted(tmp_path):
    arrays = _write_mnist(tmp_path, "MNIST", gz=True)
    src = DATASETS.get("mnist")(DataConfig(source="mnist", root=str(tmp_path)))
    assert src.train.y.tolist() == arrays["train"][1].tolist()


def test_mnist_then_transforms_give_float_batches(tmp_path):
    _write_mnist(tmp_path, "MNIST")
    cfg = DataConfig(
        source="mnist", root=str(tmp_path), transforms=["ToTensor", {"Normalize": [[0.1307], [0.3081]]}]
    )
    src = DATASETS.get("mnist")(cfg)
    train, _, test, pre = attach_transforms(src.train, None, src.test, cfg, src.info)
    assert pre["fast_path"] is True
    batch = train.transform(train.x[:4])
    expected = (src.train.x[:4].float() / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(batch, expected)


def test_missing_mnist_files_name_root_files_and_remedy(tmp_path):
    with pytest.raises(DataError) as err:
        DATASETS.get("mnist")(DataConfig(source="mnist", root=str(tmp_path)))
    text = str(err.value)
    assert str(tmp_path) in text
    assert "MNIST/raw/train-images-idx3-ubyte" in text and "t10k-labels-idx1-ubyte" in text
    assert "data.download: true" in text and "copy" in text


def test_missing_root_is_a_config_error():
    with pytest.raises(ConfigError, match="data.root"):
        DATASETS.get("kmnist")(DataConfig(source="kmnist"))


def _write_cifar10(root, per_batch=2, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        written[name] = (data, labels)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f)
    return written


def test_cifar10_from_pickled_batches(tmp_path, monkeypatch):
    # Only the md5 comparison is patched (our tiny batches are not the real files); existence still counts.
    monkeypatch.setattr(tvd.cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    written = _write_cifar10(tmp_path)
    src = DATASETS.get("cifar10")(DataConfig(source="cifar10", root=str(tmp_path)))
    assert src.train.x.shape == (10, 3, 32, 32) and src.test.x.shape == (2, 3, 32, 32)
    first = torch.from_numpy(written["data_batch_1"][0][0].reshape(3, 32, 32))  # stored channel-planar
    assert torch.equal(src.train.x[0], first)
    assert src.test.y.tolist() == written["test_batch"][1]
    assert src.class_names[:2] == ["airplane", "automobile"] and src.info["image_mode"] == "RGB"


def test_missing_cifar_lists_the_batches(tmp_path):
    with pytest.raises(DataError) as err:
        DATASETS.get("cifar10")(DataConfig(source="cifar10", root=str(tmp_path)))
    assert "cifar-10-batches-py/data_batch_1" in str(err.value) and "test_batch" in str(err.value)


def test_any_torchvision_class_by_name_with_options():
    entry = DATASETS.entry("fakedata", "data.source")  # case-insensitive fallback to torchvision.datasets
    cfg = DataConfig(source="FakeData", options={"size": 3, "image_size": [3, 6, 5], "num_classes": 2})
    src = entry.factory(cfg, **cfg.options)
    assert len(src.train) == 3 and src.test is None
    train, _, _, pre = attach_transforms(src.train, None, None, cfg, src.info)
    x, _ = train[0]
    assert x.dtype == torch.float32 and x.shape == (3, 6, 5) and x.min() >= 0 and x.max() <= 1
    assert pre["fast_path"] is False and pre["image_mode"] == "RGB"


def test_unknown_torchvision_option_is_a_config_error():
    cfg = DataConfig(source="FakeData", options={"sise": 3})
    with pytest.raises(ConfigError, match=r"data.options.sise.*size"):
        DATASETS.get("FakeData")(cfg, **cfg.options)


def test_split_datasets_missing_files(tmp_path):
    with pytest.raises(DataError, match=r"SVHN.*data.download"):
        DATASETS.get("SVHN")(DataConfig(source="SVHN", root=str(tmp_path)))


# ----------------------------------------------------------------------------- user code


class _Squares(torch.utils.data.Dataset):
    def __init__(self, root, train=True, n=4):
        self.root, self.train, self.n = root, train, n if train else 2

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.full((1, 2, 2), float(i)), i % 2


def test_user_dataset_class_with_train_argument(tmp_path):
    src = user_source(_Squares, DataConfig(source="m:_Squares", root=str(tmp_path), options={"n": 6}))
    assert len(src.train) == 6 and len(src.test) == 2 and src.train.root == str(tmp_path)


def test_user_function_returning_tuples_and_tensor_datasets():
    def make(size=4):
        x = torch.randn(size, 3)
        ds = torch.utils.data.TensorDataset(x, torch.arange(size))
        return ds, ds, ds

    src = user_source(make, DataConfig(source="m:make", options={"size": 5}))
    assert isinstance(src.train, ArrayDataset) and len(src.val) == 5  # tensors: the fast path
    with pytest.raises(ConfigError, match="data.options.sizes"):
        user_source(make, DataConfig(source="m:make", options={"sizes": 5}))


def test_user_function_errors_name_the_source():
    def broken():
        raise ValueError("bad file x.csv")

    with pytest.raises(DataError, match=r"data.source 'm:broken'.*x\.csv"):
        user_source(broken, DataConfig(source="m:broken"))
    with pytest.raises(DataError, match="not a Dataset"):
        user_source(lambda: 42, DataConfig(source="m:f"))
