"""Losses: `loss.name` is `auto`, any torch.nn loss class by name (with its keyword arguments), or a
user `module:attr` class or function.

`auto` picks CrossEntropyLoss (classification), BCEWithLogitsLoss (binary) or MSELoss (regression).
`build_loss` returns a module `loss(output, target)` that first adapts the target (and, for
KLDivLoss, the output) to what the torch loss needs, so the same loader works with any of them:

    CrossEntropyLoss, NLLLoss, MultiMarginLoss   class indices, long (B,); CE also takes class
                                                 probabilities (B, C). NLLLoss wants log-probabilities:
                                                 end the model with LogSoftmax.
    MultiLabelMarginLoss                         the class index, then -1s: long (B, C)
    BCEWithLogitsLoss, BCELoss,                  float, the output's shape ((B, 1) or (B,)); with C > 1
    MultiLabelSoftMarginLoss                     outputs, class indices become one-hot rows. BCELoss
                                                 wants probabilities: end the model with Sigmoid.
    SoftMarginLoss                               as BCE, with 0 labels turned into -1
    MSELoss, L1Loss, SmoothL1Loss, HuberLoss,    float; the output is reshaped to the target's shape
    PoissonNLLLoss                               ((B, 1) vs (B,)); class indices become one-hot rows.
                                                 PoissonNLLLoss (log_input) reads the output as log rate.
    KLDivLoss                                    the output is read as logits and turned into
                                                 log-probabilities (log_softmax; a binary logit x into
                                                 [log σ(-x), log σ(x)]), the target into probabilities
                                                 (one-hot from class indices); reduction defaults to
                                                 "batchmean", the true KL divergence.
A user's own loss gets the output and target unchanged.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainlab.config import LossConfig
from trainlab.errors import ConfigError, did_you_mean, short
from trainlab.registry import LOSSES, Entry, check_kwargs

AUTO = {"classification": "CrossEntropyLoss", "binary": "BCEWithLogitsLoss", "regression": "MSELoss"}

# How each usable loss wants its target, and for which tasks that makes sense.
ADAPT = {
    "CrossEntropyLoss": "class_index",
    "NLLLoss": "class_index",
    "MultiMarginLoss": "class_index",
    "MultiLabelMarginLoss": "label_list",
    "BCEWithLogitsLoss": "binary",
    "BCELoss": "binary",
    "MultiLabelSoftMarginLoss": "binary",
    "SoftMarginLoss": "sign",
    "MSELoss": "value",
    "L1Loss": "value",
    "SmoothL1Loss": "value",
    "HuberLoss": "value",
    "PoissonNLLLoss": "value",
    "KLDivLoss": "distribution",
}
TASKS = {
    "class_index": ("classification",),
    "label_list": ("classification",),
    "binary": ("classification", "binary", "regression"),
    "sign": ("classification", "binary"),
    "value": ("classification", "binary", "regression"),
    "distribution": ("classification", "binary"),
}

# Losses whose inputs are not one (prediction, target) pair: what they need instead.
REFUSED = {
    "MarginRankingLoss": "two inputs x1, x2 and a target of ±1 saying which one should rank higher",
    "TripletMarginLoss": "three embeddings (anchor, positive, negative)",
    "TripletMarginWithDistanceLoss": "three embeddings (anchor, positive, negative) and a distance function",
    "CosineEmbeddingLoss": "two embeddings x1, x2 and a target of ±1 (similar or not)",
    "HingeEmbeddingLoss": "distances between pairs of inputs (e.g. |x1 - x2|) and targets of ±1",
    "CTCLoss": "log-probabilities (T, B, C), target sequences, and the input and target lengths",
    "GaussianNLLLoss": "a predicted mean, a target and a predicted variance",
    "AdaptiveLogSoftmaxWithLoss": "hidden features and targets; "
    "it is a layer with its own weights, not a loss",
    "LinearCrossEntropyLoss": "hidden features and targets; it holds the classifier's Linear weights itself "
    "(a layer fused with the loss), which the optimizer of the model would not train",
}

_DESCRIPTIONS = {
    "CrossEntropyLoss": "classification: logits (B, C) vs class indices (log-softmax inside)",
    "NLLLoss": "classification: log-probabilities (B, C) (end the model with LogSoftmax) vs class indices",
    "MultiMarginLoss": "classification: multi-class hinge loss on scores (B, C) vs class indices",
    "MultiLabelMarginLoss": "classification: multi-label hinge loss; "
    "class indices become (class, -1, ...) rows",
    "BCEWithLogitsLoss": "binary: one logit vs 0/1 (sigmoid inside); one-hot rows for C classes",
    "BCELoss": "binary: a probability (end the model with Sigmoid) vs 0/1",
    "MultiLabelSoftMarginLoss": "multi-label: logits (B, C) vs 0/1 rows (one-hot from class indices)",
    "SoftMarginLoss": "binary: logistic loss on a score vs labels ±1 (0 labels become -1)",
    "MSELoss": "regression: mean squared error (L2)",
    "L1Loss": "regression: mean absolute error",
    "SmoothL1Loss": "regression: L1 with a quadratic zone below beta (less hurt by outliers)",
    "HuberLoss": "regression: quadratic below delta, linear above",
    "PoissonNLLLoss": "regression of counts: the output is the log rate (log_input) vs counts",
    "KLDivLoss": "classification: KL divergence of the softmax of the logits from the target distribution",
}


def _loss_classes() -> dict[str, type]:
    """Every torch.nn loss class by name (those of torch.nn.modules.loss plus AdaptiveLogSoftmaxWithLoss)."""
    return {
        n: c
        for n, c in vars(nn).items()
        if inspect.isclass(c) and n.endswith("Loss") and issubclass(c, nn.Module)
    }


def _fallback(name: str) -> Entry | None:
    """'mse', 'cross_entropy', 'bce_with_logits', 'MarginRankingLoss', ... -> the torch.nn class."""
    wanted = name.lower().replace("_", "").removesuffix("loss")
    for cls_name, cls in _loss_classes().items():
        if cls_name.lower().removesuffix("loss") == wanted:
            return Entry(cls_name, cls, _DESCRIPTIONS.get(cls_name, REFUSED.get(cls_name, "")))
    return None


LOSSES.register(
    "auto", "CrossEntropyLoss (classification), BCEWithLogitsLoss (binary) or MSELoss (regression)"
)(lambda task="classification", **kwargs: getattr(nn, AUTO[task])(**kwargs))
for _name, _text in _DESCRIPTIONS.items():
    LOSSES.add(_name, getattr(nn, _name), _text)
LOSSES.fallback = _fallback
LOSSES.extra_names = lambda: sorted(set(_loss_classes()) - set(LOSSES.names()))


class TargetAdapter(nn.Module):
    """`criterion(output, target)` after adapting both to what `criterion` needs (`adapt`, see above)."""

    def __init__(self, criterion: Callable[..., torch.Tensor], adapt: str | None):
        super().__init__()
        self.criterion = criterion if isinstance(criterion, nn.Module) else _Function(criterion)
        self.adapt = adapt

    def extra_repr(self) -> str:
        return f"adapt={self.adapt!r}"

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.adapt is not None:
            output, target = getattr(self, "_" + self.adapt)(output, target)
        return self.criterion(output, target)

    # Each adaptation: (output, target) as the loader and the model give them -> as the loss needs them.
    @staticmethod
    def _class_index(output, target):
        if target.is_floating_point() and target.shape == output.shape:
            return output, target  # class probabilities (CrossEntropyLoss accepts them)
        if target.dim() == output.dim() and target.shape[-1] == 1:
            target = target.squeeze(-1)  # (B, 1) -> (B,)
        return output, target.long()

    @staticmethod
    def _label_list(output, target):
        if target.shape == output.shape:
            return output, target.long()
        rows = torch.full(output.shape, -1, dtype=torch.long, device=target.device)
        rows[:, 0] = target.reshape(-1).long()  # the one true class, then -1 ends the list
        return output, rows

    @staticmethod
    def _matching(output, target):
        """A float target of the output's shape: (B,) -> (B, 1); class indices -> one-hot rows."""
        if target.shape != output.shape:
            if target.numel() == output.numel():
                target = target.reshape(output.shape)
            elif not target.is_floating_point() and output.dim() == 2 and target.numel() == output.shape[0]:
                target = F.one_hot(target.reshape(-1).long(), output.shape[1])
            else:
                raise ConfigError(
                    f"loss: the model's output has shape {tuple(output.shape)} but the target has shape "
                    f"{tuple(target.shape)}; the last layer must give one value per target"
                )
        return target.to(output.dtype)

    def _binary(self, output, target):
        return output, self._matching(output, target)

    def _sign(self, output, target):
        target = self._matching(output, target)
        return output, torch.where(target == 0, -torch.ones_like(target), target)  # 0/1 -> -1/+1

    def _value(self, output, target):
        if target.numel() == output.numel() and target.shape != output.shape:
            return output.reshape(target.shape), target.to(output.dtype)  # (B, 1) output vs (B,) target
        return output, self._matching(output, target)

    def _distribution(self, output, target):
        if output.dim() == 2 and output.shape[1] == 1:  # one binary logit x: P = [1 - σ(x), σ(x)]
            log_probs = torch.cat([F.logsigmoid(-output), F.logsigmoid(output)], dim=1)
            p = target.reshape(-1, 1).to(output.dtype)
            return log_probs, torch.cat([1 - p, p], dim=1)
        return F.log_softmax(output, dim=1), self._matching(output, target)


class _Function(nn.Module):
    """A user's loss function as a module."""

    def __init__(self, fn: Callable[..., torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.fn(output, target)


def _tensor_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """YAML lists for class weights (`weight: [1, 3]`, `pos_weight: 2`) become float tensors."""
    out = dict(kwargs)
    for key in ("weight", "pos_weight"):
        if key in out and out[key] is not None and not isinstance(out[key], torch.Tensor):
            out[key] = torch.tensor(out[key], dtype=torch.float32).reshape(-1)
    return out


def build_loss(cfg: LossConfig, task: str) -> nn.Module:
    """The loss `cfg` names, as a module `(output, target) -> loss` adapted to `task`'s targets."""
    name, kwargs = cfg.name, cfg.kwargs()
    if name == "auto":
        name = AUTO[task]
    entry = LOSSES.entry(name, "loss.name")
    if ":" in name:  # a user's class (built with its kwargs) or function (kwargs bound): no adaptation
        kwargs = check_kwargs(entry.factory, kwargs, "loss")
        if inspect.isclass(entry.factory):
            return TargetAdapter(_build(entry.factory, kwargs, name), None)
        return TargetAdapter(functools.partial(entry.factory, **kwargs) if kwargs else entry.factory, None)
    cls_name = entry.name
    if cls_name in REFUSED:
        raise ConfigError(
            f"loss.name: {cls_name} needs {REFUSED[cls_name]}, not one (prediction, target) pair "
            f"per batch, so it cannot train this model directly. Write a custom loss "
            f'`loss.name: "my_losses:MyLoss"` (a module:attr class or function taking '
            f"(output, target)) that builds those inputs."
        )
    adapt = ADAPT.get(cls_name)
    if adapt is None:
        raise ConfigError(
            f"loss.name: trainlab does not know how to feed {cls_name}; use a custom `module:attr` loss"
        )
    if task not in TASKS[adapt]:
        hint = (
            {
                "binary": "a binary task has one output (a logit); use BCEWithLogitsLoss (the default) "
                "or set `task: classification` for one output per class",
                "regression": "a regression task has real-valued targets; use MSELoss, L1Loss or HuberLoss",
            }[task]
            if task in ("binary", "regression")
            else ""
        )
        raise ConfigError(
            f"loss.name: {cls_name} needs {' or '.join(TASKS[adapt])} targets, but the task is "
            f"{task!r}: {hint}"
        )
    kwargs = check_kwargs(entry.factory, kwargs, "loss")
    reductions = ("mean", "sum", "none", *(("batchmean",) if cls_name == "KLDivLoss" else ()))
    if kwargs.get("reduction", "mean") not in reductions:  # torch would only notice at the first step
        raise ConfigError(
            f"loss.reduction: {kwargs['reduction']!r} is not a reduction"
            f"{did_you_mean(str(kwargs['reduction']), reductions)}; use one of {', '.join(reductions)}"
        )
    if cls_name == "KLDivLoss":
        kwargs.setdefault("reduction", "batchmean")  # "mean" averages over classes too: not the KL divergence
    return TargetAdapter(_build(entry.factory, _tensor_kwargs(kwargs), cls_name), adapt)


def _build(cls: type, kwargs: dict[str, Any], name: str) -> nn.Module:
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(
            f"loss: {name}({', '.join(f'{k}={short(v)}' for k, v in kwargs.items())}) failed: {str(e)[:300]}"
        ) from None
