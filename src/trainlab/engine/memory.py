"""Running out of device memory: a clear exit-1 message that names the batch size and what to change,
instead of a CUDA traceback.

    with out_of_memory_guard(batch_size, grad_accum, device=device):   # around one training step
        loss = trainer.train_step(x, y, update)

Why no checkpoint is written from a failed step: checkpoints are written only between steps (after a
step returned, and at epoch ends); the guard turns the allocator's error into `OutOfMemory`, which
unwinds through the loop past every `save` call (none is in a `finally` or an `except`), so `last.pt`
keeps the last completed checkpoint. The failed step may have half-updated the weights in memory
(an optimizer allocates its state in its first `step`), and those are never saved.
"""

from __future__ import annotations

import contextlib
import traceback
from types import TracebackType

import torch

from trainlab.errors import OutOfMemory

# What the allocators say: torch.OutOfMemoryError (CUDA's caching allocator), cuBLAS/cuDNN workspace
# failures, MPS, and the CPU allocator.
_MARKERS = (
    "out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
    "can't allocate memory",
)


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and any(m in str(error) for m in _MARKERS)
    )


def oom_message(
    batch_size: int, grad_accum: int = 1, *, evaluating: bool = False, device: torch.device | None = None
) -> str:
    """The message of an out-of-memory failure at `batch_size` (the eval batch size when `evaluating`)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    where = f"{device.type.upper() if device.type == 'cuda' else device.type} out of memory"
    if device.type == "cuda" and torch.cuda.is_available():
        with contextlib.suppress(Exception):
            free, total = torch.cuda.mem_get_info(device)
            where += (
                f" on {torch.cuda.get_device_name(device)} "
                f"({total / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free now)"
            )
    smaller = max(1, batch_size // 2)
    if evaluating:
        return (
            f"{where} in evaluation at batch size {batch_size} (data.eval_batch_size; its default is 4 x "
            f"data.batch_size): try data.eval_batch_size={smaller}. Checkpoints written so far are intact."
        )
    effective = batch_size * grad_accum
    keep = (
        f"data.batch_size={smaller} train.grad_accum={grad_accum * 2} keeps the effective batch size of "
        f"{effective} per optimizer step"
        if smaller < batch_size
        else "the batch size is 1 already"
    )
    return (
        f"{where} in a training step at batch size {batch_size} (data.batch_size"
        f"{f', x train.grad_accum {grad_accum}' if grad_accum > 1 else ''}): try a smaller data.batch_size "
        f"or more train.grad_accum ({keep}), or train.precision=auto for half-size activations. "
        "No checkpoint was written from the failed step: those written before it are intact "
        "(--resume continues from last.pt)."
    )


class out_of_memory_guard:  # noqa: N801 - used like contextlib.suppress
    """Turns an allocator's out-of-memory error inside the block into `OutOfMemory` (exit 1); any other
    error passes through unchanged."""

    def __init__(
        self,
        batch_size: int,
        grad_accum: int = 1,
        *,
        evaluating: bool = False,
        device: torch.device | None = None,
    ):
        self.batch_size, self.grad_accum, self.evaluating, self.device = (
            batch_size,
            grad_accum,
            evaluating,
            device,
        )

    def __enter__(self) -> out_of_memory_guard:
        return self

    def __exit__(self, exc_type: type | None, error: BaseException | None, tb: TracebackType | None) -> bool:
        if error is None or not is_out_of_memory(error):
            return False
        # The failed step's tensors are locals of the finished frames in the traceback: clear them so
        # that the memory goes back to the allocator now, not when the last reference to the error dies.
        traceback.clear_frames(tb)
        error.__traceback__ = None
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.empty_cache()
        raise OutOfMemory(
            oom_message(self.batch_size, self.grad_accum, evaluating=self.evaluating, device=self.device)
        ) from None
