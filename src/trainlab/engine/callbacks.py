"""The callback contract (after Keras): a few hooks called inline from the loop.

Data passes through the `logs` dict; a callback never changes the trainer or its objects, it only
reads `logs` and may set `self.stop_training = True` (and `self.stop_reason`, a sentence for the user).
Hooks a callback does not override are not called at all, so unused hooks cost nothing.

    on_train_begin(logs)           logs: {"model", "optimizer", "scaler" (GradScaler | None),
                                          "config" (TrainConfig), "run_dir" (Path | None)}
    on_epoch_begin(epoch, logs)    logs: {"position": optimizer steps of this epoch already done (resume)}
    on_batch_end(step, logs)       logs: {"epoch", "batch_size", "steps_since"}; every
                                   `train.log_every_n_steps` steps also "loss", "lr", "samples_per_second",
                                   "data_wait_fraction" (floats: read then, to avoid host syncs)
    on_after_backward(step, logs)  logs: {"model", "scaler"}: gradients are on the parameters (still
                                   scaled under fp16; before clipping and the step)
    on_epoch_end(epoch, logs)      logs: {"epoch", "step", "lr", "train": {...}, "val": {...} | None,
                                          "monitored": float, "eval_samples_per_second"}
    on_train_end(logs)             logs: {"status", "epoch", "step"}, and "test" (test metrics) in a
                                   config run; "history", "best", "task", "samples_per_second" in a
                                   Trainer run
"""

from __future__ import annotations

from typing import Any

from trainlab.engine.monitor import Monitor

HOOKS = (
    "on_train_begin",
    "on_epoch_begin",
    "on_batch_end",
    "on_after_backward",
    "on_epoch_end",
    "on_train_end",
)


class Callback:
    stop_training: bool = False

    def on_train_begin(self, logs: dict[str, Any]) -> None: ...
    def on_epoch_begin(self, epoch: int, logs: dict[str, Any]) -> None: ...
    def on_batch_end(self, step: int, logs: dict[str, Any]) -> None: ...
    def on_after_backward(self, step: int, logs: dict[str, Any]) -> None: ...
    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None: ...
    def on_train_end(self, logs: dict[str, Any]) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class CallbackList:
    """Calls each hook only on the callbacks that override it."""

    def __init__(self, callbacks: list[Callback]):
        self.callbacks = list(callbacks)
        self._by_hook = {
            h: [c for c in self.callbacks if getattr(type(c), h) is not getattr(Callback, h)] for h in HOOKS
        }

    def has(self, hook: str) -> bool:
        return bool(self._by_hook[hook])

    def call(self, hook: str, *args: Any) -> None:
        for c in self._by_hook[hook]:
            getattr(c, hook)(*args)

    @property
    def stop_training(self) -> bool:
        return any(c.stop_training for c in self.callbacks)


class EarlyStopping(Callback):
    """Stops when the monitored value has not improved (by the monitor's `min_delta`)
    for `patience` epochs."""

    def __init__(self, monitor: Monitor, patience: int):
        self.monitor, self.patience = monitor, patience
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.wait = 0
        self.stop_reason: str | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        value = logs.get("monitored")
        if value is None:
            return
        if self.monitor.is_improvement(value, self.best):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stop_training = True
            self.stop_reason = (
                f"early stopping at epoch {epoch}: {self.monitor.name} did not improve for "
                f"{self.patience} epochs (best {self.best:.4g} at epoch {self.best_epoch}; "
                f"train.early_stopping.patience={self.patience})"
            )

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "wait": self.wait,
            "stop_training": self.stop_training,
            "best_epoch": self.best_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait, self.stop_training = state["best"], state["wait"], state["stop_training"]
        self.best_epoch = state.get("best_epoch")
