"""The loss flowchart: why is my model not good?

    training loss large?  -- yes --> above the constant baseline, a shallower model better, or
          |                          vanishing/exploding gradients? -- yes --> optimization
          |                                                   \\-- no --> model bias
          no
          |
    validation loss large? -- no --> ok
          |
          yes --> held-out loss from the training distribution large too? -- yes --> overfitting
                  (at least halfway to the validation loss)        \\-- no (≈ train) --> mismatch

"Large" training loss is judged against a trivial baseline (predicting the training mean, or the
class prior), so the verdict does not depend on the loss's units. A validation loss is "large"
when it is well above the training loss (a generalisation gap), in baseline units.

A training loss above that baseline is always an optimization failure: a model with an output bias
can predict the constant, so no model is too simple to reach it. Without a shallower model to
compare, gradient health flags (vanishing or exploding gradients) also point to optimization;
only with neither does a large training loss read as model bias.
"""

from __future__ import annotations

import math
from typing import Any

import torch

VERDICTS = (
    "ok",
    "model_bias",
    "optimization",
    "overfitting",
    "mismatch",
    "overfitting_or_mismatch",
    "numerical_failure",
)

NEXT_STEPS = {
    "ok": [
        "Nothing is wrong by the flowchart: try a larger model or more data only if you need a lower loss."
    ],
    "model_bias": [
        "Make the model more flexible: more hidden units or layers, better input features.",
        "Check the inputs carry the information the target needs (feature columns, preprocessing).",
        "Run `trainlab doctor RUN_DIR --compare-shallow` to rule out an optimization issue.",
    ],
    "optimization": [
        "Use an adaptive optimizer (Adam) or momentum, and find a learning rate with `trainlab lr-find`.",
        "Use ReLU-family activations, normalisation layers or residual connections in deep models.",
        "Look at the gradient-health flags: vanishing gradients stall the first layers.",
    ],
    "overfitting": [
        "Get more training data or use data augmentation.",
        "Constrain the model: fewer parameters, weight sharing, weight decay, dropout.",
        "Stop early: keep the checkpoint with the best validation loss.",
    ],
    "mismatch": [
        "The validation data come from a different distribution than the training data:",
        "more of the same training data will not help; collect training data like the validation data.",
        "Check the split: a time- or range-based split puts unseen regions into validation.",
    ],
    "overfitting_or_mismatch": [
        "Hold out part of the training data (data.val_fraction) to tell overfitting from mismatch.",
        "If it is overfitting: more data, augmentation, a smaller or regularised model, early stopping.",
        "If it is mismatch: make the training data resemble the validation data.",
    ],
    "numerical_failure": [
        "Lower the learning rate (try `trainlab lr-find`) or clip gradients (train.grad_clip).",
        "Check the data for NaN/Inf values and the loss for log(0) (use logits + a fused loss).",
        "If training in mixed precision, try float32.",
    ],
}


def baseline_loss(task: str, train_targets: torch.Tensor) -> float:
    """The loss of the best constant prediction, from the training targets alone.

    regression: MSE of predicting the mean (= the targets' variance, averaged over outputs);
    classification: cross-entropy of the class prior (= its entropy, in nats);
    binary: binary cross-entropy of the positive rate.
    """
    y = torch.as_tensor(train_targets)
    if task == "regression":
        y = y.double().reshape(len(y), -1)
        return float(((y - y.mean(0)) ** 2).mean())
    if task == "classification":
        counts = torch.bincount(y.long().reshape(-1)).double()
        p = counts[counts > 0] / counts.sum()
        return float(-(p * p.log()).sum())
    if task == "binary":
        q = float(y.double().mean())
        if q in (0.0, 1.0):
            return 0.0
        return -(q * math.log(q) + (1 - q) * math.log(1 - q))
    raise ValueError(f"unknown task {task!r}")


def _curve(history: list[dict], split: str) -> list[float]:
    """The `loss` of each epoch's row of one split, in epoch order (the last row of an epoch wins)."""
    by_epoch: dict[int, float] = {}
    for row in history:
        # epoch rows only: metrics.jsonl also holds "kind": "step" rows (running losses every N steps)
        if row.get("split") == split and row.get("loss") is not None and row.get("kind", "epoch") == "epoch":
            by_epoch[int(row.get("epoch", len(by_epoch)))] = float(row["loss"])
    return [by_epoch[e] for e in sorted(by_epoch)]


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _times(ratio: float) -> str:
    """A loss ratio for a sentence: '85% of' below 10, '718×' from there."""
    return f"{ratio:.0%} of" if ratio < 10 else f"{ratio:.3g}×"


def verdict(
    history: list[dict],
    baseline_loss: float,
    shallow: dict | None = None,
    holdout: dict | None = None,
    diverged: bool = False,
    gradient_health: dict | None = None,
    large: float = 0.3,
    gap: float = 0.1,
) -> dict[str, Any]:
    """Walk the flowchart on a run's per-epoch rows (as in metrics.jsonl).

    shallow: {"loss": final training loss of a shallower model trained for the same budget, ...}.
    holdout: {"loss": loss on held-out data from the training distribution, ...}.
    gradient_health: the result of `gradients.gradient_health` (its flags and messages).
    large: training loss above `large` × baseline counts as large.
    gap: validation (or held-out) loss above the training loss by more than `gap` × baseline, and
    by more than 2×, counts as large.
    """
    train, val = _curve(history, "train"), _curve(history, "val")
    numbers: dict[str, Any] = {"baseline_loss": baseline_loss}
    if train:
        numbers["train_loss"] = min(train)  # what the model reached on the training data
        numbers["train_loss_final"] = train[-1]
    if val:
        numbers.update(val_loss_final=val[-1], val_loss_best=min(val), val_best_epoch=val.index(min(val)) + 1)
    if shallow is not None:
        numbers["shallow_train_loss"] = float(shallow["loss"])
    if holdout is not None:
        numbers["holdout_loss"] = float(holdout["loss"])

    def out(name: str, explanation: str) -> dict[str, Any]:
        return {
            "verdict": name,
            "explanation": explanation,
            "next_steps": list(NEXT_STEPS[name]),
            "numbers": numbers,
        }

    losses = train + val + [numbers.get("shallow_train_loss", 0.0), numbers.get("holdout_loss", 0.0)]
    if diverged or not all(math.isfinite(x) for x in losses):
        return out(
            "numerical_failure",
            "The loss became NaN or infinite: the run diverged numerically, "
            "so the curves say nothing about the model.",
        )
    if not train:
        raise ValueError("the history has no training loss rows (split 'train')")
    base = max(baseline_loss, 1e-12)
    train_loss = numbers["train_loss"]
    numbers["train_ratio"] = train_loss / base

    def is_gap(loss: float) -> bool:
        return loss > 2 * train_loss and loss - train_loss > gap * base

    if train_loss > large * base:
        head = (
            f"The training loss ({_fmt(train_loss)}) is large: {_times(numbers['train_ratio'])} what "
            f"predicting a constant achieves ({_fmt(baseline_loss)}). "
        )
        flags = (gradient_health or {}).get("flags", {})
        bad_gradients = (
            [
                m
                for m in (gradient_health or {}).get("messages", [])
                if m.startswith(("vanishing", "exploding"))
            ]
            if flags.get("vanishing") or flags.get("exploding")
            else []
        )
        evidence = (" The gradient health agrees: " + " ".join(bad_gradients)) if bad_gradients else ""
        shallow_better = shallow is not None and numbers["shallow_train_loss"] < train_loss * 0.9
        if shallow_better:
            evidence = (
                f" A shallower model reached a lower training loss ({_fmt(numbers['shallow_train_loss'])}) "
                "with the same budget." + evidence
            )
        if train_loss > base:
            far = numbers["train_ratio"] > 2
            result = out(
                "optimization",
                head
                + (
                    "Any model with an output bias can predict that constant, "
                    "so the model is not too simple: "
                    + (
                        "the optimizer made the loss far worse than not training at all (an optimization "
                        "failure; most often too large a learning rate)."
                        if far
                        else "training got nowhere (an optimization failure)."
                    )
                    + evidence
                ),
            )
            if far:
                result["next_steps"].insert(
                    0,
                    "Lower the learning rate (`trainlab lr-find` suggests one) or clip gradients "
                    "(train.grad_clip): the loss ended far above the constant baseline.",
                )
            return result
        if shallow_better:
            return out(
                "optimization",
                head
                + evidence.lstrip()
                + (
                    " The deeper model can represent everything the shallower one can, "
                    "so it is not too simple: the optimizer failed to find its good "
                    "weights (an optimization issue)."
                ),
            )
        if shallow is None and bad_gradients:
            return out(
                "optimization",
                head
                + (
                    "Its gradients are unhealthy: "
                    + " ".join(bad_gradients)
                    + " Layers that barely receive (or are swamped by) "
                    "gradient do not train, so the model's capacity is not used: "
                    "most likely an optimization issue, not a model that is too simple (--compare-shallow "
                    "trains a shallower model to confirm)."
                ),
            )
        tail = (
            "A shallower model did no better, so "
            if shallow is not None
            else "The gradients look healthy and no shallower model was compared (--compare-shallow), "
            "so an optimization issue is not ruled out, but most likely "
        )
        return out(
            "model_bias",
            head
            + tail
            + "the model is too simple to fit the data (model bias): no setting of its weights fits well.",
        )

    ok_head = (
        f"The training loss is small ({_fmt(train_loss)}, {numbers['train_ratio']:.0%} of the "
        f"constant-prediction baseline {_fmt(baseline_loss)}). "
    )
    if not val:
        return out("ok", ok_head + "There is no validation loss to check generalisation against.")
    val_loss = numbers["val_loss_best"]
    if not is_gap(val_loss):
        return out(
            "ok",
            ok_head
            + f"The validation loss ({_fmt(val_loss)}) is close to it: the model fits and generalises.",
        )
    head = (
        ok_head
        + f"The validation loss is much larger ({_fmt(val_loss)} at best, {_fmt(val[-1])} at the end). "
    )
    if holdout is not None:
        # Which explains the gap? Held-out loss at least halfway from the training loss to the
        # validation loss: the model does not generalise even within its own distribution.
        h = numbers["holdout_loss"]
        if is_gap(h) and h - train_loss >= 0.5 * (val_loss - train_loss):
            return out(
                "overfitting",
                head
                + (
                    "Held-out data from the training distribution is also poorly predicted "
                    f"({_fmt(numbers['holdout_loss'])}): the model memorised its training samples instead of "
                    "learning the pattern (overfitting)."
                ),
            )
        return out(
            "mismatch",
            head
            + (
                "Yet held-out data from the training distribution is predicted about as well as the "
                f"training data ({_fmt(h)}): the validation data follow a different distribution (mismatch)."
                + (" Part of the gap is overfitting too." if is_gap(h) else "")
            ),
        )
    # No held-out set: a validation loss that rose well above its best while the training loss kept
    # falling is the classic overfitting curve; otherwise the two cannot be told apart.
    rose = (
        val[-1] > 1.5 * val_loss
        and numbers["val_best_epoch"] < len(val)
        and train[-1] <= train[min(numbers["val_best_epoch"], len(train)) - 1]
    )
    if rose:
        return out(
            "overfitting",
            head
            + (
                f"The validation loss was lowest at epoch {numbers['val_best_epoch']} and rose afterwards "
                "while the training loss kept falling: the model started memorising the "
                "training samples (overfitting)."
            ),
        )
    return out(
        "overfitting_or_mismatch",
        head
        + (
            "This is overfitting or a mismatch between training and validation data; "
            "a held-out set drawn from the training data would tell them apart."
        ),
    )
