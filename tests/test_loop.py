"""The loop's structure: one train_step for every policy, the callback contract as documented, the
Trainer's constructors, and plain imports of trainlab's own modules."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import trainlab
from conftest import cli_in_process, tiny_config
from trainlab.data.loaders import TensorLoader
from trainlab.engine.callbacks import Callback

SRC = Path(__file__).resolve().parents[1] / "src" / "trainlab"


def blobs(n: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 4, generator=g) + 2.0 * y[:, None].float()
    return x, y


class Recorder(Callback):
    def __init__(self):
        self.begin_keys: set[str] = set()
        self.after_backward = 0

    def on_train_begin(self, logs):
        self.begin_keys = set(logs)

    def on_after_backward(self, step, logs):
        self.after_backward += 1
        assert {"model", "scaler"} <= logs.keys()


class NaNOnSecondBatch(nn.CrossEntropyLoss):
    """Cross-entropy, NaN on the second training batch of every epoch (8 batches per epoch)."""

    calls = 0

    def forward(self, output, target):
        loss = super().forward(output, target)
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls % 8 == 2:
                return loss * float("nan")
        return loss


def poisoned_trainer(policy: str, recorder: Callback) -> trainlab.Trainer:
    torch.manual_seed(0)
    x, y = blobs()
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    return trainlab.Trainer.from_datasets(
        model,
        TensorDataset(x, y),
        loss_fn=NaNOnSecondBatch(),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        batch_size=16,
        epochs=2,
        device="cpu",
        nan_policy=policy,
        callbacks=[recorder],
    )


def test_nan_policy_skip_runs_the_same_step_as_stop():
    # The defect: a copy of train_step for `skip` dropped the train accuracy (0.0), on_after_backward
    # (layer statistics, gradient histograms) and the GradScaler.
    recorder = Recorder()
    trainer = poisoned_trainer("skip", recorder)
    history = trainer.fit()
    assert trainer.nan_skipped == 2  # the NaN batch, once per epoch
    assert history[-1]["train_accuracy"] > 0.8  # counted over the batches that trained
    assert recorder.after_backward == 2 * 7  # every update that happened, none for the skipped batches


def test_nan_policy_stop_names_the_batch():
    trainer = poisoned_trainer("stop", Recorder())
    with pytest.raises(trainlab.errors.TrainingDiverged, match=r"epoch 1, step 2 \(batch 2 of the epoch\)"):
        trainer.fit()


def test_on_train_begin_passes_what_the_contract_says_and_not_the_trainer():
    recorder = Recorder()
    poisoned_trainer("skip", recorder).fit()
    assert recorder.begin_keys == {"model", "optimizer", "scaler", "config", "run_dir"}


def test_from_datasets_puts_a_tensor_dataset_on_the_fast_path():
    # A TensorDataset used to go through a per-sample DataLoader that reseeded torch for every sample.
    x, y = blobs()
    model = nn.Linear(4, 2)
    trainer = trainlab.Trainer.from_datasets(
        model, TensorDataset(x, y), TensorDataset(x, y), batch_size=32, epochs=1, device="cpu"
    )
    assert isinstance(trainer.train_loader, TensorLoader) and isinstance(trainer.val_loader, TensorLoader)
    assert trainer.val_loader.batch_size == 128  # evaluation batches: 4 x the training batch


def test_the_constructor_takes_loaders_and_says_what_to_do_with_a_dataset():
    x, y = blobs()
    model = nn.Linear(4, 2)
    with pytest.raises(TypeError, match="from_datasets"):
        trainlab.Trainer(
            model,
            TensorDataset(x, y),
            loss_fn=nn.CrossEntropyLoss(),
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        )


def test_trainlab_modules_are_imported_plainly():
    # A `try: from trainlab... except ImportError` silently removes a feature when that module breaks.
    offenders = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers
            ):
                for stmt in ast.walk(ast.Module(body=node.body, type_ignores=[])):
                    if isinstance(stmt, ast.ImportFrom) and (stmt.module or "").startswith("trainlab"):
                        offenders.append(f"{path.relative_to(SRC)}:{stmt.lineno}")
    assert offenders == []


def test_smoke_run_writes_a_complete_run_directory_in_two_steps(tmp_path, capsys):
    out = tmp_path / "smoke"
    code, stdout, _ = cli_in_process(
        capsys,
        "train",
        "--smoke",
        "--out",
        str(out),
        "--quiet",
        "scheduler.warmup_steps=50",
        "scheduler.interval=step",
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == 2
    assert (out / "checkpoints" / "best.pt").is_file() and (out / "report.html").is_file()
    assert summary["final"]["test"]["accuracy"] >= 0  # tested on one batch


def test_eval_takes_the_best_or_the_last_checkpoint(tmp_path, capsys, no_report):
    out = tmp_path / "r"
    run = trainlab.train(tiny_config(), {"train.epochs": 2}, out=out, quiet=True)
    code, best, _ = cli_in_process(capsys, "eval", str(out), "--checkpoint", "best")
    assert code == 0 and f"accuracy={run.final['test']['accuracy']:.4f}" in best
    code, last, _ = cli_in_process(capsys, "eval", str(out), "--checkpoint", "last")
    assert code == 0 and f"accuracy={run.final['test_last']['accuracy']:.4f}" in last


def test_epoch_sums_survive_a_checkpoint_exactly():
    # loss_sum - running_sum in float32 loses the logged part's last bits when running is small next
    # to it; a resumed epoch must continue from exactly the same sums (bit-identical train loss).
    from trainlab.engine.epoch_stats import EpochStats

    stats = EpochStats(torch.device("cpu"), "regression")
    stats.loss += 50.8392448425293  # float32 values where (loss + running) - running != loss
    stats.running += 2.6296138763427734
    stats.samples = stats.interval_samples = 7
    restored = EpochStats.start(torch.device("cpu"), "regression", stats.state_dict())
    assert torch.equal(restored.loss, stats.loss) and torch.equal(restored.running, stats.running)
    assert restored.state_dict()["loss_sum"] == stats.state_dict()["loss_sum"]
