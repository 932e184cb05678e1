"""The Python API: `trainlab.train(config, overrides)` returns a Run; `trainlab.Trainer` trains any
nn.Module on a Dataset or DataLoader; user callbacks; and the loop's options (early stopping,
max_steps, grad_accum, grad_clip, bf16) through both the config and the Trainer."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainlab
from conftest import tiny_config

DIGITS_TRAIN = 1257  # digits with the default 0.1 / 0.2 val / test fractions: 1257 / 180 / 360
BATCHES_PER_EPOCH = math.ceil(DIGITS_TRAIN / 64)  # tiny_config's batch size: 20


def summary(run: trainlab.Run) -> dict:
    return json.loads((run.run_dir / "summary.json").read_text())


# ----------------------------------------------------------------------------- trainlab.train


def test_train_a_dict_config_returns_the_run(tmp_path, no_report):
    out = tmp_path / "run"
    run = trainlab.train(tiny_config(), {"train.epochs": 2}, out=out, quiet=True)
    assert isinstance(run, trainlab.Run) and run.status == "completed"
    assert run.run_dir == out and (out / "summary.json").is_file()
    assert [row["epoch"] for row in run.history_rows] == [1, 2]
    assert len(run.history) == 2  # a DataFrame indexed by epoch with pandas, else the rows
    assert {"train_loss", "val_loss", "val_accuracy"} <= run.history_rows[0].keys()
    # train.monitor: auto keeps the best validation accuracy for a classifier
    assert run.best["metric"] == "val_accuracy"
    assert run.best["epoch"] in (1, 2) and run.best["value"] == pytest.approx(
        max(row["val_accuracy"] for row in run.history_rows)
    )
    assert set(run.final) == {"train", "val", "test", "test_last"} and 0 <= run.final["test"]["accuracy"] <= 1
    assert run.final["test"] == pytest.approx(summary(run)["final"]["test"])
    # The returned model holds the best checkpoint's weights (what was tested).
    assert isinstance(run.model, nn.Module)
    best = torch.load(out / "checkpoints" / "best.pt", weights_only=True)["model"]
    for name, value in run.model.state_dict().items():
        assert torch.equal(value.cpu(), best[name]), name
    assert run.history_rows[-1]["train_loss"] < run.history_rows[0]["train_loss"]


def test_keyword_overrides_use_double_underscores_and_grad_accum_halves_the_steps(tmp_path, no_report):
    run = trainlab.train(
        tiny_config(),
        out=tmp_path / "run",
        quiet=True,
        train__epochs=1,
        train__grad_accum=2,
        optimizer__lr=0.02,
    )
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["grad_accum"] == 2 and saved["optimizer"]["lr"] == 0.02
    assert run.config.train.grad_accum == 2
    # 20 batches, one optimizer step per 2 batches.
    assert summary(run)["global_step"] == math.ceil(BATCHES_PER_EPOCH / 2) == 10


def test_early_stopping_stops_before_train_epochs(tmp_path, no_report):
    # min_delta larger than any possible improvement of the loss: no epoch after the first improves.
    run = trainlab.train(
        tiny_config(),
        {"train.epochs": 6, "train.early_stopping.patience": 1, "train.early_stopping.min_delta": 100.0},
        out=tmp_path / "run",
        quiet=True,
    )
    assert run.status == "completed"
    assert [row["epoch"] for row in run.history_rows] == [1, 2]
    assert summary(run)["epochs_completed"] == 2


def test_max_steps_stops_at_that_global_step(tmp_path, no_report):
    run = trainlab.train(
        tiny_config(), {"train.epochs": 5, "train.max_steps": 27}, out=tmp_path / "run", quiet=True
    )
    s = summary(run)
    assert s["global_step"] == 27 and s["status"] == "completed"
    assert s["epochs_completed"] == 2  # 20 steps, then 7 of the second epoch
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert last["global_step"] == 27


def test_user_callback_passed_to_train_gets_the_test_metrics_at_the_end(tmp_path, no_report):
    class Recorder(trainlab.Callback):
        def __init__(self):
            self.events = []

        def on_epoch_end(self, epoch, logs):
            self.events.append(("epoch_end", epoch))

        def on_train_end(self, logs):
            self.events.append(("train_end", logs.get("test")))

    recorder = Recorder()
    run = trainlab.train(
        tiny_config(), {"train.epochs": 2}, out=tmp_path / "run", quiet=True, callbacks=[recorder]
    )
    assert [e[0] for e in recorder.events] == ["epoch_end", "epoch_end", "train_end"]
    assert recorder.events[-1][1] == pytest.approx(run.final["test"])


# ----------------------------------------------------------------------------- Trainer


def blobs(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """3 classes of 4-d points around different centres: (n, 4) float, (n,) long."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centres = torch.tensor([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0]])
    return centres[y] + 0.5 * torch.randn(n, 4, generator=g), y


class UserNet(nn.Module):
    def __init__(self, out: int = 3):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, out))

    def forward(self, x):
        return self.layers(x)


def test_trainer_with_a_user_module_and_a_tensor_dataset_lowers_the_loss():
    torch.manual_seed(0)
    x, y = blobs()
    model = UserNet()
    trainer = trainlab.Trainer.from_datasets(
        model,
        TensorDataset(x[:200], y[:200]),
        TensorDataset(x[200:], y[200:]),
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(model.parameters(), lr=0.02),
        epochs=5,
        batch_size=32,
        device="cpu",
    )
    history = trainer.fit()
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5]
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert history[-1]["val_accuracy"] > 0.9
    assert trainer.global_step == 5 * math.ceil(200 / 32)


def test_trainer_first_validation_sees_every_validation_sample():
    torch.manual_seed(0)
    x, y = blobs(96)
    model = UserNet()
    trainer = trainlab.Trainer.from_datasets(
        model,
        TensorDataset(x[:64], y[:64]),
        TensorDataset(x[64:], y[64:]),
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
        epochs=2,
        batch_size=32,
        device="cpu",
    )
    history = trainer.fit()
    # lr 0: the weights never change, so both validations must give the same loss.
    assert history[0]["val_loss"] == pytest.approx(history[1]["val_loss"])


def test_trainer_takes_dataloaders():
    torch.manual_seed(0)
    x, y = blobs()
    model = UserNet()
    train_loader = DataLoader(TensorDataset(x[:200], y[:200]), batch_size=25, shuffle=True)
    val_loader = DataLoader(TensorDataset(x[200:], y[200:]), batch_size=100)
    trainer = trainlab.Trainer.from_datasets(
        model,
        train_loader,
        val_loader,
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(model.parameters(), lr=0.02),
        epochs=4,
        device="cpu",
    )
    history = trainer.fit()
    assert trainer.global_step == 4 * 8  # the user's batch size (25), not the Trainer's default
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert history[-1]["val_accuracy"] > 0.9


def test_trainer_regression_infers_the_task_from_the_loss():
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    y = (x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.5).unsqueeze(1)  # (256, 1)
    model = nn.Linear(4, 1)
    val_loader = DataLoader(TensorDataset(x[200:], y[200:]), batch_size=28)
    trainer = trainlab.Trainer.from_datasets(
        model,
        TensorDataset(x[:200], y[:200]),
        val_loader,
        loss_fn=nn.MSELoss(),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        epochs=6,
        batch_size=20,
        device="cpu",
    )
    history = trainer.fit()
    assert trainer.task == "regression"
    assert {"val_mse", "val_mae", "val_r2"} <= history[-1].keys()
    assert history[-1]["train_loss"] < 0.01 * history[0]["train_loss"]
    assert history[-1]["val_r2"] > 0.99


class HookRecorder(trainlab.Callback):
    def __init__(self, stop_after_epoch: int | None = None):
        self.events: list[tuple] = []
        self.stop_after_epoch = stop_after_epoch

    def on_train_begin(self, logs):
        self.events.append(("train_begin",))

    def on_epoch_begin(self, epoch, logs):
        self.events.append(("epoch_begin", epoch))

    def on_after_backward(self, step, logs):
        self.events.append(("after_backward", step))

    def on_batch_end(self, step, logs):
        self.events.append(("batch_end", step))

    def on_epoch_end(self, epoch, logs):
        self.events.append(("epoch_end", epoch, logs["train"]["loss"]))
        if epoch == self.stop_after_epoch:
            self.stop_training = True

    def on_train_end(self, logs):
        self.events.append(("train_end",))


def small_trainer(callbacks, lr: float = 0.1, **kwargs) -> trainlab.Trainer:
    """64 samples in batches of 32: 2 steps per epoch."""
    torch.manual_seed(0)
    x, y = blobs(64)
    model = UserNet()
    return trainlab.Trainer.from_datasets(
        model,
        TensorDataset(x, y),
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=torch.optim.SGD(model.parameters(), lr=lr),
        batch_size=32,
        device="cpu",
        callbacks=callbacks,
        **kwargs,
    )


def test_callback_hooks_come_in_order():
    recorder = HookRecorder()
    small_trainer([recorder], epochs=2).fit()
    names = [e[:2] for e in recorder.events]
    expected = [("train_begin",)]
    step = 0  # 64 samples / 32 = 2 steps per epoch; steps are counted from 1 in batch_end
    for epoch in (1, 2):
        expected.append(("epoch_begin", epoch))
        for _ in range(2):
            expected += [("after_backward", step), ("batch_end", step + 1)]
            step += 1
        expected.append(("epoch_end", epoch))
    assert names[: len(expected)] == expected


def test_bare_trainer_calls_on_train_end():
    recorder = HookRecorder()
    small_trainer([recorder], epochs=1).fit()
    assert recorder.events[-1] == ("train_end",)


def test_a_callback_stops_training_with_stop_training():
    recorder = HookRecorder(stop_after_epoch=2)
    trainer = small_trainer([recorder], epochs=10)
    history = trainer.fit()
    assert trainer.epoch == 2 and len(history) == 2
    assert [e[1] for e in recorder.events if e[0] == "epoch_begin"] == [1, 2]


def test_max_steps_in_the_trainer_stops_mid_epoch():
    trainer = small_trainer([], epochs=10, max_steps=3)
    trainer.fit()
    assert trainer.global_step == 3 and trainer.epoch == 2


def test_grad_accum_of_two_half_batches_equals_one_full_batch():
    # Same seed -> the same sample order; the mean loss of 2 x 16 samples, each divided by 2, has the
    # gradient of the mean loss of the 32 samples together, so SGD ends at the same weights.
    x, y = blobs(128)
    weights = []
    for batch_size, accum in ((16, 2), (32, 1)):
        torch.manual_seed(0)
        model = UserNet()
        trainer = trainlab.Trainer.from_datasets(
            model,
            TensorDataset(x, y),
            loss_fn=nn.CrossEntropyLoss(),
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            batch_size=batch_size,
            grad_accum=accum,
            epochs=2,
            device="cpu",
            seed=3,
        )
        trainer.fit()
        assert trainer.global_step == 2 * 128 // 32
        weights.append(model.state_dict())
    for name in weights[0]:
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=1e-5, atol=1e-6)


def test_grad_clip_bounds_every_update():
    # SGD without momentum moves the weights by lr x the clipped gradient: a norm of lr x grad_clip.
    class StepSizes(trainlab.Callback):
        def on_train_begin(self, logs):
            self.model, self.sizes = logs["model"], []
            self.previous = nn.utils.parameters_to_vector(self.model.parameters()).detach().clone()

        def on_batch_end(self, step, logs):
            now = nn.utils.parameters_to_vector(self.model.parameters()).detach().clone()
            self.sizes.append(float((now - self.previous).norm()))
            self.previous = now

    sizes = StepSizes()
    small_trainer([sizes], lr=1.0, epochs=2, grad_clip=0.001).fit()
    assert len(sizes.sizes) == 4
    assert sizes.sizes == pytest.approx([0.001] * 4, rel=1e-3)


def test_bf16_trainer_on_cpu_computes_under_autocast():
    dtypes = []

    class Probe(UserNet):
        def forward(self, x):
            out = super().forward(x)
            if self.training:
                dtypes.append(out.dtype)
            return out

    torch.manual_seed(0)
    x, y = blobs(64)
    model = Probe()
    trainer = trainlab.Trainer.from_datasets(
        model,
        TensorDataset(x, y),
        TensorDataset(x, y),
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(model.parameters(), lr=0.02),
        batch_size=32,
        epochs=2,
        precision="bf16",
        device="cpu",
    )
    history = trainer.fit()
    assert dtypes and all(d == torch.bfloat16 for d in dtypes)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast, not a bf16 model
    assert math.isfinite(history[-1]["train_loss"]) and math.isfinite(history[-1]["val_loss"])


def test_compile_falls_back_to_eager_with_a_warning_when_the_backend_fails(monkeypatch):
    import torch

    from trainlab.config import load_config
    from trainlab.data import build_data
    from trainlab.pipeline import compile_model

    def broken(model, *a, **k):
        raise RuntimeError("no backend here")

    monkeypatch.setattr(torch, "compile", broken)
    cfg = load_config({"data": {"source": "iris"}})
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    with pytest.warns(UserWarning, match="train.compile"):
        assert compile_model(model, build_data(cfg), torch.device("cpu")) is model
