"""Where training runs, the user's module inside its wrappers, and whether the CPU is already busy."""
from __future__ import annotations

import os

import torch
from torch import nn

from trainlab.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """`auto` is cuda > mps > cpu; asking for cuda where there is none is a config error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} asked for but CUDA is not available here; use auto or cpu")
    return device


def _cores() -> int:
    """The cores this process may use (its affinity mask: a container's share, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def busy_machine_note(device: str = "cpu", load: float | None = None, cores: int | None = None,
                      threads: int | None = None) -> str | None:
    """One line of advice when other work already keeps this machine's cores busy and CPU training
    would add several OpenMP threads of its own; else None.

    Threads of one process that wait for each other at every op lose most of their time when the
    cores are taken (mnist1d: 382 samples/s with the default threads on a busy 2-core machine,
    12,371 with OMP_NUM_THREADS=1). The test is the 1-minute load average (`os.getloadavg`, no
    probe, no cost) against the cores: busy from 0.75 runnable tasks per core. Silent when
    OMP_NUM_THREADS is set (the user chose), with one thread, or for a GPU device."""
    if "OMP_NUM_THREADS" in os.environ:
        return None
    try:
        if resolve_device(device).type != "cpu":
            return None
    except ConfigError:
        return None  # training itself reports the bad device
    threads = torch.get_num_threads() if threads is None else threads
    cores = _cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # Windows has no load average
            return None
    if threads <= 1 or load < 0.75 * cores:
        return None
    return (f"note: this machine is busy (load average {load:.1f} on {cores} cores) and torch would run {threads} "
            "threads that wait for each other, which can make training many times slower; set OMP_NUM_THREADS=1 "
            "(e.g. `OMP_NUM_THREADS=1 trainlab train ...`) while the other work runs")


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DistributedDataParallel and/or torch.compile wrappers (a user model's
    own `.module` attribute is left alone: only DDP's counts)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif getattr(model, "_orig_mod", None) is not None:  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def resolve_channels_last(model: nn.Module, x: torch.Tensor, setting: bool | str, device: torch.device) -> bool:
    """Whether to train in the channels-last layout, and if so the model converted to it.

    `train.channels_last: auto` turns it on for a model with 2-d convolutions on the CPU (oneDNN's
    NHWC kernels: a 1.1-1.7x faster training step for the zoo's conv nets on a 2-core machine;
    BENCHMARKS.md), when a trial forward on `x` works in that layout: a forward that calls
    `.view(B, -1)` on conv features needs contiguous tensors, and `auto` then keeps them. `true` makes
    that failure a config error (a forward that fails in both layouts is left to fail in training,
    with its own error). On CUDA `auto` stays off (not measured here); `true` is the usual advice
    there with bf16/fp16 (tensor cores).
    The trial runs in eval mode under no_grad, with the RNG forked: no BatchNorm statistics, dropout
    or random stream moves.
    """
    if setting is False or x.dim() != 4 or not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return False
    if setting == "auto" and device.type != "cpu":
        return False
    error = _layout_error(model, x.to(device), device)
    if error is None:
        return True
    _to_layout(model, torch.contiguous_format)
    if setting is True and _layout_error(model, x.to(device), device, channels_last=False) is None:
        raise ConfigError(f"train.channels_last: true, but the model's forward fails on channels-last inputs "
                          f"({error}); use .reshape or .flatten(1) instead of .view on conv "
                          f"features, or set train.channels_last: false")
    return False


def _layout_error(model: nn.Module, x: torch.Tensor, device: torch.device, channels_last: bool = True) -> str | None:
    """The first line of the error of a trial forward in the given layout (None: it works)."""
    was = model.training
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            if channels_last:
                _to_layout(model, torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
            model.eval()
            model(x[:2])
        return None
    except Exception as e:  # noqa: BLE001 - any failure means: not this layout
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160]}" if str(e) else type(e).__name__
    finally:
        model.train(was)


def _to_layout(model: nn.Module, memory_format: torch.memory_format) -> None:
    """`model.to(memory_format=...)` for its 4-d parameters and buffers only: a 5-d tensor or a lazy
    parameter not yet built (which `Module.to` refuses) stays as it is."""
    from torch.nn.parameter import is_lazy

    for t in [*model.parameters(), *model.buffers()]:
        if not is_lazy(t) and t.dim() == 4:
            t.data = t.data.to(memory_format=memory_format)  # restrides size-1 dims too, as Module.to does
