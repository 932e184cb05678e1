"""Every `examples/*.yaml` validates, builds the notes' model it promises, and trains a few steps end
to end: on the real data where that is offline (scikit-learn sets, mnist1d, synthetic sets), and on
tiny stand-ins written in the real on-disk format elsewhere (IDX files for MNIST/FashionMNIST,
pickled CIFAR-10 batches, JPEG/PNG folders, a gzip'ed headerless CSV), through the real loaders.

Runs skip the plots/report and TensorBoard's extra figures (`fast_runs`): those cost seconds of
matplotlib per run and have their own tests; the training, checkpoints and metrics are real.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import trainlab
from conftest import load_run_dir_checker
from trainlab.config import load_config
from trainlab.data import build_data
from trainlab.data.base import ArrayDataset
from trainlab.engine.callbacks import Callback
from trainlab.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add contention

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ALL = sorted(p.stem for p in EXAMPLES.glob("*.yaml"))

# Examples whose data ship with trainlab's dependencies (no files needed).
OFFLINE = [
    "linear_regression",
    "sigmoid_regression",
    "sklearn_diabetes_regression",
    "logistic_regression",
    "rnn_sequences",
    "mnist1d",
    "digits_cnn",
    "digits_mlp_shallow",
    "digits_mlp_deep",
    "warmup_cosine",
    "user_model",
    "sweep_digits",
    "optimizers_grid",
]  # the sweeps: `train` trains their base config
# A smoke run (`trainlab train CONFIG --smoke`: 2 optimizer steps, 1 validation and 1 test batch) of
# the config as it is, epochs, warmups and schedules included: enough to run every part of the
# pipeline once, and the proof that a short run of every example works.
FEW_STEPS = {"train.smoke": True, "train.device": "cpu", "data.num_workers": 0}


class _NoExtras(Callback):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


@pytest.fixture
def fast_runs(no_report, monkeypatch):
    import trainlab.report.tensorboard_extras as extras

    monkeypatch.setattr(extras, "TensorBoardExtras", _NoExtras)


def _train(name: str, out: Path, **overrides: Any) -> trainlab.Run:
    return trainlab.train(EXAMPLES / f"{name}.yaml", {**FEW_STEPS, **overrides}, out=out, quiet=True)


def _assert_trained(run: Any, steps: int = 2) -> dict[str, Any]:
    assert run.status == "completed"
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary["global_step"] == steps
    rows = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["split"] == "train" and "loss" in r]
    assert losses and all(np.isfinite(losses))
    assert (run.run_dir / "checkpoints" / "best.pt").is_file() and (
        run.run_dir / "model.safetensors"
    ).is_file()
    return summary


def _linears(model: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]


# ----------------------------------------------------------------------------- every file


@pytest.mark.parametrize("name", ALL)
def test_example_validates_and_opens_with_a_comment(name):
    path = EXAMPLES / f"{name}.yaml"
    cfg = load_config(path)
    assert cfg.name == name  # run directories are runs/<file name>
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and len(first) > 20, f"{path.name} must open with a comment naming its idea"


def test_readme_table_lists_every_example_and_only_existing_ones():
    text = (EXAMPLES / "README.md").read_text()
    listed = set(re.findall(r"`([\w]+)\.yaml`", text))
    assert listed == set(ALL)


def test_every_example_is_exercised_below():
    covered = (
        set(OFFLINE)
        | set(IDX_EXAMPLES)
        | {"cifar10_sequential", "food11", "ants_bees", "diabetes_csv", "kfold_iris"}
    )
    assert covered == set(ALL), f"examples without a run test: {set(ALL) - covered}"


# ----------------------------------------------------------------------------- offline data


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_example_trains_a_few_steps(name, tmp_path, fast_runs):
    overrides: dict[str, Any] = {"data.batch_size": 8}
    if name == "mnist1d":
        overrides["data.options.num_samples"] = 500  # the same generator; 5000 samples take ~10 s to draw
    run = _train(name, tmp_path / name, **overrides)
    _assert_trained(run)
    if name == "digits_cnn":  # one run checked against the run-directory contract of DESIGN.md
        checker = load_run_dir_checker()
        if checker is not None:
            assert checker.check(run.run_dir, "completed") == []


def test_digits_cnn_example_is_the_built_in_default():
    assert load_config(EXAMPLES / "digits_cnn.yaml").to_dict() == load_config(None).to_dict()


def test_shallow_and_deep_examples_differ_only_in_the_model():
    from trainlab.report.html import flatten

    shallow, deep = (
        flatten(load_config(EXAMPLES / f"digits_mlp_{k}.yaml").to_dict()) for k in ("shallow", "deep")
    )
    differ = {k for k in set(shallow) | set(deep) if shallow.get(k) != deep.get(k)}
    assert differ == {"name", "model.hidden", "model.activation"}


def test_linear_regression_predicts_8_at_4_as_in_the_notes(tmp_path, fast_runs):
    run = trainlab.train(
        EXAMPLES / "linear_regression.yaml", {"train.device": "cpu"}, out=tmp_path / "lin", quiet=True
    )
    assert run.status == "completed"
    with torch.no_grad():
        y = run.model.eval()(torch.tensor([[4.0]]))
    assert abs(y.item() - 8.0) < 0.1
    assert abs(run.model.linear.weight.item() - 2.0) < 0.05


def test_regression_examples_build_the_notes_models():
    from trainlab.data import build_data
    from trainlab.models import build_model

    cfg = load_config(EXAMPLES / "sklearn_diabetes_regression.yaml")
    bundle = build_data(cfg)
    model = build_model(cfg.model, bundle)
    assert bundle.task == "regression" and _linears(model) == [(10, 32), (32, 1)]
    assert any(isinstance(m, nn.Sigmoid) for m in model.modules())

    cfg = load_config(EXAMPLES / "logistic_regression.yaml")
    bundle = build_data(cfg)
    assert bundle.task == "binary" and _linears(build_model(cfg.model, bundle)) == [(1, 1)]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rnn_example_takes_the_other_cells(cell, tmp_path, fast_runs):
    run = _train("rnn_sequences", tmp_path / cell, **{"model.name": cell, "data.batch_size": 8})
    _assert_trained(run)
    assert isinstance(run.model.rnn, {"lstm": nn.LSTM, "gru": nn.GRU}[cell])


def test_kfold_example_trains_five_folds(tmp_path, fast_runs):
    result = trainlab.train(
        EXAMPLES / "kfold_iris.yaml", {**FEW_STEPS, "train.max_steps": 2}, out=tmp_path / "kf", quiet=True
    )
    assert result.status == "completed" and len(result.runs) == 5
    summary = json.loads((tmp_path / "kf" / "kfold_summary.json").read_text())
    assert summary["k_fold"] == 5 and len(summary["metrics"]["val_accuracy"]["values"]) == 5


def test_warmup_cosine_example_gives_the_features_their_own_lr(tmp_path, fast_runs):
    from trainlab.engine.optim import build_optimizer
    from trainlab.models import build_model

    cfg = load_config(EXAMPLES / "warmup_cosine.yaml")
    model = build_model(cfg.model, (1, 8, 8), 10)
    optimizer = build_optimizer(cfg.optimizer, model)
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert lrs[id(p)] == (0.02 if name.startswith("features.") else 0.05), name

    # 40 steps: the config's 30 warmup steps fit (a shorter run clips the warmup, with a warning)
    run = _train(
        "warmup_cosine",
        tmp_path / "run",
        **{
            "data.batch_size": 8,
            "train.log_every_n_steps": 1,
            "train.smoke": False,
            "train.epochs": 1,
            "train.max_steps": 40,
        },
    )
    rows = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r["lr"] for r in rows if r.get("kind") == "step"][:3]  # the first group's (features') LR
    assert len(logged) == 3 and logged == sorted(logged) and max(logged) < 0.2 * 0.02  # still warming up


def test_user_model_example_uses_my_net(tmp_path, fast_runs):
    run = _train("user_model", tmp_path / "user", **{"data.batch_size": 8})
    assert type(run.model).__name__ == "Net" and type(run.model).__module__ == "my_net"
    assert run.model.features[0].out_channels == 32  # `width: 32` from the YAML


# --------------------------------------------------------------------------- MNIST / FashionMNIST (IDX files)

IDX_EXAMPLES = {
    "mnist_mlp": "MNIST",
    "mnist_cnn": "MNIST",
    "mnist_inception": "MNIST",
    "mnist_resnet": "MNIST",
    "fashion_mnist": "FashionMNIST",
}
# The notes' fully connected layers, (in, out), that each example must build for 1x28x28 inputs.
NOTES_LINEARS = {
    "mnist_mlp": [(784, 512), (512, 256), (256, 128), (128, 64), (64, 10)],
    "mnist_cnn": [(320, 10)],
    "mnist_inception": [(1408, 10)],
    "mnist_resnet": [(512, 10)],
}


def write_idx(root: Path, folder: str, n_train: int = 24, n_test: int = 8, seed: int = 0) -> None:
    """torchvision's raw MNIST layout: root/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte."""
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10  # every class present
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">iiii", 2051, n, 28, 28) + images.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 2049, n) + labels.tobytes())


@pytest.mark.parametrize("name", sorted(IDX_EXAMPLES))
def test_mnist_family_example_trains_from_idx_files(name, tmp_path, fast_runs):
    write_idx(tmp_path / "data", IDX_EXAMPLES[name])
    run = _train(name, tmp_path / "run", **{"data.root": str(tmp_path / "data"), "data.batch_size": 4})
    summary = _assert_trained(run)
    assert summary["data_info"]["sizes"]["test"] == 8  # MNIST's own test split is kept
    if name in NOTES_LINEARS:
        assert _linears(run.model) == NOTES_LINEARS[name]


def test_mnist_mlp_normalizes_with_the_notes_statistics(tmp_path):
    write_idx(tmp_path, "MNIST")
    from trainlab.data import build_data

    bundle = build_data(load_config(EXAMPLES / "mnist_mlp.yaml", {"data.root": str(tmp_path)}))
    x = bundle.train.x[:3]
    torch.testing.assert_close(bundle.train.transform(x), (x.float() / 255 - 0.1307) / 0.3081)


# ----------------------------------------------------------------------------- CIFAR-10 (pickled batches)


def write_cifar10(root: Path, per_batch: int = 4, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)  # channel-planar rows
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": rng.integers(0, 10, per_batch).tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)


@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    # Only the md5 comparison is patched (the tiny batches are not the real files); existence still counts.
    monkeypatch.setattr(tvd.cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    write_cifar10(tmp_path / "data")
    return tmp_path / "data"


def test_cifar10_sequential_trains_on_28x28_crops(cifar_root, tmp_path, fast_runs):
    run = _train(
        "cifar10_sequential", tmp_path / "run", **{"data.root": str(cifar_root), "data.batch_size": 4}
    )
    _assert_trained(run)
    assert _linears(run.model) == [(800, 500), (500, 10)]  # the notes' layers, unchanged
    assert run.model[0].in_channels == 3


def test_cifar10_without_the_crop_is_the_notes_trap(cifar_root, tmp_path):
    overrides = {
        **FEW_STEPS,
        "data.root": str(cifar_root),
        "data.transforms": ["ToImage", {"ToDtype": {"dtype": "float32", "scale": True}}],
        "data.eval_transforms": None,
    }
    with pytest.raises(ConfigError) as err:
        trainlab.train(EXAMPLES / "cifar10_sequential.yaml", overrides, out=tmp_path / "trap", quiet=True)
    text = str(err.value)
    assert "model.layers.5 (Linear)" in text and "800" in text and "1250" in text
    assert not (tmp_path / "trap" / "checkpoints" / "last.pt").exists()  # caught before training


# ----------------------------------------------------------------------------- image folders (JPEG / PNG)


def write_image_folder(
    root: Path, splits: dict[str, int], classes: list[str], sizes: list[tuple[int, int]]
) -> None:
    """root/<split>/<class>/<i>.jpg|png, random RGB pixels, sizes cycling through `sizes` (H, W)."""
    rng = np.random.default_rng(0)
    k = 0
    for split, n in splits.items():
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                h, w = sizes[k % len(sizes)]
                k += 1
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.{'jpg' if i % 2 == 0 else 'png'}")


def test_food11_trains_on_an_image_folder_of_mixed_sizes(tmp_path, fast_runs):
    classes = [f"{i}" for i in range(11)]
    write_image_folder(tmp_path / "food-11", {"train": 1, "val": 1, "test": 1}, classes, [(20, 28), (24, 18)])
    run = _train(
        "food11",
        tmp_path / "run",
        **{"data.root": str(tmp_path / "food-11"), "data.batch_size": 4, "train.max_steps": 2},
    )
    summary = _assert_trained(run, steps=2)
    assert summary["data_info"]["num_files"] == {"train": 11, "val": 11, "test": 11}
    # decoded once at the training size, then batched by the fast path (issue 16)
    assert summary["data_info"]["cache"]["shapes"] == {s: [3, 128, 128] for s in ("train", "val", "test")}
    assert isinstance(build_data(run.config).train, ArrayDataset)  # what TensorLoader batches
    # adaptive_pool: 4 gives the notes' 512x4x4 fc input on 128x128 images, then 1024 - 32 - 11.
    assert _linears(run.model) == [(512 * 4 * 4, 1024), (1024, 32), (32, 11)]


def test_ants_bees_trains_resnet18_on_an_image_folder(tmp_path, fast_runs):
    write_image_folder(
        tmp_path / "hymenoptera_data", {"train": 2, "val": 1}, ["ants", "bees"], [(40, 52), (36, 30)]
    )
    run = _train(
        "ants_bees",
        tmp_path / "run",
        **{"data.root": str(tmp_path / "hymenoptera_data"), "data.batch_size": 2, "train.max_steps": 2},
    )
    summary = _assert_trained(run, steps=2)
    assert summary["class_names"] == ["ants", "bees"]
    # RandomResizedCrop first: decoded once at their own sizes, cropped per sample; val at 224x224
    assert summary["data_info"]["cache"]["shapes"] == {"train": "several", "val": [3, 224, 224]}
    assert _linears(run.model) == [(512, 2)]  # resnet18's classifier, replaced for 2 classes


# ----------------------------------------------------------------------------- the notes' diabetes CSV


def test_diabetes_csv_reads_the_notes_layout(tmp_path, fast_runs):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (40, 8))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    text = "\n".join(",".join(f"{v:.6f}" for v in row) + f",{label}" for row, label in zip(x, y)) + "\n"
    path = tmp_path / "diabetes.csv.gz"
    path.write_bytes(gzip.compress(text.encode()))  # no header, label last, gzip'ed
    run = _train("diabetes_csv", tmp_path / "run", **{"data.path": str(path), "data.batch_size": 8})
    summary = _assert_trained(run)
    assert summary["task"] == "binary"
    assert _linears(run.model) == [(8, 6), (6, 4), (4, 1)]
    assert sum(isinstance(m, nn.Sigmoid) for m in run.model.modules()) == 2
