"""trainlab against results computed independently on the same data and splits: scikit-learn's
estimators and metrics, a plain PyTorch loop written here, the notes' worked numbers.

The splits are the ones trainlab used, read from the run's `splits.npz` (indices into the source),
never re-derived.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import datasets, metrics
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

import trainlab
from conftest import cli_in_process
from trainlab.config import LossConfig
from trainlab.losses import build_loss

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
pytestmark = pytest.mark.usefixtures("one_thread", "no_report")


def splits(run: trainlab.Run) -> dict[str, np.ndarray]:
    with np.load(run.run_dir / "splits.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def diabetes_run(tmp_path_factory) -> trainlab.Run:
    cfg = {
        "name": "ref_linear",
        "seed": 0,
        "data": {"source": "diabetes", "standardize": True, "batch_size": 32},
        "model": {"name": "linear"},
        "loss": {"name": "MSELoss"},
        "optimizer": {"name": "Adam", "lr": 1.0},
        "scheduler": {"name": "cosine"},
        "train": {"epochs": 200, "device": "cpu"},
    }
    return trainlab.train(cfg, out=tmp_path_factory.mktemp("ref") / "linear", quiet=True)


def test_linear_regression_matches_scikit_learn_on_diabetes(diabetes_run):
    s = splits(diabetes_run)
    assert sorted(np.concatenate([s["train"], s["val"], s["test"]]).tolist()) == list(range(442))
    x, y = datasets.load_diabetes(return_X_y=True)
    reference = LinearRegression().fit(x[s["train"]], y[s["train"]])  # the same training split
    reference_mse = metrics.mean_squared_error(y[s["test"]], reference.predict(x[s["test"]]))
    assert diabetes_run.final["test"]["mse"] == pytest.approx(reference_mse, rel=0.02)


def test_regression_metrics_equal_scikit_learns_on_the_saved_predictions(diabetes_run):
    with np.load(diabetes_run.run_dir / "predictions" / "test.npz") as f:
        target, output = f["target"].reshape(-1), f["output"].reshape(-1)
    test = json.loads((diabetes_run.run_dir / "summary.json").read_text())["final"]["test"]
    assert test["r2"] == pytest.approx(metrics.r2_score(target, output), abs=1e-5)
    assert test["mae"] == pytest.approx(metrics.mean_absolute_error(target, output), rel=1e-5)
    assert test["mse"] == pytest.approx(metrics.mean_squared_error(target, output), rel=1e-5)


def test_logistic_regression_matches_scikit_learn_on_breast_cancer(tmp_path):
    # weight_decay 1/(C n) with C = 1 and n the training samples is scikit-learn's default L2 penalty
    cfg = {
        "name": "ref_logistic",
        "seed": 0,
        "data": {"source": "breast_cancer", "standardize": True, "batch_size": 32},
        "model": {"name": "logistic"},
        "loss": {"name": "BCEWithLogitsLoss"},
        "optimizer": {"name": "Adam", "lr": 0.01, "weight_decay": 0.0022},
        "train": {"epochs": 100, "device": "cpu"},
    }
    run = trainlab.train(cfg, out=tmp_path / "logistic", quiet=True)
    s = splits(run)
    x, y = datasets.load_breast_cancer(return_X_y=True)
    scaler = StandardScaler().fit(x[s["train"]])
    reference = LogisticRegression(max_iter=5000).fit(scaler.transform(x[s["train"]]), y[s["train"]])
    reference_accuracy = reference.score(scaler.transform(x[s["test"]]), y[s["test"]])
    assert abs(run.final["test"]["accuracy"] - reference_accuracy) <= 0.01


def test_the_notes_linear_model_predicts_8_at_4(tmp_path, capsys):
    (tmp_path / "points.csv").write_text("x,y\n1,2\n2,4\n3,6\n")
    (tmp_path / "new.csv").write_text("x\n4\n")
    config = tmp_path / "linear.yaml"
    config.write_text(
        f"name: notes_linear\ndata: {{source: csv, path: {tmp_path / 'points.csv'}, target: y, "
        "batch_size: 3,\n"
        "       val_fraction: 0, test_fraction: 0}\nmodel: {name: linear, bias: false}\n"
        "loss: MSELoss\noptimizer: {name: SGD, lr: 0.01}\ntrain: {epochs: 100, device: cpu}\n"
    )
    out = tmp_path / "run"
    assert cli_in_process(capsys, "train", str(config), "--out", str(out), "--quiet")[0] == 0
    code, text, _ = cli_in_process(capsys, "predict", str(out), str(tmp_path / "new.csv"))
    assert code == 0
    header, row = text.strip().splitlines()
    prediction = float(row.split(",")[header.split(",").index("prediction")])
    assert prediction == pytest.approx(8.0, abs=0.05)


def test_l1_and_mse_losses_give_the_notes_numbers():
    prediction, truth = torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[1.0], [2.0], [5.0]])
    l1 = build_loss(LossConfig(name="L1Loss"), "regression")(prediction, truth)
    mse = build_loss(LossConfig(name="MSELoss"), "regression")(prediction, truth)
    assert (round(l1.item(), 4), round(mse.item(), 4)) == (0.6667, 1.3333)


@pytest.fixture(scope="module")
def digits_mlp_run(tmp_path_factory) -> trainlab.Run:
    return trainlab.train(
        EXAMPLES / "digits_mlp_shallow.yaml",
        {"train.device": "cpu"},
        out=tmp_path_factory.mktemp("ref") / "digits_mlp",
        quiet=True,
    )


def test_digits_mlp_matches_a_plain_pytorch_loop(digits_mlp_run):
    """The example's recipe (MLP 64-32-10 with ReLU, SGD lr 0.05 momentum 0.9, batch 32, 20 epochs) in
    a loop written here, on trainlab's own training split."""
    s = splits(digits_mlp_run)
    bunch = datasets.load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).reshape(-1, 64) / 16.0
    y = torch.as_tensor(bunch.target)
    train_x, train_y = x[s["train"]], y[s["train"]]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(20):
        for idx in torch.randperm(len(train_x)).split(32):
            optimizer.zero_grad()
            loss_fn(model(train_x[idx]), train_y[idx]).backward()
            optimizer.step()
    with torch.no_grad():
        reference = (model(x[s["test"]]).argmax(1) == y[s["test"]]).float().mean().item()
    assert reference > 0.9  # the loop learned
    assert abs(digits_mlp_run.final["test"]["accuracy"] - reference) <= 0.015


def test_classification_metrics_equal_scikit_learns_on_the_saved_predictions(digits_mlp_run):
    with np.load(digits_mlp_run.run_dir / "predictions" / "test.npz") as f:
        target, output = f["target"], f["output"]
    predicted = output.argmax(1)
    test = json.loads((digits_mlp_run.run_dir / "summary.json").read_text())["final"]["test"]
    assert test["accuracy"] == pytest.approx(metrics.accuracy_score(target, predicted), abs=1e-6)
    assert test["f1"] == pytest.approx(metrics.f1_score(target, predicted, average="macro"), abs=1e-5)
