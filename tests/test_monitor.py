"""One monitor rule (engine/monitor.py) for best.pt, early stopping and the plateau schedule, and
`train.monitor: auto` choosing the value a user would keep the model by."""

from __future__ import annotations

import json

import pytest
import torch

import trainlab
from conftest import tiny_config
from trainlab.config import SchedulerConfig
from trainlab.engine.callbacks import EarlyStopping
from trainlab.engine.monitor import Monitor, resolve_name
from trainlab.engine.optim import build_optimizer, build_scheduler


@pytest.mark.parametrize(
    "name, mode",
    [
        ("val_loss", "min"),
        ("val_perplexity", "min"),
        ("train_mae", "min"),
        ("val_accuracy", "max"),
        ("val_f1", "max"),
        ("val_r2", "max"),
    ],
)
def test_lower_is_better_is_decided_once(name, mode):
    assert Monitor(name).mode == mode


def test_perplexity_is_minimised_by_best_tracking_early_stopping_and_plateau_alike():
    # The defect: best.pt maximised val_perplexity while the plateau schedule minimised it.
    monitor = Monitor("val_perplexity")
    assert monitor.is_improvement(10.0, 12.0) and not monitor.is_improvement(12.0, 10.0)
    stopping = EarlyStopping(monitor, patience=1)
    stopping.on_epoch_end(1, {"monitored": 12.0})
    stopping.on_epoch_end(2, {"monitored": 10.0})  # lower: an improvement
    assert not stopping.stop_training
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(trainlab.config.OptimizerConfig(name="SGD", lr=0.1), model)
    plateau = build_scheduler(SchedulerConfig(name="plateau"), optimizer, 4, 5, monitor=monitor)
    assert plateau.scheduler.mode == monitor.mode == "min"


def test_min_delta_applies_to_early_stopping_through_the_same_rule():
    stopping = EarlyStopping(Monitor("val_accuracy", min_delta=0.05), patience=2)
    for epoch, value in enumerate([0.80, 0.82, 0.84], start=1):  # +0.02 each: below min_delta
        stopping.on_epoch_end(epoch, {"monitored": value})
    assert stopping.stop_training
    assert "val_accuracy did not improve for 2 epochs" in stopping.stop_reason
    assert "best 0.8 at epoch 1" in stopping.stop_reason


def test_a_non_finite_value_is_never_an_improvement():
    assert not Monitor("val_loss").is_improvement(float("nan"), None)
    assert Monitor("val_loss").is_improvement(1.0, None)


@pytest.mark.parametrize(
    "setting, task, has_val, name",
    [
        ("auto", "classification", True, "val_accuracy"),
        ("auto", "binary", True, "val_accuracy"),
        ("auto", "regression", True, "val_loss"),
        ("auto", "classification", False, "train_accuracy"),
        ("auto", "regression", False, "train_loss"),
        ("val_f1", "classification", True, "val_f1"),
        ("val_loss", "classification", False, "train_loss"),  # never a training loss labelled val_loss
    ],
)
def test_auto_monitor_resolution(setting, task, has_val, name):
    assert resolve_name(setting, task, has_val) == name


def test_without_a_validation_split_best_is_named_as_the_training_value(tmp_path, no_report):
    run = trainlab.train(
        tiny_config(data={"val_fraction": 0.0}), {"train.epochs": 2}, out=tmp_path / "r", quiet=True
    )
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["best"]["metric"] == "train_accuracy" == run.best["metric"]
    assert summary["best"]["value"] == pytest.approx(max(r["train_accuracy"] for r in run.history_rows))


def test_an_explicit_monitor_wins_and_plateau_follows_it(tmp_path, no_report):
    cfg = tiny_config(
        train={"epochs": 2, "monitor": "val_loss"}, scheduler={"name": "plateau", "patience": 0}
    )
    run = trainlab.train(cfg, out=tmp_path / "r", quiet=True)
    assert run.best["metric"] == "val_loss"
    assert run.best["value"] == pytest.approx(min(r["val_loss"] for r in run.history_rows))
