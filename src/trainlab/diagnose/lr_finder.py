"""The learning-rate range test: train a few steps while the LR grows exponentially, watch the loss.

Too small an LR barely moves the loss; a good one makes it fall fastest; too large a one makes it
explode (for ½·a·θ² plain SGD diverges once lr > 2/a). The test raises the LR from `start_lr` to
`end_lr` over `num_steps` steps (lr_i = start_lr · (end_lr/start_lr)^(i/(num_steps−1))), smooths the
noisy batch losses with a bias-corrected exponential moving average, and stops once the smoothed
loss exceeds `diverge_factor` × the best one or a loss is not finite. Then it suggests:
  steepest (the headline, as Lightning's `suggestion()` and fastai's `steep`): the LR where the
            curve, smoothed once more over a centred window of ±0.15 decades, falls fastest
            against log10(lr) within its descent, from the highest loss before the lowest one
            down to the lowest one (past the lowest the LR is too large; a fall after a blow-up is
            recovery, and early wiggles on the flat start are noise), and at most a tenth of the
            LR with the lowest loss (fastai's `minimum`/10);
  valley:   a point in the middle of the longest stretch over which the loss keeps falling. On a
            long flat start (Adam from 1e-7) that stretch starts in the flat part, and its middle
            lands 10-30x below the LR that trains well, so it is only a cautious second opinion.
The model, optimizer and random-number generators are restored exactly afterwards.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


def _finite_prefix(lrs: list[float], losses: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """The curve up to (not including) its first non-finite loss."""
    losses_a = np.asarray(losses, dtype=float)
    bad = np.flatnonzero(~np.isfinite(losses_a))
    end = int(bad[0]) if bad.size else len(losses_a)
    return np.asarray(lrs[:end], dtype=float), losses_a[:end]


def _centred_mean(x: np.ndarray, y: np.ndarray, half_width: float) -> np.ndarray:
    """y averaged over the points with |x_j - x_i| <= half_width (a centred window: no lag)."""
    near = np.abs(x[:, None] - x[None, :]) <= half_width  # (n, n); n is about 100
    return (near * y[None, :]).sum(1) / near.sum(1)


def suggest_steepest(
    lrs: list[float], losses: list[float], half_width: float = 0.15, min_fall: float = 0.02
) -> float | None:
    """The LR where the loss, averaged over ±`half_width` decades, falls fastest against log10(lr)
    within the descent (from the highest loss before the lowest one down to the lowest one), at
    most a tenth of the LR with the lowest loss. None
    with fewer than 3 finite points, or when that descent is under `min_fall` of the loss (a flat
    curve: no LR in the range made progress)."""
    lr, loss = _finite_prefix(lrs, losses)
    if len(loss) < 3:
        return None
    x = np.log10(lr)
    smooth = _centred_mean(x, loss, half_width)
    end = int(np.argmin(smooth)) + 1  # past the lowest loss the LR is too large
    start = int(np.argmax(smooth[:end]))  # a fall before a higher bump is noise, not the descent
    top, bottom = smooth[start], smooth[end - 1]
    if end - start < 3 or top - bottom <= min_fall * max(abs(top), abs(bottom)):
        return None
    slope = np.gradient(smooth[start:end], x[start:end])
    # fastai's `minimum`/10 as a ceiling: with momentum the steepest point of a 100-step test can sit
    # just below the blow-up (SGD 0.9 on the digits MLP: steepest 0.42, which trains to 60% accuracy)
    return float(min(lr[start + int(np.argmin(slope))], lr[end - 1] / 10))


def suggest_valley(lrs: list[float], losses: list[float]) -> float | None:
    """The LR halfway along the longest decreasing subsequence of the loss curve (O(n²), n ≈ 100)."""
    lr, loss = _finite_prefix(lrs, losses)
    n = len(loss)
    if n < 3:
        return None
    length = np.ones(n, dtype=int)  # length[i]: longest decreasing run (subsequence) ending at i
    start = np.arange(n)  # where that run starts
    for i in range(1, n):
        for j in range(i):
            if loss[i] < loss[j] and length[j] + 1 > length[i]:
                length[i], start[i] = length[j] + 1, start[j]
    end = int(np.argmax(length))
    return float(lr[(int(start[end]) + end) // 2])


def _cycle(batches: Iterable) -> Iterable:
    """Batches forever: a loader is iterated again (a new epoch) when exhausted."""
    while True:
        empty = True
        for b in batches:
            empty = False
            yield b
        if empty:
            raise ValueError("the loader yielded no batches")


def lr_range_test(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    batches: Iterable,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    smooth: float = 0.98,
    diverge_factor: float = 4.0,
    skip_start: int = 10,
    skip_end: int = 5,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Run the range test; returns {suggestion (= suggestion_steepest), lrs, losses (smoothed, trimmed),
    all_lrs, all_losses, raw_losses,
    suggestion_steepest, suggestion_valley, stopped_early, stop_lr (where it stopped), divergence_lr
    (where the loss began to blow up)}.

    `batches` yields (x, y) pairs (a DataLoader is re-iterated as needed); `smooth` is the EMA
    weight of the past (0: no smoothing). The first `skip_start` and last `skip_end` points are
    trimmed before suggesting (fewer when the curve is short).
    """
    if not 0 < start_lr < end_lr:
        raise ValueError(f"need 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
    model_state = copy.deepcopy(model.state_dict())
    optimizer_state = copy.deepcopy(optimizer.state_dict())
    modes = {m: m.training for m in model.modules()}
    gamma = (end_lr / start_lr) ** (1 / max(1, num_steps - 1))
    all_lrs: list[float] = []
    raw: list[float] = []
    smoothed: list[float] = []
    stopped_early = False
    stop_lr = None
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=cuda):  # dropout / augmentation draws are undone too
            model.train()
            avg, best = 0.0, math.inf
            for i, (x, y) in zip(range(num_steps), _cycle(batches)):
                lr = start_lr * gamma**i
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if device is not None:
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x), y)
                loss.backward()
                optimizer.step()
                value = float(loss.detach())  # note: host sync every step; 100 steps, so fine
                if not math.isfinite(value):
                    stopped_early, stop_lr = True, lr  # cut at the first NaN / Inf
                    break
                avg = smooth * avg + (1 - smooth) * value
                s = avg / (1 - smooth ** (i + 1))  # bias correction: the EMA starts at 0
                all_lrs.append(lr)
                raw.append(value)
                smoothed.append(s)
                if s - best > (diverge_factor - 1) * abs(best):  # s > 4·best, also for negative losses
                    stopped_early, stop_lr = True, lr
                    break
                best = min(best, s)
    finally:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        for m, mode in modes.items():
            m.training = mode
    # Trim: the first points barely moved the weights, the last ones are the blow-up itself.
    n = len(smoothed)
    lo = min(skip_start, max(0, n // 5))
    hi = n - min(skip_end, n // 10)
    lrs, losses = all_lrs[lo:hi], smoothed[lo:hi]
    # Where the blow-up began: the lowest raw loss before the stop (each loss is measured before
    # its step, so for ½·a·θ² with SGD this is the first lr above 2/a).
    divergence_lr = all_lrs[int(np.argmin(raw))] if stopped_early and raw else None
    steepest = suggest_steepest(lrs, losses)
    return {
        "suggestion": steepest,
        "lrs": lrs,
        "losses": losses,
        "all_lrs": all_lrs,
        "all_losses": smoothed,
        "raw_losses": raw,
        "suggestion_steepest": steepest,
        "suggestion_valley": suggest_valley(lrs, losses),
        "stopped_early": stopped_early,
        "stop_lr": stop_lr,
        "divergence_lr": divergence_lr,
    }


def plot_lr_find(result: dict[str, Any], path: str | Path) -> Path:
    """Loss against LR (log scale) with the suggestions marked; writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result["lrs"], result["losses"], color="C0", label="smoothed loss")
    for key, color, label in (
        ("suggestion_steepest", "C1", "suggested (steepest)"),
        ("suggestion_valley", "C2", "valley (cautious)"),
    ):
        lr = result.get(key)
        if lr is not None:
            ax.axvline(lr, color=color, linestyle="--", label=f"{label}: {lr:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.set_title("LR range test")
    ax.legend()
    from trainlab.report.plots import save_figure

    return save_figure(fig, path)
