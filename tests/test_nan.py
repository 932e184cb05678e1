"""NaN/Inf guard: with nan_policy stop the run fails (exit 1) naming the epoch, step and batch, and
last.pt/best.pt keep finite weights; with nan_policy skip the bad batches are skipped and counted.
NaNs come from a user model (`model.name: "nanmod:Net"`, found in the config's folder) that returns
NaN on chosen training steps, and from a learning rate that makes a regression diverge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trainlab.cli import main

USER_MODULE = '''
import torch
from torch import nn


class Net(nn.Module):
    """A linear classifier whose output is NaN on the training steps listed in `nan_at` (1-based).
    Only training batches count: train mode, gradients on and the configured batch size of 15."""

    def __init__(self, input_shape, output_dim, nan_at=()):
        super().__init__()
        self.linear = nn.Linear(input_shape[0], output_dim)
        self.nan_at, self.calls = set(nan_at), 0

    def forward(self, x):
        out = self.linear(x)
        if self.training and torch.is_grad_enabled() and x.shape[0] == 15:
            self.calls += 1
            if self.calls in self.nan_at:
                out = out * float("nan")
        return out
'''


def write_config(folder: Path, nan_at: list[int], policy: str) -> Path:
    (folder / "nanmod.py").write_text(USER_MODULE)
    config = folder / "nan.yaml"
    # iris: 105 training samples -> 7 batches of 15 per epoch.
    config.write_text(f"""name: nan_test
data: {{source: iris, batch_size: 15, standardize: true}}
model: {{name: "nanmod:Net", nan_at: {nan_at}}}
optimizer: {{name: SGD, lr: 0.1}}
train: {{epochs: 2, checkpoint_every_n_steps: 4, nan_policy: {policy}}}
""")
    return config


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, " ".join((out + err).split())  # messages wrap at 100 columns


def finite_weights(path: Path) -> bool:
    model = torch.load(path, weights_only=True)["model"]
    return all(torch.isfinite(v).all() for v in model.values())


def test_nan_stop_fails_naming_epoch_step_batch_and_keeps_finite_checkpoints(tmp_path, capsys):
    run = tmp_path / "run"
    # Step 10 is batch 3 of epoch 2; checkpoints at steps 4, 7 (epoch end, also best.pt) and 8.
    code, text = run_cli(capsys, "train", write_config(tmp_path, [10], "stop"), "--out", run, "--quiet")
    assert code == 1, text
    assert "NaN/Inf at epoch 2, step 10 (batch 3 of the epoch)" in text and "Traceback" not in text
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed"
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert last["global_step"] == 8
    assert finite_weights(run / "checkpoints" / "last.pt") and finite_weights(run / "checkpoints" / "best.pt")


def test_nan_skip_completes_and_counts_skipped_batches(tmp_path, capsys):
    run = tmp_path / "run"
    code, text = run_cli(capsys, "train", write_config(tmp_path, [3, 9, 12], "skip"), "--out", run, "--quiet")
    assert code == 0, text
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["nan_skipped"] == 3
    assert finite_weights(run / "checkpoints" / "last.pt")
    assert all(
        torch.isfinite(torch.tensor(row["loss"]))
        for row in map(json.loads, (run / "metrics.jsonl").open())
        if "loss" in row
    )


def test_diverging_regression_stops_before_saving_nonfinite_weights(tmp_path, capsys):
    run = tmp_path / "run"
    code, text = run_cli(
        capsys,
        "train",
        "data.source=diabetes",
        "model.name=mlp",
        "model.hidden=[8]",
        "optimizer.name=SGD",
        "optimizer.lr=1e6",
        "scheduler.name=none",
        "train.epochs=3",
        "train.checkpoint_every_n_steps=1",
        "data.batch_size=32",
        "--out",
        run,
        "--quiet",
    )
    assert code == 1, text
    assert "NaN/Inf" in text and "epoch 1, step" in text
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    for name in ("last.pt", "best.pt"):
        path = run / "checkpoints" / name
        assert not path.exists() or finite_weights(path)


def test_weights_broken_by_a_step_with_finite_loss_are_never_saved(tmp_path):
    """A step can overflow the weights while every loss so far was finite (Inf gradients, no grad_clip
    to see them): the save itself checks the weights."""
    from trainlab import Trainer
    from trainlab.data.base import ArrayDataset
    from trainlab.engine.callbacks import Callback
    from trainlab.errors import TrainingDiverged

    model = torch.nn.Linear(3, 1)

    class OverflowAtStep3(Callback):
        def on_batch_end(self, step, logs):
            if step == 3:
                with torch.no_grad():
                    model.weight[0, 0] = float("inf")

    data = ArrayDataset(torch.randn(40, 3), torch.randn(40, 1))
    trainer = Trainer.from_datasets(
        model,
        data,
        loss_fn=torch.nn.MSELoss(),
        batch_size=8,
        epochs=1,
        checkpoint_every_n_steps=1,
        checkpoint_dir=tmp_path,
        callbacks=[OverflowAtStep3()],
        device="cpu",
    )
    with pytest.raises(
        TrainingDiverged, match=r"weights became NaN/Inf by epoch 1, step 3 \(batch 3 .*weight"
    ):
        trainer.fit()
    assert trainer.status == "failed"
    assert load_step(tmp_path / "last.pt") == 2 and finite_weights(tmp_path / "last.pt")


def load_step(path: Path) -> int:
    return torch.load(path, weights_only=True)["global_step"]
