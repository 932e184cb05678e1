"""The non-finite guard: a NaN/Inf loss or gradient stops the run naming the exact step (or, with
`train.nan_policy: skip`, the batch is skipped), and non-finite weights are never saved.

Cost notes: with `nan_policy: stop` the guard keeps references to the device scalars (losses, clipped
gradient norms) and checks them all at once (one host sync) every `log_every_n_steps` steps, at epoch
ends and before every checkpoint write. `skip` must decide before the optimizer step, so it syncs once
per step (and once more per update for the gradient norm).
"""
from __future__ import annotations

import torch

from trainlab.engine import checkpoint as ckpt
from trainlab.errors import TrainingDiverged

ADVICE_STOP = "Try a lower optimizer.lr, train.grad_clip, or train.nan_policy=skip."
ADVICE_SKIP = "Try a lower optimizer.lr or train.grad_clip (train.nan_policy=skip could not help here)."


class NonFiniteGuard:
    def __init__(self, policy: str = "stop"):
        self.skip = policy == "skip"
        self.skipped = 0  # batches skipped under nan_policy=skip (this run, saved in checkpoints)
        self._watched: list[tuple[torch.Tensor, int, int, int]] = []

    @property
    def advice(self) -> str:
        return ADVICE_SKIP if self.skip else ADVICE_STOP

    def rejects(self, value: torch.Tensor, step: int, epoch: int, batch: int) -> bool:
        """nan_policy=stop: keeps the device scalar `value` (a loss or gradient norm) with where it came
        from for the next `check` (no host sync) and returns False. nan_policy=skip: True, and counted,
        when `value` is not finite (note: a host sync)."""
        if not self.skip:
            self._watched.append((value, step, epoch, batch))
            return False
        if bool(torch.isfinite(value).all()):
            return False
        self.skipped += 1
        return True

    def check(self) -> None:
        """Raise TrainingDiverged naming the first non-finite value watched since the last check."""
        if not self._watched:
            return
        values = torch.stack([v if v.dtype == torch.float32 and v.dim() == 0 else v.detach().float().reshape(())
                              for v, *_ in self._watched])  # losses are float32 scalars already: no op each
        bad = ~torch.isfinite(values)
        if bool(bad.any()):  # note: host sync, once per log interval and before every save
            _, step, epoch, batch = self._watched[int(bad.nonzero()[0])]
            self._watched.clear()
            raise TrainingDiverged(
                f"the loss or a gradient became NaN/Inf at epoch {epoch}, step {step + 1} (batch {batch} of the "
                f"epoch); last.pt and best.pt keep the last finite weights. {self.advice}")
        self._watched.clear()

    def check_weights(self, model_state: dict[str, torch.Tensor], name: str, where: str) -> None:
        """Before a save: finite losses but a step with Inf/NaN gradients (no grad_clip to see them)
        can still break the weights; then `name` is not written."""
        bad = ckpt.nonfinite_tensors(model_state)
        if bad:
            raise TrainingDiverged(
                f"the weights became NaN/Inf by {where}; in {', '.join(bad[:3])}); {name} was not written and "
                f"keeps the last finite weights. {self.advice}")
