"""The first hour in Python and at the end of a run: progress from the Trainer, predict/evaluate on
the Trainer and on a Run, a model instance given to `trainlab.train`, and the closing lines that tell
a user what happened (early stopping, divergence, --quiet, a finished schedule extended)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset, random_split

import trainlab
from conftest import cli_in_process, tiny_config
from trainlab.data.loaders import TensorLoader


def digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16, torch.tensor(digits.target)


def test_trainer_prints_epoch_lines_and_predicts_and_evaluates(capsys):
    x, y = digits_tensors()
    train_set, val_set = random_split(
        TensorDataset(x, y), [1500, 297], generator=torch.Generator().manual_seed(0)
    )
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    trainer = trainlab.Trainer.from_datasets(
        model,
        train_set,
        val_set,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        epochs=2,
        device="cpu",
    )
    assert isinstance(trainer.train_loader, TensorLoader)  # a random_split of a TensorDataset: the fast path
    trainer.fit()
    out = capsys.readouterr().out
    assert "epoch 1/2" in out and "epoch 2/2" in out  # one line per epoch (no terminal: no bars)
    logs = trainer.evaluate(val_set)
    assert logs["accuracy"] > 0.5 and logs["accuracy"] == pytest.approx(trainer.history[-1]["val_accuracy"])
    probabilities = trainer.predict(x[:5])
    assert probabilities.shape == (5, 10) and torch.allclose(probabilities.sum(1), torch.ones(5))


def test_quiet_trainer_prints_nothing(capsys):
    x, y = digits_tensors()
    trainlab.Trainer.from_datasets(
        nn.Sequential(nn.Flatten(), nn.Linear(64, 10)),
        TensorDataset(x, y),
        epochs=1,
        device="cpu",
        quiet=True,
    ).fit()
    assert capsys.readouterr().out == ""


def test_train_takes_a_model_instance_and_the_run_predicts_and_evaluates(tmp_path, no_report):
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    run = trainlab.train(tiny_config(), {"train.epochs": 2}, model=net, out=tmp_path / "r", quiet=True)
    assert run.model is net and run.status == "completed"
    assert run.config.model.name == "torch.nn.modules.container:Sequential"  # the class, for the record
    x, _ = digits_tensors()
    assert run.predict(x[:3]).shape == (3, 10)
    assert run.evaluate("test")["accuracy"] == pytest.approx(run.final["test"]["accuracy"], abs=1e-6)
    # as the config dict's model value too
    run = trainlab.train(
        {**tiny_config(), "model": nn.Sequential(nn.Flatten(), nn.Linear(64, 10))},
        out=tmp_path / "r2",
        quiet=True,
    )
    assert run.status == "completed"


def test_a_diverged_run_is_flagged_and_said(tmp_path, capsys, no_report):
    out = tmp_path / "r"
    code, stdout, _ = cli_in_process(
        capsys,
        "train",
        "--out",
        str(out),
        "model.name=mlp",
        "model.hidden=[16]",
        "optimizer.name=SGD",
        "optimizer.lr=1000",
        "train.epochs=1",
        "train.nan_policy=skip",
    )
    summary = json.loads((out / "summary.json").read_text())
    assert code == 0 and summary["status"] == "completed"
    assert summary["diverging"]["ratio"] is None or summary["diverging"]["ratio"] >= 10
    assert "warning: the final training loss" in stdout and "constant prediction" in stdout


def test_quiet_still_names_the_run_directory(tmp_path, capsys, no_report):
    out = tmp_path / "r"
    code, stdout, _ = cli_in_process(capsys, "train", "--out", str(out), "--quiet", "--smoke")
    assert code == 0 and stdout.strip() == f"run directory: {out}"


def test_early_stopping_says_why_it_stopped(tmp_path, capsys, no_report):
    out = tmp_path / "r"
    code, stdout, _ = cli_in_process(
        capsys,
        "train",
        "--out",
        str(out),
        "model.name=mlp",
        "model.hidden=[8]",
        "optimizer.lr=1e-12",
        "train.epochs=10",
        "train.early_stopping.patience=1",
    )
    assert code == 0
    assert "early stopping at epoch 2: val_accuracy did not improve for 1 epochs" in stdout
    assert json.loads((out / "summary.json").read_text())["stop_reason"].startswith(
        "early stopping at epoch 2"
    )


def test_extending_a_finished_cosine_run_warns_about_its_final_learning_rate(tmp_path, capsys, no_report):
    out = tmp_path / "r"
    args = ["model.name=mlp", "model.hidden=[8]", "scheduler.name=cosine", "--quiet"]
    assert cli_in_process(capsys, "train", "--out", str(out), "train.epochs=1", *args)[0] == 0
    code, _, stderr = cli_in_process(capsys, "train", "--out", str(out), "--resume", "train.epochs=2", *args)
    assert code == 0
    assert "train.epochs: 1 -> 2" in stderr and "final learning rate" in stderr


def test_resume_needs_only_the_run_directory(tmp_path, capsys, no_report):
    out = tmp_path / "r"
    args = ["model.name=mlp", "model.hidden=[8]", "data.batch_size=256", "--quiet"]
    assert cli_in_process(capsys, "train", "--out", str(out), "train.epochs=1", *args)[0] == 0
    code, _, err = cli_in_process(capsys, "train", "--out", str(out), "--resume", "train.epochs=2", "--quiet")
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["epochs_completed"] == 2


def test_trainer_with_out_writes_a_run_directory(tmp_path, capsys):
    x, y = digits_tensors()
    out = tmp_path / "trainer_run"
    torch.manual_seed(0)
    trainer = trainlab.Trainer.from_datasets(
        nn.Sequential(nn.Flatten(), nn.Linear(64, 10)),
        TensorDataset(x, y),
        TensorDataset(x[:200], y[:200]),
        epochs=2,
        device="cpu",
        out=out,
    )
    trainer.fit()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2
    assert summary["best"]["metric"] == "val_accuracy" and summary["final"]["val"]["accuracy"] > 0.2
    for name in (
        "metrics.jsonl",
        "checkpoints/best.pt",
        "checkpoints/last.pt",
        "model.safetensors",
        "report.html",
    ):
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").iterdir())
    assert f"run directory: {out}" in capsys.readouterr().out
    with pytest.raises(trainlab.TrainlabError):  # one owner: the folder now holds a run
        trainlab.Trainer.from_datasets(nn.Linear(64, 10), TensorDataset(x, y), device="cpu", out=out)
