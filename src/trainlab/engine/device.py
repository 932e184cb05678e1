"""Where training runs and in what number format: the device, the precision (autocast dtype, loss
scaling, TF32), determinism and backend flags, torch.compile, the user's module inside its wrappers,
and whether the CPU is already busy.

What `auto` means on each device (one place; the loop, run.py and the benchmarks call these):

    precision auto   CUDA with native bf16 (compute capability >= 8.0): bf16 autocast
                     other CUDA GPUs: fp16 autocast + GradScaler;  CPU / MPS: fp32
    fp32             float32 weights and math; on CUDA matmuls may use TF32 ("high")
    fp32-strict      float32 without TF32 (matmuls and cuDNN convolutions in full float32)
    compile auto     torch.compile on CUDA (eager where it fails, with a warning); eager on CPU
    deterministic    torch.use_deterministic_algorithms, CUBLAS_WORKSPACE_CONFIG, no cudnn.benchmark
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainlab.errors import CheckpointError, ConfigError

CUBLAS_WORKSPACE = (
    ":4096:8"  # cuBLAS's deterministic workspace setting (CUDA docs, "Results reproducibility")
)


def resolve_device(name: str) -> torch.device:
    """`auto` is cuda > mps > cpu; asking for cuda where there is none is a config error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"train.device: {name!r} asked for but CUDA is not available here (torch "
                f"{torch.__version__}, {_no_cuda_reason()}); use train.device=auto or cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"train.device: {name!r}, but this machine has {torch.cuda.device_count()} CUDA "
                f"device(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1})"
            )
    return device


def _no_cuda_reason() -> str:
    return (
        "a CPU-only build"
        if torch.version.cuda is None
        else f"built for CUDA {torch.version.cuda}, but no GPU found"
    )


def inference_device(name: str) -> torch.device:
    """The device for `eval` / `predict` of a finished run: its training device where this machine has
    it, else the CPU (a run trained on CUDA is evaluated on a CPU-only machine without complaint;
    checkpoints are loaded to the CPU first in any case)."""
    try:
        return resolve_device(name)
    except ConfigError:
        return torch.device("cpu")


# ----------------------------------------------------------------------------- precision


@dataclass(frozen=True)
class Precision:
    """A resolved `train.precision`: never `auto`."""

    name: str  # "bf16", "fp16", "fp32" or "fp32-strict"
    dtype: torch.dtype | None  # the autocast dtype; None: no autocast (float32 throughout)
    needs_scaler: bool  # fp16: the loss is scaled by a torch.amp.GradScaler (fp16's range is narrow)
    tf32: bool  # float32 matmuls and cuDNN convolutions may use TF32 (CUDA only)

    def autocast(self, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
        """A factory of the context the forward and the loss run in."""
        if self.dtype is None:
            return contextlib.nullcontext
        dtype, device_type = self.dtype, device.type
        return lambda: torch.autocast(device_type, dtype=dtype)

    def scaler(self, device: torch.device) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(device.type) if self.needs_scaler else None

    @property
    def peak_label(self) -> str:
        """The number format whose matmul peak MFU is measured against."""
        if self.dtype is not None:
            return self.name
        return "tf32" if self.tf32 else "fp32"


def bf16_native(device: torch.device) -> bool:
    """bf16 tensor cores: compute capability 8.0 and up (Ampere, Ada, Hopper, ...); older GPUs only
    emulate bf16, slowly (so `torch.cuda.is_bf16_supported()`'s default answer is not the test)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_precision(precision: str, device: torch.device) -> Precision:
    """`train.precision` for `device`; a setting the device cannot run is a ConfigError naming the key."""
    cuda = device.type == "cuda"
    if precision == "auto":
        precision = ("bf16" if bf16_native(device) else "fp16") if cuda else "fp32"
    if precision == "fp16" and not cuda:
        raise ConfigError(
            f"train.precision: fp16 needs a CUDA device (GradScaler); on {device.type} use bf16 or fp32"
        )
    if precision == "bf16" and cuda and not bf16_native(device):
        raise ConfigError(
            f"train.precision: bf16 is only emulated (slowly) on {torch.cuda.get_device_name(device)} "
            f"(compute capability {'.'.join(map(str, torch.cuda.get_device_capability(device)))} < 8.0); "
            f"use train.precision=auto (fp16 + GradScaler there) or fp32"
        )
    if precision == "bf16":
        return Precision("bf16", torch.bfloat16, needs_scaler=False, tf32=cuda)
    if precision == "fp16":
        return Precision("fp16", torch.float16, needs_scaler=True, tf32=True)
    if precision == "fp32":
        return Precision("fp32", None, needs_scaler=False, tf32=cuda)
    if precision == "fp32-strict":
        return Precision("fp32-strict", None, needs_scaler=False, tf32=False)
    raise ConfigError(
        f"train.precision: unknown value {precision!r}; use auto, bf16, fp16, fp32 or fp32-strict"
    )


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def apply_backend_flags(
    precision: Precision,
    device: torch.device,
    model: nn.Module | None = None,
    *,
    fixed_shapes: bool = True,
    deterministic: bool = False,
) -> dict[str, Any]:
    """Process-wide math flags for a training run; returns what they are now (for summary.json).

    - TF32: `torch.set_float32_matmul_precision("high")` and `cudnn.allow_tf32` on CUDA unless the
      precision is fp32-strict ("highest", cuDNN TF32 off). Under bf16/fp16 autocast this only touches
      what autocast leaves in float32. On the CPU the setting changes nothing (it is CUDA's).
    - cudnn.benchmark for a conv net whose batches keep one shape (`fixed_shapes`: the in-memory fast
      path): cuDNN times its algorithms once per input shape and keeps the fastest; with shapes that
      vary it would re-time every new shape. Off under `deterministic` (the choice may vary by run).
    """
    flags: dict[str, Any] = {}
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high" if precision.tf32 else "highest")
        torch.backends.cudnn.allow_tf32 = precision.tf32
        torch.backends.cudnn.benchmark = bool(
            model is not None and has_conv(model) and fixed_shapes and not deterministic
        )
        flags.update(tf32=precision.tf32, cudnn_benchmark=torch.backends.cudnn.benchmark)
    elif precision.name == "fp32-strict":
        torch.set_float32_matmul_precision("highest")
    flags["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    return flags


def apply_determinism(deterministic: bool) -> str | None:
    """`train.deterministic: true`: deterministic kernels where PyTorch has them. Returns the one
    line to print (None when off). Call it before CUDA starts (first in a run): cuBLAS reads
    CUBLAS_WORKSPACE_CONFIG when it creates its handle.

    warn_only=True: an op with no deterministic CUDA kernel (e.g. adaptive_avg_pool2d's backward)
    warns once by name instead of stopping the run; that op stays nondeterministic.
    """
    if not deterministic:
        return None
    late = torch.cuda.is_initialized() and os.environ.get("CUBLAS_WORKSPACE_CONFIG") is None
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    line = (
        f"deterministic: torch.use_deterministic_algorithms(True, warn_only=True), cudnn.benchmark off, "
        f"CUBLAS_WORKSPACE_CONFIG={os.environ['CUBLAS_WORKSPACE_CONFIG']}"
    )
    if late:
        line += " (set after CUDA started: export it before starting trainlab for deterministic cuBLAS)"
    return line


def resolve_compile(setting: bool | str, device: torch.device) -> bool:
    """`train.compile`: true/false as given; `auto` compiles on CUDA (where torch.compile's Triton
    kernels pay back their compile time) and stays eager elsewhere."""
    if setting == "auto":
        return device.type == "cuda"
    return bool(setting)


# ----------------------------------------------------------------------------- resuming across devices


def device_state(device: torch.device) -> dict[str, str]:
    """The checkpoint entries that say where a run trained: `device` (the type: cpu, cuda, ...) and,
    on CUDA, `device_name` (e.g. 'NVIDIA H200')."""
    state = {"device": device.type}
    if device.type == "cuda":
        state["device_name"] = torch.cuda.get_device_name(device)
    return state


def check_resume_device(state: dict[str, Any], setting: str, path: Any = "last.pt") -> str | None:
    """Before a resume: refuses (CheckpointError, exit 2) to continue a run on another device type
    unless `train.device` names that device explicitly, and returns the note to print when it does
    (None: same device type, or a checkpoint from before the `device` entry).

    A resume on another device type continues from the same weights, optimizer state and data order,
    but not bit-identically to an uninterrupted run: CPU and CUDA kernels round differently, and the
    CUDA random streams do not exist on the CPU (dropout draws differ).
    """
    saved = state.get("device")
    if saved is None:
        return None
    explicit = setting != "auto"
    if saved == "cuda" and not torch.cuda.is_available() and setting.split(":")[0] in ("auto", "cuda"):
        raise CheckpointError(
            f"{path} was written by a run on CUDA ({state.get('device_name', 'a GPU')}) "
            "and this machine has no CUDA device. To continue it on the CPU, resume with train.device=cpu: "
            "it continues from the same weights, optimizer state and data order, "
            "but not bit-identically to an uninterrupted GPU run (CPU and CUDA kernels round differently; "
            "the CUDA random streams do not carry over)."
        )
    now = resolve_device(setting).type
    if now == saved:
        return None
    if not explicit:
        raise CheckpointError(
            f"{path} was written by a run on {saved}, and train.device: auto picks {now} here. Resume with "
            f"train.device={saved} to continue exactly, or train.device={now} to continue on {now} (not "
            f"bit-identically: {saved} and {now} kernels round differently)."
        )
    return (
        f"note: resuming a run trained on {saved} on {now} (train.device={setting}): same weights, optimizer "
        f"state and data order; the results will not be bit-identical to an uninterrupted {saved} run"
    )


# ----------------------------------------------------------------------------- wrappers and layout


def _cores() -> int:
    """The cores this process may use (its affinity mask: a container's share, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def busy_machine_note(
    device: str = "cpu", load: float | None = None, cores: int | None = None, threads: int | None = None
) -> str | None:
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
    return (
        f"note: this machine is busy (load average {load:.1f} on {cores} cores) and torch would run "
        f"{threads} threads that wait for each other, which can make training many times slower; "
        "set OMP_NUM_THREADS=1 (e.g. `OMP_NUM_THREADS=1 trainlab train ...`) while the other work runs"
    )


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


def resolve_channels_last(
    model: nn.Module, x: torch.Tensor, setting: bool | str, device: torch.device
) -> bool:
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
        raise ConfigError(
            f"train.channels_last: true, but the model's forward fails on channels-last inputs "
            f"({error}); use .reshape or .flatten(1) instead of .view on conv "
            f"features, or set train.channels_last: false"
        )
    return False


def _layout_error(
    model: nn.Module, x: torch.Tensor, device: torch.device, channels_last: bool = True
) -> str | None:
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
