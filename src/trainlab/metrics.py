"""Metric objects per task, from torchmetrics. They are updated on the device (no host sync per batch)
and reduced across processes by torchmetrics when torch.distributed is initialised."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import torch

from trainlab.errors import ConfigError, did_you_mean
from trainlab.registry import METRICS

if TYPE_CHECKING:
    import torchmetrics

DEFAULTS = {
    "classification": ["accuracy", "f1"],
    "binary": ["accuracy", "auroc"],
    "regression": ["mse", "mae", "r2"],
}


class _Lazy:
    """torchmetrics takes seconds to import (it pulls in torch._dynamo): import it on first use."""

    def __init__(self, module: str):
        self.module = module

    def __getattr__(self, name: str):
        return getattr(importlib.import_module(self.module), name)


C = _Lazy("torchmetrics.classification")
R = _Lazy("torchmetrics.regression")


def _for(task_factories: dict):
    def factory(task: str, num_classes: int | None, output_dim: int = 1) -> torchmetrics.Metric:
        if task not in task_factories:
            raise ConfigError(
                f"metrics: this metric is not defined for a {task} task; use {', '.join(DEFAULTS[task])}"
            )
        return task_factories[task](num_classes, output_dim)

    return factory


METRICS.add(
    "accuracy",
    _for(
        {
            "classification": lambda c, _: C.MulticlassAccuracy(num_classes=c, average="micro"),
            "binary": lambda c, _: C.BinaryAccuracy(),
        }
    ),
    "fraction of correct predictions",
)
METRICS.add(
    "f1",
    _for(
        {
            "classification": lambda c, _: C.MulticlassF1Score(num_classes=c, average="macro"),
            "binary": lambda c, _: C.BinaryF1Score(),
        }
    ),
    "F1 score (macro average over classes)",
)
METRICS.add(
    "precision",
    _for(
        {
            "classification": lambda c, _: C.MulticlassPrecision(num_classes=c, average="macro"),
            "binary": lambda c, _: C.BinaryPrecision(),
        }
    ),
    "precision (macro average over classes)",
)
METRICS.add(
    "recall",
    _for(
        {
            "classification": lambda c, _: C.MulticlassRecall(num_classes=c, average="macro"),
            "binary": lambda c, _: C.BinaryRecall(),
        }
    ),
    "recall (macro average over classes)",
)
METRICS.add(
    "auroc",
    _for(
        {
            "classification": lambda c, _: C.MulticlassAUROC(num_classes=c, average="macro"),
            "binary": lambda c, _: C.BinaryAUROC(),
        }
    ),
    "area under the ROC curve (one-vs-rest for multi-class)",
)
METRICS.add("mse", _for({"regression": lambda c, k: R.MeanSquaredError(num_outputs=k)}), "mean squared error")
METRICS.add(
    "mae", _for({"regression": lambda c, k: R.MeanAbsoluteError(num_outputs=k)}), "mean absolute error"
)
METRICS.add(
    "rmse",
    _for({"regression": lambda c, k: R.MeanSquaredError(squared=False, num_outputs=k)}),
    "root mean squared error",
)
METRICS.add(
    "r2",
    _for({"regression": lambda c, k: R.R2Score(multioutput="uniform_average") if k > 1 else R.R2Score()}),
    "coefficient of determination R²",
)


class TaskMetrics:
    """A MetricCollection plus the conversion from model outputs to what the metrics expect."""

    def __init__(
        self, task: str, num_classes: int | None, output_dim: int = 1, names: list[str] | None = None
    ):
        self.task = task
        names = list(names) if names else DEFAULTS[task]
        for i, name in enumerate(names):
            if name not in METRICS:
                raise ConfigError(
                    f"metrics[{i}]: unknown metric {name!r}{did_you_mean(name, METRICS.names())}"
                )
        self.names = names
        import torchmetrics

        self.collection = torchmetrics.MetricCollection(
            {n: METRICS.get(n)(task, num_classes, output_dim) for n in names}
        )

    @classmethod
    def for_output(cls, task: str, output: torch.Tensor, names: list[str] | None = None) -> TaskMetrics:
        """Metrics for a model whose output on a batch is `output` (last dimension: classes or targets)."""
        width = output.shape[-1] if output.dim() > 1 else 1
        return cls(task, width if task == "classification" else None, width, names)

    @classmethod
    def for_data(cls, bundle: Any, names: list[str] | None = None) -> TaskMetrics:
        """Metrics for a `DataBundle`'s task, classes and targets."""
        return cls(
            bundle.task,
            bundle.output_dim if bundle.task == "classification" else None,
            bundle.output_dim,
            names,
        )

    def to(self, device: torch.device) -> TaskMetrics:
        self.collection = self.collection.to(device)
        return self

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        self.collection.update(*prepare(self.task, output, target))

    def compute(self) -> dict[str, float]:
        values = self.collection.compute()
        self.collection.reset()
        return {k: float(v.float().mean()) for k, v in values.items()}

    def reset(self) -> None:
        self.collection.reset()


def prepare(task: str, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Model output -> (predictions, targets) in the form torchmetrics wants for the task."""
    output = output.detach().float()
    if task == "classification":
        return output, target.long().view(-1)  # (B, C) logits, (B,)
    if task == "binary":
        return torch.sigmoid(output.view(-1)), target.view(-1).long()  # (B,) probabilities
    target = target.float()
    if output.dim() > 1 and output.shape[-1] == 1:
        output = output.view(-1)
    return output, target.view_as(output)


def probabilities(task: str, output: torch.Tensor) -> torch.Tensor:
    """What `predict` reports: class probabilities, P(class 1), or the regression values."""
    if task == "classification":
        return torch.softmax(output.float(), dim=-1)
    if task == "binary":
        return torch.sigmoid(output.float().view(-1))
    return output.float().squeeze(-1) if output.dim() > 1 and output.shape[-1] == 1 else output.float()
