"""Matplotlib PNG writers for a run directory, and `write_plots(run_dir)` that writes every one that applies.

Each `plot_*` function takes plain arrays or metric rows and a path, draws one figure and saves it.
Figures are `matplotlib.figure.Figure` objects (rendered by Agg when saved as PNG), never pyplot's
global figures, so plotting leaves no state behind in a notebook or a long-running process.
The run-directory files themselves are read by `trainlab.report.rundir`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    auc,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_curve,
)

from trainlab.report.rundir import RunFiles, epoch_rows, metric_names, read_run, step_rows

# name -> caption, in the order the report shows them
CAPTIONS = {
    "loss": "Loss per epoch (train vs val) and per step (EMA-smoothed, raw in the background). "
    "Val loss rising while train loss falls is overfitting.",
    "metrics": "Each metric per epoch, train vs val.",
    "lr": "Learning rate over the optimizer steps (the schedule).",
    "confusion_matrix": "Confusion matrix on the {split} split: counts, "
    "and normalised by true class (rows sum to 1).",
    "roc": "ROC curves with AUC on the {split} split (one-vs-rest for more than two classes).",
    "precision_recall": "Precision and recall of each class on the {split} split.",
    "misclassified": "Misclassified {split} images: true and predicted labels.",
    "regression": "Predicted vs true values, and residuals (true - predicted), on the {split} split.",
    "fitted_curve": "The fitted model over the one input feature ({split} split).",
    "conv_kernels": "First convolution layer's kernels, one image per output channel.",
    "layer_norms": "Weight norm and gradient norm of each layer over training.",
}
DPI = 100


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write a figure as PNG (creating the folder) and close it; for plots made outside this module."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = _save(fig, path)
    plt.close(fig)
    return path


def ema(values: Sequence[float], smoothing: float = 0.9) -> np.ndarray:
    """Exponential moving average, debiased like TensorBoard's smoothing slider (so it starts at the data)."""
    out, avg = np.empty(len(values)), 0.0
    for i, v in enumerate(values):
        avg = smoothing * avg + (1 - smoothing) * v
        out[i] = avg / (1 - smoothing ** (i + 1))
    return out


def smooth_centred(values: Sequence[float], smoothing: float = 0.9) -> np.ndarray:
    """A centred moving average: no lag, where a one-way EMA trails a falling loss by
    smoothing/(1-smoothing) points (9 at 0.9: ~100 steps at a log interval of 10). The window has
    the EMA's span (2·9+1 points at 0.9) and shrinks symmetrically at the ends, so that every
    point stays at the centre of its window (a straight line is left exactly as it is)."""
    y = np.asarray(values, dtype=float)
    n = len(y)
    half = np.minimum(np.minimum(np.arange(n), n - 1 - np.arange(n)), round(smoothing / (1 - smoothing)))
    sums = np.concatenate([[0.0], np.cumsum(y)])
    i = np.arange(n)
    return (sums[i + half + 1] - sums[i - half]) / (2 * half + 1)


# ----------------------------------------------------------------------------- training curves


def plot_loss_curves(rows: list[dict[str, Any]], path: Path, smoothing: float = 0.9) -> Path:
    """Left: loss per epoch for each split. Right: step-level train loss, raw and smoothed (if logged)."""
    steps = [r for r in step_rows(rows) if _num(r.get("loss"))]
    fig = Figure(figsize=(11 if steps else 6, 4))
    axes = fig.subplots(1, 2 if steps else 1, squeeze=False)[0]
    for split, series in _by_split(epoch_rows(rows), "loss").items():
        axes[0].plot(*series, marker="o", ms=3, label=split)
    axes[0].set(title="loss per epoch", xlabel="epoch", ylabel="loss")
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend()
    if steps:
        x = [r["step"] for r in steps]
        y = [r["loss"] for r in steps]
        axes[1].plot(x, y, color="tab:blue", alpha=0.25, lw=1, label="train (raw)")
        axes[1].plot(
            x, smooth_centred(y, smoothing), color="tab:blue", lw=2, label="train (smoothed, no lag)"
        )
        axes[1].set(title="train loss per step", xlabel="step", ylabel="loss")
        axes[1].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_metrics(rows: list[dict[str, Any]], path: Path) -> Path:
    """One panel per metric (accuracy, f1, auroc, mse, ...), one line per split, over epochs."""
    epochs = epoch_rows(rows)
    names = metric_names(epochs)
    ncols = min(3, len(names))
    nrows = -(-len(names) // ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.3 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        for split, series in _by_split(epochs, name).items():
            ax.plot(*series, marker="o", ms=3, label=split)
        ax.set(title=name, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    return _save(fig, path)


def plot_lr(rows: list[dict[str, Any]], path: Path) -> Path:
    """LR against the step (step rows carry it every log interval; epoch rows otherwise)."""
    x_key = "step"
    pts = [(r["step"], r["lr"]) for r in step_rows(rows) if _num(r.get("lr"))]
    if not pts:
        train = [r for r in epoch_rows(rows) if r.get("split", "train") == "train" and _num(r.get("lr"))]
        x_key = "step" if all(_num(r.get("step")) for r in train) else "epoch"
        pts = [(r[x_key], r["lr"]) for r in train]
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot(*zip(*pts), marker="." if len(pts) < 50 else None)
    ax.set(title="learning rate", xlabel=x_key, ylabel="lr")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_layer_norms(rows: list[dict[str, Any]], path: Path, max_legend: int = 12) -> Path:
    """Per-layer weight norm and gradient norm over training (log scale: layers differ by decades)."""
    x_key = "step" if all(_num(r.get("step")) for r in rows) else "epoch"
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, key in zip(axes, ("weight_norm", "grad_norm")):
        for layer in layers:
            pts = [
                (r[x_key], r[key]) for r in rows if r["layer"] == layer and _num(r.get(key)) and r[key] > 0
            ]
            if pts:
                ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None, label=layer)
        # gradients span decades between layers (log); weight norms change by percents (linear)
        ax.set(title=key.replace("_", " "), xlabel=x_key, yscale="log" if key == "grad_norm" else "linear")
        ax.grid(alpha=0.3, which="both")
    if len(layers) <= max_legend:
        axes[1].legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)


# ----------------------------------------------------------------------------- classification


def plot_confusion_matrix(
    target: np.ndarray, pred: np.ndarray, class_names: Sequence[str], path: Path
) -> Path:
    return _save(confusion_matrix_figure(target, pred, class_names), path)


def confusion_matrix_figure(target: np.ndarray, pred: np.ndarray, class_names: Sequence[str]) -> Figure:
    """Counts (left) and row-normalised rates (right); numbers are written in the cells up to 20 classes."""
    labels = np.arange(len(class_names))
    n = len(labels)
    size = min(max(4.5, 0.45 * n), 14)  # inches per panel; 100 classes still fit a screen
    fig = Figure(figsize=(2 * size + 1, size), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, normalize, fmt, title in (
        (axes[0], None, "d", "counts"),
        (axes[1], "true", ".2f", "normalised by true class"),
    ):
        cm = confusion_matrix(target, pred, labels=labels, normalize=normalize)
        disp = ConfusionMatrixDisplay(cm, display_labels=list(class_names))
        disp.plot(
            ax=ax,
            colorbar=False,
            include_values=n <= 20,
            values_format=fmt,
            cmap="Blues",
            xticks_rotation=45 if n > 5 else "horizontal",
        )
        ax.set_title(title)
        if n > 30:
            ax.tick_params(labelsize=max(3, 9 - n // 15))
    return fig


def plot_roc(
    target: np.ndarray, output: np.ndarray, class_names: Sequence[str], path: Path, max_curves: int = 10
) -> Path:
    """Binary: one curve of P(class 1). Multi-class:
    one-vs-rest per class (first `max_curves`) plus micro-average."""
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    if output.ndim == 1:  # binary: output is P(class 1), shape (N,)
        fpr, tpr, _ = roc_curve(target, output)
        ax.plot(fpr, tpr, lw=2, label=f"{class_names[-1]} (AUC = {auc(fpr, tpr):.3f})")
    else:  # (N, C) probabilities: each class against the rest
        onehot = np.eye(output.shape[1])[target.astype(int)]  # (N, C)
        for c in range(min(output.shape[1], max_curves)):
            if 0 < onehot[:, c].sum() < len(target):  # ROC needs both positives and negatives
                fpr, tpr, _ = roc_curve(onehot[:, c], output[:, c])
                ax.plot(fpr, tpr, lw=1, label=f"{class_names[c]} (AUC = {auc(fpr, tpr):.3f})")
        fpr, tpr, _ = roc_curve(onehot.ravel(), output.ravel())
        ax.plot(fpr, tpr, "k--", lw=2, label=f"micro-average (AUC = {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls=":")
    ax.set(
        xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.02)
    )
    ax.legend(fontsize="small", loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_precision_recall(
    target: np.ndarray, pred: np.ndarray, class_names: Sequence[str], path: Path
) -> Path:
    """Grouped bars: precision and recall of each class (sklearn, zero where a class is never predicted)."""
    labels = np.arange(len(class_names))
    precision, recall, _, support = precision_recall_fscore_support(
        target, pred, labels=labels, zero_division=0
    )
    fig = Figure(figsize=(min(max(6, 0.5 * len(labels) + 2), 20), 4))
    ax = fig.subplots()
    ax.bar(labels - 0.2, precision, width=0.4, label="precision")
    ax.bar(labels + 0.2, recall, width=0.4, label="recall")
    ax.set_xticks(
        labels,
        [f"{n}\n(n={s})" for n, s in zip(class_names, support)] if len(labels) <= 12 else list(class_names),
        rotation=0 if len(labels) <= 12 else 90,
        fontsize="small",
    )
    ax.set(ylim=(0, 1.05), title="precision and recall per class")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: bars near 1 stay visible
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def plot_misclassified(
    images: np.ndarray, true: np.ndarray, pred: np.ndarray, class_names: Sequence[str], path: Path
) -> Path:
    """A grid of (M, C, H, W) images, each labelled 'true → pred'. Each image is min-max scaled for display,
    because inputs are usually normalised (mean 0, std 1) rather than in [0, 1]."""
    imgs = np.asarray(images, dtype=np.float32)
    lo = imgs.min(axis=(1, 2, 3), keepdims=True)
    imgs = (imgs - lo) / np.maximum(imgs.max(axis=(1, 2, 3), keepdims=True) - lo, 1e-12)
    tiles = (
        imgs.transpose(0, 2, 3, 1) if imgs.shape[1] == 3 else imgs.mean(axis=1)
    )  # (M, H, W, 3) or (M, H, W)
    labels = [f"{_name(class_names, t)} → {_name(class_names, p)}" for t, p in zip(true, pred)]
    fig = _image_grid(tiles, labels, cmap="gray", vmin=0, vmax=1, label_color="tab:red", tile_inches=1.5)
    return _save(fig, path)


def plot_conv_kernels(weights: np.ndarray, path: Path, max_kernels: int = 64) -> Path:
    """(out, in, kh, kw) kernels as images: RGB when in == 3, else the mean over input channels (exact for
    in == 1). Each kernel is scaled to its own range; gray kernels use a diverging map (red +, blue -)."""
    w = np.asarray(weights, dtype=np.float32)[:max_kernels]
    if w.shape[1] == 3:
        lo = w.min(axis=(1, 2, 3), keepdims=True)
        tiles = ((w - lo) / np.maximum(w.max(axis=(1, 2, 3), keepdims=True) - lo, 1e-12)).transpose(
            0, 2, 3, 1
        )
    else:
        k = w.mean(axis=1)  # (out, kh, kw)
        tiles = k / np.maximum(np.abs(k).max(axis=(1, 2), keepdims=True), 1e-12)  # in [-1, 1], sign kept
    title = (
        f"first conv layer: {weights.shape[0]} kernels of "
        f"{weights.shape[1]}x{weights.shape[2]}x{weights.shape[3]}"
    )
    fig = _image_grid(
        tiles, [str(i) for i in range(len(w))], cmap="RdBu_r", vmin=-1, vmax=1, tile_inches=0.9, title=title
    )
    return _save(fig, path)


def _image_grid(
    tiles: np.ndarray,
    labels: list[str],
    cmap: str,
    vmin: float,
    vmax: float,
    label_color: str = "black",
    tile_inches: float = 1.5,
    ncols: int = 8,
    title: str | None = None,
) -> Figure:
    """Tiles (M, H, W) or (M, H, W, 3) pasted into one mosaic drawn by a single imshow, with a label above
    each tile: one axes instead of M keeps a 64-image grid fast to draw. A `title` gets a band of its
    own above the mosaic (a suptitle over a full-figure axes sat on the first row's labels)."""
    m, h, w = tiles.shape[:3]
    ncols = min(ncols, m)
    nrows = -(-m // ncols)
    pad_x, pad_top = max(1, w // 8), max(2, int(h * 0.45))  # room between tiles and for the labels
    cell_h, cell_w = h + pad_top, w + pad_x
    mosaic = np.full((nrows * cell_h, ncols * cell_w) + tiles.shape[3:], np.nan, dtype=np.float32)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, ncols)
        mosaic[r * cell_h + pad_top : (r + 1) * cell_h, c * cell_w : c * cell_w + w] = tile
    if mosaic.ndim == 3:
        mosaic = np.nan_to_num(mosaic, nan=1.0)  # RGB padding: white
    grid_inches = tile_inches * nrows * cell_h / cell_w
    title_inches = 0.35 if title else 0.0
    fig = Figure(figsize=(tile_inches * ncols, grid_inches + title_inches))
    ax = fig.add_axes((0, 0, 1, grid_inches / (grid_inches + title_inches)))
    if title:
        fig.text(
            0.5,
            1 - 0.5 * title_inches / (grid_inches + title_inches),
            title,
            ha="center",
            va="center",
            fontsize="large",
        )
    colormap = matplotlib.colormaps[cmap].with_extremes(bad="white")  # NaN padding: white
    ax.imshow(mosaic, cmap=colormap, vmin=vmin, vmax=vmax, interpolation="nearest")
    for i, label in enumerate(labels):
        r, c = divmod(i, ncols)
        ax.text(
            c * cell_w + w / 2 - 0.5,
            r * cell_h + pad_top - 1,
            label,
            ha="center",
            va="bottom",
            fontsize=8,
            color=label_color,
        )
    ax.axis("off")
    return fig


# ---------------------------------------------------------------------------- regression and one-feature data


def plot_regression(target: np.ndarray, output: np.ndarray, path: Path) -> Path:
    """Predicted against true (the diagonal is perfect)
    and residuals against predicted (should be flat noise).
    With k outputs per sample all k are drawn together."""
    y, yhat = target.reshape(len(target), -1).ravel(), output.reshape(len(output), -1).ravel()
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    axes = fig.subplots(1, 2)
    axes[0].scatter(y, yhat, s=10, alpha=0.6)
    lo, hi = float(min(y.min(), yhat.min())), float(max(y.max(), yhat.max()))
    axes[0].plot([lo, hi], [lo, hi], "k--", lw=1, label="predicted = true")
    axes[0].set(xlabel="true", ylabel="predicted", title="predicted vs true")
    axes[0].legend()
    axes[1].scatter(yhat, y - yhat, s=10, alpha=0.6)
    axes[1].axhline(0, color="k", ls="--", lw=1)
    axes[1].set(xlabel="predicted", ylabel="residual (true - predicted)", title="residuals")
    for ax in axes:
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_fitted_curve(
    inputs: np.ndarray, target: np.ndarray, output: np.ndarray, task: str, path: Path
) -> Path:
    """One input feature: the data as points and the model's output as a curve over x. For a binary
    classifier the curve is P(y=1 | x) with the 0.5 decision line (the logistic-regression plot)."""
    x = inputs.reshape(len(inputs), -1)[:, 0]
    order = np.argsort(x)
    yhat = output.reshape(len(output), -1)[:, 0]
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    ax.scatter(x, target.reshape(len(target), -1)[:, 0], s=14, alpha=0.6, label="data")
    if task == "binary":
        ax.plot(x[order], yhat[order], color="tab:red", lw=2, label="P(y = 1 | x)")
        ax.axhline(0.5, color="k", ls="--", lw=1, label="0.5 threshold")
        ax.set(ylabel="y / probability", ylim=(-0.05, 1.05))
    else:
        ax.plot(x[order], yhat[order], color="tab:red", lw=2, label="model")
        ax.set(ylabel="y")
    ax.set(xlabel="x", title="fitted model over the data")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


# ----------------------------------------------------------------------------- the run directory


def write_plots(run_dir: Path, skipped: dict[str, str] | None = None) -> dict[str, Path]:
    """Write every plot that applies to `run_dir` into `run_dir/plots/` and return {name: path}.
    A plot whose input is missing is skipped; pass a dict as `skipped` to learn why ({name: one line})."""
    run = read_run(Path(run_dir))
    out_dir = run.path / "plots"
    skipped = {} if skipped is None else skipped
    written: dict[str, Path] = {}
    for name, (reason, draw) in _plan(run).items():
        if reason:
            skipped[name] = reason
            continue
        try:
            written[name] = draw(out_dir / f"{name}.png")
        except Exception as e:  # one odd array must not cost the run its other plots and its report
            warnings.warn(f"plot {name!r} failed: {type(e).__name__}: {e}", stacklevel=2)
            skipped[name] = f"drawing it failed ({type(e).__name__}: {e})"
    return written


def _plan(run: RunFiles) -> dict[str, tuple[str | None, Any]]:
    """{plot name: (why it is skipped or None, function of the path that draws it)}."""
    rows, preds, split = run.metrics, run.predictions, run.prediction_split
    no_preds = "no predictions/val.npz or predictions/test.npz in the run directory"
    plan: dict[str, tuple[str | None, Any]] = {}

    plan["loss"] = (
        None if any(_num(r.get("loss")) for r in rows) else "metrics.jsonl is missing or has no loss values",
        lambda p: plot_loss_curves(rows, p),
    )
    plan["metrics"] = (
        None if metric_names(epoch_rows(rows)) else "metrics.jsonl has no metrics besides the loss",
        lambda p: plot_metrics(rows, p),
    )
    plan["lr"] = (
        None if any(_num(r.get("lr")) for r in rows) else "metrics.jsonl has no lr values",
        lambda p: plot_lr(rows, p),
    )

    classifier = run.task in ("classification", "binary")
    for name in ("confusion_matrix", "roc", "precision_recall"):
        reason = no_preds if preds is None else None if classifier else f"not a classifier (task: {run.task})"
        plan[name] = (reason, None)
    if plan["confusion_matrix"][0] is None:
        target, output, names = preds["target"].astype(int), preds["output"], run.class_names
        pred = run.predicted_classes()
        plan["confusion_matrix"] = (None, lambda p: plot_confusion_matrix(target, pred, names, p))
        plan["roc"] = (None, lambda p: plot_roc(target, output, names, p))
        plan["precision_recall"] = (None, lambda p: plot_precision_recall(target, pred, names, p))

    images = run.misclassified_images()
    plan["misclassified"] = (
        None
        if images is not None
        else no_preds
        if preds is None
        else f"the {split} predictions hold no misclassified images (not image "
        "data, or nothing misclassified)",
        lambda p: plot_misclassified(*images, run.class_names, p),
    )
    plan["regression"] = (
        no_preds
        if preds is None
        else None
        if run.task == "regression"
        else f"not a regression (task: {run.task})",
        lambda p: plot_regression(preds["target"], preds["output"], p),
    )
    one_feature = (
        preds is not None
        and "inputs" in preds
        and preds["inputs"].reshape(len(preds["inputs"]), -1).shape[1] == 1
    )
    plan["fitted_curve"] = (
        no_preds
        if preds is None
        else "the data has more than one input feature"
        if not one_feature
        else None
        if run.task in ("binary", "regression")
        else f"only drawn for binary and regression tasks (task: {run.task})",
        lambda p: plot_fitted_curve(preds["inputs"], preds["target"], preds["output"], run.task, p),
    )
    kernels = run.conv_kernels()
    plan["conv_kernels"] = (
        None if kernels is not None else "the model has no convolution layer (or no model.safetensors)",
        lambda p: plot_conv_kernels(kernels, p),
    )
    plan["layer_norms"] = (
        None if run.layer_stats else "no layer_stats.jsonl in the run directory",
        lambda p: plot_layer_norms(run.layer_stats, p),
    )
    return plan


def caption(name: str, run: RunFiles | None = None) -> str:
    return CAPTIONS[name].format(split=run.prediction_split if run else "val")


def _by_split(rows: list[dict[str, Any]], key: str) -> dict[str, tuple[list, list]]:
    """{split: (epochs, values)} for the rows that have a number under `key`."""
    out: dict[str, tuple[list, list]] = {}
    for r in rows:
        if _num(r.get(key)):
            xs, ys = out.setdefault(r.get("split", "train"), ([], []))
            xs.append(r["epoch"])
            ys.append(r[key])
    return out


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _name(class_names: Sequence[str], i: Any) -> str:
    i = int(i)
    return str(class_names[i]) if 0 <= i < len(class_names) else str(i)
