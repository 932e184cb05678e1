"""Speed accounting: FLOPs per training sample (counted once with torch.utils.flop_counter) and the
device's peak, measured by a short matmul probe, for model FLOP utilisation (MFU)."""
from __future__ import annotations

import time
from functools import lru_cache

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def flops_per_sample(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Forward + backward FLOPs of one training step, divided by the batch size."""
    was = model.training
    model.eval()  # same FLOPs; no BatchNorm statistics or dropout RNG moved by this extra step
    # fork_rng: dropout in this extra forward must not move the RNG the training run depends on
    try:
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), \
                FlopCounterMode(display=False) as counter:
            loss = loss_fn(model(x), y)
            loss.backward()
        total = counter.get_total_flops()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was)
    return total / len(x) if total else None


@lru_cache(maxsize=None)
def peak_flops(device: torch.device, n: int = 1024, repeats: int = 5) -> float:
    """Measured fp32 matmul FLOP/s on `device` (best of a few n x n x n products)."""
    g = torch.Generator(device).manual_seed(0)  # a private generator: the global RNG is not touched
    a = torch.randn(n, n, device=device, generator=g)
    b = torch.randn(n, n, device=device, generator=g)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best
