"""The sums of the epoch in progress: loss, samples, correct predictions, seconds and data wait.

They live on the device and are read only when logged (every `train.log_every_n_steps` steps and at
the epoch's end), so the loop never syncs the host per step. A mid-epoch checkpoint saves them
(`state_dict`, plain numbers under the checkpoint key `epoch_progress`) and a resumed epoch continues
them (`EpochStats.start(..., progress=...)`), so it logs the same training loss and accuracy as an
uninterrupted one.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from trainlab.engine import distributed
from trainlab.metrics import prepare


def count_correct(task: str, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Correct predictions in a batch, as a device tensor (no sync); a logit > 0 is a probability > 0.5."""
    with torch.no_grad():
        if task == "classification" and y.dim() == 1:
            return (output.argmax(-1) == y).sum()
        if task == "binary":
            return ((output.view(-1) > 0) == (y.view(-1) > 0.5)).sum()
        preds, target = prepare(task, output, y)
        return (preds.argmax(-1) == target).sum()


class EpochStats:
    """Device-side sums of one epoch. `loss` holds the intervals already logged, `running` the one in
    progress (both sums of loss x batch size)."""

    def __init__(self, device: torch.device, task: str):
        self.task = task
        self.loss = torch.zeros((), device=device)
        self.running = torch.zeros((), device=device)
        self.correct = (
            torch.zeros((), device=device, dtype=torch.long) if task in ("classification", "binary") else None
        )
        self.samples = self.interval_samples = 0
        self.data_wait = 0.0
        self.started = self.logged = time.perf_counter()

    @classmethod
    def start(cls, device: torch.device, task: str, progress: dict[str, float] | None = None) -> EpochStats:
        """A new epoch's sums, or the sums of a checkpoint's unfinished epoch (`progress`)."""
        stats = cls(device, task)
        if progress:
            # the logged intervals' sum itself (float32 -> float -> float32 is exact); checkpoints written
            # before it existed give it as a difference, which float32 rounding can move by an ulp
            stats.loss += progress.get("logged_sum", progress["loss_sum"] - progress["running_sum"])
            stats.running += progress["running_sum"]
            stats.samples, stats.interval_samples = (
                int(progress["samples"]),
                int(progress["interval_samples"]),
            )
            if stats.correct is not None:
                stats.correct += int(progress["correct"])
            stats.started -= progress["seconds"]
            stats.data_wait = progress["data_wait"]
        return stats

    def add(self, loss: torch.Tensor, output: torch.Tensor, y: torch.Tensor) -> None:
        batch_size = len(y)
        self.running.add_(loss.float(), alpha=batch_size)  # one op (loss.float() is the loss itself in fp32)
        self.samples += batch_size
        self.interval_samples += batch_size
        if self.correct is not None:
            self.correct += count_correct(self.task, output, y)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def interval_logs(self) -> dict[str, float]:
        """Mean loss and speed since the last log; starts the next interval. Note: one host sync."""
        now = time.perf_counter()
        logs = {
            "loss": float(self.running) / max(self.interval_samples, 1),
            "samples_per_second": self.interval_samples / max(now - self.logged, 1e-9),
            "data_wait_fraction": self.data_wait / max(now - self.started, 1e-9),
        }  # of the epoch so far
        self.loss += self.running
        self.running.zero_()
        self.interval_samples, self.logged = 0, now
        return logs

    def epoch_logs(self, world_size: int = 1) -> dict[str, float]:
        """The epoch's training values, over every rank's shard under DDP (one collective). After this,
        `samples` counts all ranks' samples and `elapsed` is the epoch's wall time."""
        self.loss += self.running
        self.running.zero_()
        self.elapsed = self.seconds
        loss, correct = self.loss, self.correct
        if world_size > 1:
            loss_sum, n, hits = distributed.all_reduce_sums(
                loss, self.samples, 0 if correct is None else correct
            )
            loss, self.samples = torch.tensor(loss_sum), int(n)
            correct = None if correct is None else torch.tensor(hits)
        logs = {"loss": float(loss) / max(self.samples, 1)}
        if correct is not None:
            logs["accuracy"] = float(correct) / max(self.samples, 1)
        logs["samples_per_second"] = self.samples / max(self.elapsed, 1e-9)
        logs["data_wait_fraction"] = self.data_wait / max(self.elapsed, 1e-9)
        return logs

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers for a mid-epoch checkpoint. Note: a host sync (only before a checkpoint write)."""
        return {
            "loss_sum": float(self.loss + self.running),
            "running_sum": float(self.running),
            "logged_sum": float(self.loss),
            "samples": self.samples,
            "interval_samples": self.interval_samples,
            "seconds": self.seconds,
            "data_wait": self.data_wait,
            "correct": int(self.correct) if self.correct is not None else 0,
        }
