"""The monitored value: which logged number decides `best.pt`, early stopping and the plateau
schedule, and when it counts as improved.

One rule, as in Keras's `MonitorCallback`: "is lower better?" is decided once, by `Monitor`, and
`Monitor.is_improvement` is the only comparison. Best-checkpoint tracking, `EarlyStopping` and the
`plateau` schedule each hold a `Monitor`; they differ only in `min_delta`.

`train.monitor: auto` (the default) resolves to the value a user would choose the model by:
`val_accuracy` for classification and binary tasks, `val_loss` for regression, and the training
split's value (`train_accuracy`, `train_loss`) when the run has no validation split. A `val_*` name in
a run without a validation split is renamed to its `train_*` value, so a training loss is never
labelled `val_loss`. Accuracy on a small validation split is coarse (45 samples: steps of 2.2 points)
and often ties across epochs; with `auto`, a tie goes to the epoch with the lower loss of the same
split (the first epoch reaching the top accuracy is often an undertrained model: measured on
breast_cancer, 97.4% test accuracy against 98.2% for the tie-broken choice and for scikit-learn).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from trainlab.errors import ConfigError

LOWER_IS_BETTER = ("loss", "error", "mse", "mae", "rmse", "perplexity")


def resolve_name(setting: str, task: str, has_val: bool) -> str:
    """The monitored value's full name (`val_accuracy`, `train_loss`, ...) for `train.monitor`."""
    if setting == "auto":
        metric = "loss" if task == "regression" else "accuracy"
        return f"{'val' if has_val else 'train'}_{metric}"
    split, _, rest = setting.partition("_")
    if split == "val" and not has_val:
        return f"train_{rest}"
    return setting


def resolve_mode(name: str, mode: str = "auto") -> str:
    """'min' for losses and errors (val_loss, val_mae, val_perplexity), 'max' for scores."""
    if mode != "auto":
        return mode
    return "min" if any(word in name.lower() for word in LOWER_IS_BETTER) else "max"


@dataclass(frozen=True)
class Monitor:
    """A monitored value `name` (flat: `val_accuracy`), its direction and the least change that counts."""

    name: str
    mode: str = "auto"
    min_delta: float = 0.0
    tie_break: str | None = None  # a lower-is-better value that decides between equal values of `name`

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", resolve_mode(self.name, self.mode))

    @classmethod
    def for_run(cls, setting: str, mode: str, task: str, has_val: bool, min_delta: float = 0.0) -> Monitor:
        """`train.monitor` / `train.mode` resolved for a run's task and splits."""
        name = resolve_name(setting, task, has_val)
        tie_break = f"{name.partition('_')[0]}_loss" if setting == "auto" and task != "regression" else None
        return cls(name, mode, min_delta, tie_break)

    def with_min_delta(self, min_delta: float) -> Monitor:
        return dataclasses.replace(self, min_delta=min_delta)

    def is_improvement(
        self, value: float | None, best: float | None, tie: float | None = None, best_tie: float | None = None
    ) -> bool:
        """Whether `value` beats `best` by more than `min_delta`; an equal value with a lower
        `tie_break` value (`tie` against `best_tie`, when given) counts too."""
        if value is None or not math.isfinite(value):
            return False
        if best is None:
            return True
        if value == best and tie is not None and best_tie is not None:
            return tie < best_tie
        return value < best - self.min_delta if self.mode == "min" else value > best + self.min_delta

    def value(self, logs: dict[str, Any]) -> float:
        """The monitored value in flat epoch logs (`{"train_loss": .., "val_accuracy": ..}`)."""
        if self.name in logs:
            return float(logs[self.name])
        available = ", ".join(k for k, v in logs.items() if isinstance(v, (int, float))) or "none"
        raise ConfigError(f"train.monitor: {self.name!r} is not a logged value; available: {available}")


def flat_logs(train: dict[str, Any], val: dict[str, Any] | None) -> dict[str, Any]:
    """`{"train_loss": .., "val_loss": ..}` from an epoch's two dicts of values."""
    return {**{f"train_{k}": v for k, v in train.items()}, **{f"val_{k}": v for k, v in (val or {}).items()}}
