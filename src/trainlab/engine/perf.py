"""Speed accounting: FLOPs per training sample (counted once with torch.utils.flop_counter) and the
device's peak in the precision in use (bf16, fp16, tf32 or fp32), measured by a short matmul probe,
for model FLOP utilisation (MFU). A bf16 run's MFU is against the bf16 peak; the label says which."""

from __future__ import annotations

import time
from functools import cache

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def flops_per_sample(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Forward + backward FLOPs of one training step, divided by the batch size."""
    was = model.training
    model.eval()  # same FLOPs; no BatchNorm statistics or dropout RNG moved by this extra step
    # fork_rng: dropout in this extra forward must not move the RNG the training run depends on
    try:
        with (
            torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []),
            FlopCounterMode(display=False) as counter,
        ):
            loss = loss_fn(model(x), y)
            loss.backward()
        total = counter.get_total_flops()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was)
    return total / len(x) if total else None


def peak_flops(
    device: torch.device, dtype: torch.dtype = torch.float32, n: int | None = None, repeats: int = 5
) -> float:
    """Measured matmul FLOP/s on `device` in `dtype` (best of a few n x n x n products): the peak of the
    precision in use, for MFU. For float32 on CUDA the products run under the current
    `torch.get_float32_matmul_precision()` (TF32 when "high"): call it after the backend flags are set.
    Cached per (device, dtype, matmul precision)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    n = n or (8192 if device.type == "cuda" else 1024)  # a GPU needs a large product to reach its peak
    return _peak_flops(device, dtype, n, repeats, torch.get_float32_matmul_precision())


def format_mfu(mfu: float, peak: float, label: str) -> str:
    """'MFU 41.2% of the measured bf16 peak (712.3 TFLOP/s)'; `label` is `Precision.peak_label`."""
    return f"MFU {100 * mfu:.1f}% of the measured {label} peak ({peak / 1e12:.1f} TFLOP/s)"


@cache
def _peak_flops(
    device: torch.device, dtype: torch.dtype, n: int, repeats: int, matmul_precision: str
) -> float:
    g = torch.Generator(device).manual_seed(0)  # a private generator: the global RNG is not touched
    a = torch.randn(n, n, device=device, generator=g).to(dtype)
    b = torch.randn(n, n, device=device, generator=g).to(dtype)
    a @ b  # warm-up: cuBLAS handle, kernel selection
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # note: host sync; the probe runs once, before training
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best
