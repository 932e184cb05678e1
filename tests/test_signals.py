"""SIGTERM and SIGINT: the current step finishes, last.pt is written, summary.json says "interrupted",
the exit code is 143 / 130 and `--resume` continues to the same weights; a second SIGINT exits at once.

External signals go to real `trainlab` processes. The SIGINT case that must land on an exact step
comes from a user model (`sigmod:Net`) that signals its own process during a chosen training step,
with the CLI in-process (`trainlab.cli.main`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from trainlab.cli import main

TRAINLAB = Path(sys.executable).with_name("trainlab")
DIGITS = [
    "train.epochs=2",
    "data.batch_size=64",
    "model.name=mlp",
    "model.hidden=[32]",
    "model.dropout=0.3",
    "train.checkpoint_every_n_steps=5",
    "scheduler.name=none",
]

USER_MODULE = '''
import os
import signal

import torch
from torch import nn


class Net(nn.Module):
    """An MLP with dropout that sends SIGINT to its own process during training step
    $TRAINLAB_TEST_SIGINT_AT (1-based; training batches are those of 15 samples with gradients on)."""

    def __init__(self, input_shape, output_dim):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(input_shape[0], 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, output_dim)
        )
        self.calls = 0

    def forward(self, x):
        if self.training and torch.is_grad_enabled() and x.shape[0] == 15:
            self.calls += 1
            if str(self.calls) == os.environ.get("TRAINLAB_TEST_SIGINT_AT"):
                os.kill(os.getpid(), signal.SIGINT)
        return self.net(x)
'''


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load(a)["model"], load(b)["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def wait_until(condition, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 300  # only to fail cleanly
    while not condition():
        assert proc.poll() is None, f"trainlab exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def start(out: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
    log = out.parent / f"{out.name}.log"
    with open(log, "w") as stdout:  # the child keeps its own copy of the handle
        proc = subprocess.Popen(
            [str(TRAINLAB), "train", *DIGITS, "--out", str(out), "--quiet"],
            stdout=stdout,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    return proc, log


def test_sigterm_exits_143_then_resume_completes_with_the_same_weights(tmp_path):
    run, reference = tmp_path / "run", tmp_path / "reference"
    proc, log = start(run)
    assert main(["train", *DIGITS, "--out", str(reference), "--quiet"]) == 0  # meanwhile, uninterrupted
    wait_until((run / "checkpoints" / "last.pt.sha256").exists, proc, "the first checkpoint")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 143, log.read_text()
    assert "SIGTERM" in log.read_text() and "--resume" in log.read_text()
    assert summary(run)["status"] == "interrupted"
    assert load(run / "checkpoints" / "last.pt")["global_step"] >= 5

    assert main(["train", *DIGITS, "--out", str(run), "--resume", "--quiet"]) == 0
    assert summary(run)["status"] == "completed" and summary(run)["epochs_completed"] == 2
    assert same_weights(run / "checkpoints" / "last.pt", reference / "checkpoints" / "last.pt")


def test_second_sigint_exits_at_once(tmp_path):
    run, marker = tmp_path / "run", tmp_path / "in_save"
    proc, log = start(run, env={"TRAINLAB_FAULT_PAUSE_IN_SAVE": str(marker)})
    wait_until(marker.exists, proc, "the paused save")  # the save sleeps 60 s here
    proc.send_signal(signal.SIGINT)
    wait_until(lambda: "SIGINT received" in log.read_text(), proc, "the first SIGINT's message")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=50) == 130  # well before the paused save would have finished
    assert "second Ctrl-C" in log.read_text()
    assert summary(run)["status"] == "running"  # nothing more was written
    assert load(run / "checkpoints" / "last.pt")["global_step"] == 5  # the previous checkpoint is intact


def test_sigint_on_a_step_finishes_it_saves_and_resumes_exactly(tmp_path, monkeypatch, capsys):
    (tmp_path / "sigmod.py").write_text(USER_MODULE)
    config = tmp_path / "sig.yaml"
    config.write_text(
        "name: sigint\ndata: {source: iris, batch_size: 15}\nmodel: {name: 'sigmod:Net'}\n"
        "optimizer: {name: Adam, lr: 0.01}\ntrain: {epochs: 2}\n"
    )  # 7 steps per epoch
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert main(["train", str(config), "--out", str(reference), "--quiet"]) == 0

    monkeypatch.setenv("TRAINLAB_TEST_SIGINT_AT", "10")
    assert main(["train", str(config), "--out", str(run), "--quiet"]) == 130
    assert "SIGINT" in capsys.readouterr().err
    assert summary(run)["status"] == "interrupted"
    state = load(run / "checkpoints" / "last.pt")
    assert state["global_step"] == 10 and state["loader"] == {"epoch": 1, "position": 3}  # step 10 finished

    monkeypatch.delenv("TRAINLAB_TEST_SIGINT_AT")
    assert main(["train", str(config), "--out", str(run), "--resume", "--quiet"]) == 0
    assert summary(run)["status"] == "completed"
    assert same_weights(run / "checkpoints" / "last.pt", reference / "checkpoints" / "last.pt")
    assert (
        load(run / "checkpoints" / "last.pt")["history"][-1]["train_loss"]
        == load(reference / "checkpoints" / "last.pt")["history"][-1]["train_loss"]
    )
