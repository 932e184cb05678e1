"""The callback contract (after Keras): a few hooks called inline from the loop.

Data passes through the `logs` dict; a callback never changes the trainer's attributes, it only
reads `logs` (and the objects passed to `on_train_begin`) and may set `self.stop_training = True`.
Hooks a callback does not override are not called at all, so unused hooks cost nothing.

    on_train_begin(logs)   logs: {"trainer": Trainer, "model", "optimizer", "config", "run": RunDir | None}
    on_epoch_begin(epoch, logs)
    on_batch_end(step, logs)       logs: {"epoch", "step", "batch_size", ...}; loss values only every
                                   `train.log_every_n_steps` steps as "loss" (a float) to avoid host syncs
    on_after_backward(step, logs)  gradients are present on the model's parameters (before clipping/step)
    on_epoch_end(epoch, logs)      logs: {"train": {...}, "val": {...}, "lr": float, "epoch", "step"}
    on_train_end(logs)             logs: {"status": ..., "history": [...]}
"""
from __future__ import annotations

from typing import Any

HOOKS = ("on_train_begin", "on_epoch_begin", "on_batch_end", "on_after_backward", "on_epoch_end", "on_train_end")


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
        self._by_hook = {h: [c for c in self.callbacks if getattr(type(c), h) is not getattr(Callback, h)] for h in HOOKS}

    def has(self, hook: str) -> bool:
        return bool(self._by_hook[hook])

    def call(self, hook: str, *args: Any) -> None:
        for c in self._by_hook[hook]:
            getattr(c, hook)(*args)

    @property
    def stop_training(self) -> bool:
        return any(c.stop_training for c in self.callbacks)


class EarlyStopping(Callback):
    """Stops when `monitor` has not improved by `min_delta` for `patience` epochs."""

    def __init__(self, monitor: str, mode: str, patience: int, min_delta: float = 0.0):
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, min_delta
        self.best: float | None = None
        self.wait = 0

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        value = logs.get("monitored")
        if value is None:
            return
        better = self.best is None or (value < self.best - self.min_delta if self.mode == "min"
                                       else value > self.best + self.min_delta)
        if better:
            self.best, self.wait = value, 0
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.stop_training = True

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait, "stop_training": self.stop_training}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait, self.stop_training = state["best"], state["wait"], state["stop_training"]


def monitor_mode(monitor: str, mode: str) -> str:
    if mode != "auto":
        return mode
    return "min" if any(w in monitor for w in ("loss", "mse", "mae", "rmse", "error")) else "max"
