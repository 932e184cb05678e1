"""Evaluation: mean loss and metrics over a loader, under `torch.inference_mode()`."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from trainlab.metrics import TaskMetrics


def evaluate(
    model: nn.Module,
    loader: Iterable,
    loss_fn: Callable,
    metrics: TaskMetrics | None,
    device: torch.device,
    autocast: Callable[[], Any] = contextlib.nullcontext,
    keep_outputs: bool = False,
    stats: dict[str, float] | None = None,
) -> tuple[dict[str, float], dict[str, torch.Tensor] | None]:
    """Mean loss and metrics over a loader; optionally the outputs and targets (for plots/predict).
    Under torch.distributed the loss sums and the metrics are reduced over every process's shard.
    `stats`, when given, gets this process's `samples` and `seconds` (for evaluation samples/s)."""
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), device=device)
    count = 0
    outputs, targets = [], []
    start = time.perf_counter()
    with torch.inference_mode():
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast():
                out = model(x)
                loss = loss_fn(out, y)
            total_loss += loss.float() * len(y)
            count += len(y)
            if metrics is not None:
                metrics.update(out, y)
            if keep_outputs:
                outputs.append(out.float().cpu())
                targets.append(y.cpu())
    model.train(was_training)
    total_loss, count = _all_reduce_sum(total_loss, count)
    logs = {"loss": float(total_loss) / max(count, 1)}  # note: one host sync per evaluation
    if metrics is not None:
        logs.update(metrics.compute())
    if stats is not None:
        stats.update(samples=count, seconds=time.perf_counter() - start)
    kept = {"output": torch.cat(outputs), "target": torch.cat(targets)} if keep_outputs and outputs else None
    return logs, kept


def _all_reduce_sum(total: torch.Tensor, count: int) -> tuple[torch.Tensor, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.stack([total.float(), torch.tensor(float(count), device=total.device)])
        torch.distributed.all_reduce(t)
        return t[0], int(t[1])
    return total, count
