"""The non-finite guard: a NaN/Inf loss or gradient stops the run naming the exact step (or, with
`train.nan_policy: skip`, the batch is skipped), and non-finite weights are never saved.

Cost notes: with `nan_policy: stop` the guard keeps references to the device scalars (losses, clipped
gradient norms) and checks them all at once (one host sync) every `log_every_n_steps` steps, at epoch
ends and before every checkpoint write. `skip` must decide before the optimizer step, so it syncs once
per step (and once more per update for the gradient norm).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from trainlab.engine import checkpoint as ckpt
from trainlab.errors import TrainingDiverged, divergence_advice


class NonFiniteGuard:
    """`train_cfg`: the run's TrainConfig (nan_policy; the advice names only remedies not in use);
    `checkpoint_dir`: where last.pt/best.pt are (the message names only those that exist)."""

    def __init__(self, train_cfg: Any, checkpoint_dir: Path | None = None):
        self.train_cfg, self.checkpoint_dir = train_cfg, checkpoint_dir
        self.skip = train_cfg.nan_policy == "skip"
        self.skipped = 0  # batches skipped under nan_policy=skip (this run, saved in checkpoints)
        self._watched: list[tuple[torch.Tensor, int, int, int]] = []

    def advice(self, bad: list[str] = ()) -> str:
        return divergence_advice(self.train_cfg, self.checkpoint_dir, bad)

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
        values = torch.stack(
            [
                v if v.dtype == torch.float32 and v.dim() == 0 else v.detach().float().reshape(())
                for v, *_ in self._watched
            ]
        )  # losses are float32 scalars already: no op each
        bad = ~torch.isfinite(values)
        if bool(bad.any()):  # note: host sync, once per log interval and before every save
            _, step, epoch, batch = self._watched[int(bad.nonzero()[0])]
            self._watched.clear()
            raise TrainingDiverged(
                f"the loss or a gradient became NaN/Inf at epoch {epoch}, step {step + 1} (batch {batch} of "
                f"the epoch); {self.advice()}"
            )
        self._watched.clear()

    def check_weights(self, model_state: dict[str, torch.Tensor], name: str, where: str) -> None:
        """Before a save: finite losses but a step with Inf/NaN gradients (no grad_clip to see them)
        can still break the weights; then `name` is not written."""
        bad = ckpt.nonfinite_tensors(model_state)
        if bad:
            raise TrainingDiverged(
                f"the weights became NaN/Inf by {where}; in {', '.join(bad[:3])}); {name} was not written; "
                f"{self.advice(bad)}"
            )
