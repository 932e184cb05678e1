"""Plots and report.html from synthetic run directories (the files the trainer writes), and the
TensorBoard extras read back with tensorboard's EventAccumulator."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import yaml

from trainlab.report import write_plots, write_report
from trainlab.report.plots import _plan, ema, plot_misclassified
from trainlab.report.rundir import first_conv_from_safetensors, read_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- synthetic run directories


def _write_common(
    run: Path,
    name: str,
    task: str,
    metric_keys: dict[str, float],
    epochs: int = 3,
    steps_per_epoch: int = 4,
    lr: float = 0.01,
    summary_extra: dict | None = None,
) -> None:
    """config.yaml, metrics.jsonl (step rows + epoch rows for train and val), summary.json."""
    run.mkdir(parents=True, exist_ok=True)
    config = {
        "name": name,
        "seed": 0,
        "task": task,
        "data": {"source": "synthetic", "batch_size": 16},
        "model": {"name": "mlp", "hidden": [8]},
        "loss": {"name": "auto"},
        "optimizer": {"name": "SGD", "lr": lr, "momentum": 0.9},
        "scheduler": {"name": "cosine"},
        "train": {"epochs": epochs},
        "metrics": None,
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    rows, step = [], 0
    for epoch in range(1, epochs + 1):
        for _ in range(steps_per_epoch):
            step += 1
            rows.append(
                {
                    "epoch": epoch,
                    "step": step,
                    "split": "train",
                    "kind": "step",
                    "loss": 2.0 / step + 0.05 * np.sin(step),
                    "lr": lr * (1 - step / 20),
                }
            )
        for split, offset in (("train", 0.0), ("val", 0.1)):
            row = {
                "epoch": epoch,
                "step": step,
                "split": split,
                "kind": "epoch",
                "loss": 1.0 / epoch + offset,
            }
            row.update({k: v * epoch / epochs - offset / 10 for k, v in metric_keys.items()})
            if split == "train":
                row["lr"] = lr * (1 - step / 20)
            rows.append(row)
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    last = {
        s: {k: v for k, v in r.items() if k not in ("epoch", "step", "split", "kind", "lr")}
        for r in rows
        if r["kind"] == "epoch"
        for s in [r["split"]]
    }
    summary = {
        "status": "completed",
        "epochs_completed": epochs,
        "global_step": step,
        "best": {"metric": "val_loss", "value": last["val"]["loss"], "epoch": epochs},
        "final": {"train": last["train"], "val": last["val"], "test": {}},
        "samples_per_second": 1234.5,
        "task": task,
        **(summary_extra or {}),
    }
    (run / "summary.json").write_text(json.dumps(summary))


def make_classification_run(run: Path, name: str = "digits-cnn", lr: float = 0.01) -> Path:
    """Digits-like: 10 classes of 1x8x8 images, conv weights in model.safetensors,
    layer stats, a diagnosis."""
    from safetensors.numpy import save_file
    from sklearn.datasets import load_digits

    names = [f"digit{i}" for i in range(10)]
    _write_common(
        run,
        name,
        "classification",
        {"accuracy": 0.9, "f1": 0.88},
        lr=lr,
        summary_extra={
            "class_names": names,
            "data_info": {
                "source": "digits",
                "sizes": {"train": 1000, "val": 120, "test": 200},
                "class_counts": {"train": [100] * 10, "val": [12] * 10},
            },
            "diagnosis": {
                "verdict": "overfitting <b>suspected</b>",
                "explanation": "val loss rises <script>alert(1)</script>",
                "next_steps": ["add weight decay", "more data"],
                "gradient_health": {"vanishing": []},
            },
        },
    )
    rng = np.random.default_rng(0)
    digits = load_digits()
    x = (digits.images[:120] / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8)
    target = digits.target[:120]
    logits = 3 * np.eye(10)[target] + rng.normal(0, 1.2, (120, 10))
    output = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)  # (N, C) probabilities
    pred = output.argmax(1)
    wrong = np.flatnonzero(pred != target)[:64]
    (run / "predictions").mkdir()
    np.savez(
        run / "predictions" / "val.npz",
        target=target,
        output=output.astype(np.float32),
        images=x[wrong],
        image_target=target[wrong],
        image_pred=pred[wrong],
    )
    save_file(
        {
            "features.0.weight": rng.normal(size=(8, 1, 3, 3)).astype(np.float32),
            "features.3.weight": rng.normal(size=(16, 8, 3, 3)).astype(np.float32),
            "classifier.weight": rng.normal(size=(10, 64)).astype(np.float32),
        },
        str(run / "model.safetensors"),
    )
    stats = [
        {
            "epoch": e,
            "step": 4 * e,
            "layer": layer,
            "weight_norm": 1.0 + 0.1 * e + i,
            "grad_norm": 0.5 / (e * (i + 1)),
            "grad_to_weight": 0.01,
            "update_ratio": 1e-3,
        }
        for e in range(1, 4)
        for i, layer in enumerate(["features.0", "features.3", "classifier"])
    ]
    (run / "layer_stats.jsonl").write_text("\n".join(json.dumps(r) for r in stats))
    (run / "model_summary.txt").write_text(
        "Layer (type)   Output Shape   Param #\nConv2d-1   [-1, 8, 8, 8]   80\n"
    )
    return run


def make_binary_run(run: Path) -> Path:
    """One input feature, P(class 1) per sample: the logistic-regression picture."""
    _write_common(
        run,
        "logistic",
        "binary",
        {"accuracy": 0.85, "auroc": 0.9},
        summary_extra={
            "class_names": ["fail", "pass"],
            "data_info": {"sizes": {"train": 60, "val": 40}, "class_counts": {"val": [20, 20]}},
        },
    )
    rng = np.random.default_rng(1)
    x = rng.uniform(-3, 3, (40, 1)).astype(np.float32)
    target = (x[:, 0] + rng.normal(0, 0.8, 40) > 0).astype(np.int64)
    (run / "predictions").mkdir()
    np.savez(run / "predictions" / "val.npz", target=target, output=1 / (1 + np.exp(-2 * x[:, 0])), inputs=x)
    return run


def make_regression_run(run: Path) -> Path:
    """y = 2x + 1 + noise with one feature; outputs (N, 1)."""
    _write_common(
        run,
        "linear",
        "regression",
        {"mse": 0.5, "mae": 0.4, "r2": 0.9},
        summary_extra={"data_info": {"sizes": {"train": 80, "val": 30}, "source": "synthetic"}},
    )
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 5, (30, 1)).astype(np.float32)
    target = 2 * x[:, 0] + 1 + rng.normal(0, 0.5, 30)
    (run / "predictions").mkdir()
    np.savez(run / "predictions" / "val.npz", target=target, output=(2.1 * x + 0.8), inputs=x)
    return run


def assert_png_not_blank(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100, (path, pixels.shape)
    assert pixels[..., :3].std() > 0.02, f"{path} looks blank"


# ----------------------------------------------------------------------------- plots

CLASSIFICATION_PLOTS = {
    "loss",
    "metrics",
    "lr",
    "confusion_matrix",
    "roc",
    "precision_recall",
    "misclassified",
    "conv_kernels",
    "layer_norms",
}


@pytest.fixture(scope="module")
def classification_report(tmp_path_factory) -> Path:
    """One classification run with its report written once for the tests below (plots cost seconds)."""
    run = make_classification_run(tmp_path_factory.mktemp("cls") / "run")
    write_report(run)
    return run


@pytest.mark.parametrize(
    "make, expected, absent",
    [
        (None, CLASSIFICATION_PLOTS, {"regression", "fitted_curve"}),
        (
            make_binary_run,
            {"loss", "metrics", "lr", "confusion_matrix", "roc", "precision_recall", "fitted_curve"},
            {"misclassified", "regression", "conv_kernels", "layer_norms"},
        ),
        (
            make_regression_run,
            {"loss", "metrics", "lr", "regression", "fitted_curve"},
            {"confusion_matrix", "roc", "precision_recall", "misclassified", "conv_kernels"},
        ),
    ],
    ids=["classification", "binary", "regression"],
)
def test_write_plots_writes_every_applicable_plot(tmp_path, classification_report, make, expected, absent):
    skipped: dict[str, str] = {}
    if make is None:  # the shared classification run: its plots are on disk; re-plan without drawing
        run = classification_report
        plots = {p.stem: p for p in (run / "plots").glob("*.png")}
        skipped = {name: why for name, (why, _) in _plan(read_run(run)).items() if why}
    else:
        run = make(tmp_path / "run")
        plots = write_plots(run, skipped)
    assert expected <= set(plots), set(plots)
    assert not absent & set(plots)
    assert absent <= set(skipped) and all(skipped[n] for n in absent)  # each skip says why
    for name, path in plots.items():
        assert path == run / "plots" / f"{name}.png"
        assert_png_not_blank(path)


def test_misclassified_images_from_image_index(tmp_path):
    """The ARCHITECTURE.md form: `image_index` into target/output instead of image_target/image_pred."""
    run = make_classification_run(tmp_path / "run")
    p = dict(np.load(run / "predictions" / "val.npz"))
    wrong = np.flatnonzero(p["output"].argmax(1) != p["target"])
    np.savez(
        run / "predictions" / "val.npz",
        target=p["target"],
        output=p["output"],
        images=p["images"],
        image_index=wrong,
    )
    images, true, pred = read_run(run).misclassified_images()
    np.testing.assert_array_equal(true, p["target"][wrong])
    assert (pred != true).all()
    assert_png_not_blank(
        plot_misclassified(images, true, pred, [str(i) for i in range(10)], tmp_path / "m.png")
    )


def test_a_plot_that_fails_is_skipped_with_its_reason_and_the_others_are_written(tmp_path):
    """A target label outside the output's classes breaks the ROC's one-hot encoding, not the report."""
    run = make_binary_run(tmp_path / "run")
    p = dict(np.load(run / "predictions" / "val.npz"))
    probs = np.stack([1 - p["output"], p["output"], np.zeros_like(p["output"])], axis=1)  # (N, 3)
    target = p["target"].copy()
    target[0] = 7
    np.savez(run / "predictions" / "val.npz", target=target, output=probs)
    summary = json.loads((run / "summary.json").read_text())
    summary.update(task="classification", class_names=["a", "b", "c"])
    (run / "summary.json").write_text(json.dumps(summary))
    skipped: dict[str, str] = {}
    with pytest.warns(UserWarning, match="roc"):
        plots = write_plots(run, skipped)
    assert "IndexError" in skipped["roc"]
    assert {"loss", "confusion_matrix", "precision_recall"} <= set(plots)


def test_conv_kernels_come_from_the_first_conv_in_safetensors(tmp_path):
    run = make_classification_run(tmp_path / "run")
    assert first_conv_from_safetensors(run / "model.safetensors").shape == (
        8,
        1,
        3,
        3,
    )  # not features.3 (16, 8, 3, 3)
    np.save(run / "first_conv_weights.npy", np.ones((4, 3, 5, 5), np.float32))  # the explicit file wins
    assert read_run(run).conv_kernels().shape == (4, 3, 5, 5)


def test_task_is_inferred_from_prediction_shapes_when_not_recorded(tmp_path):
    run = make_binary_run(tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    del summary["task"]
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "config.yaml").write_text(yaml.safe_dump({"name": "x", "task": "auto"}))
    assert read_run(run).task == "binary"


def test_ema_is_debiased_and_smooths():
    np.testing.assert_allclose(ema([5.0, 5.0, 5.0]), [5.0, 5.0, 5.0])  # no warm-up bias towards 0
    np.testing.assert_allclose(ema([1.0, 0.0], smoothing=0.5), [1.0, 1 / 3])
    noisy = np.tile([0.0, 2.0], 50)
    assert ema(noisy)[-10:].std() < 0.3 * noisy.std()


# ----------------------------------------------------------------------------- report.html


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self._in: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in.append(tag)

    def handle_endtag(self, tag):
        if tag in self._in:
            self._in.remove(tag)

    def handle_data(self, data):
        self.text.append(data)


def _parse(path: Path) -> _Collector:
    parser = _Collector()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def test_report_html_is_self_contained_and_complete(classification_report):
    run = classification_report
    report = run / "report.html"
    page = _parse(report)
    text = " ".join(page.text)
    tags = [t for t, _ in page.tags]
    assert "digits-cnn" in text and "completed" in text  # run name (title and heading) and status
    assert any(t == "title" for t in tags)
    assert ("table", {"id": "final-metrics"}) in page.tags and "accuracy" in text
    assert "class balance" in text.lower() and "digit9" in text  # dataset section with class names
    assert "Conv2d-1" in text and "momentum" in text  # model summary and config
    imgs = [a["src"] for t, a in page.tags if t == "img"]
    plots = sorted((run / "plots").glob("*.png"))
    assert len(imgs) == len(plots) == 9
    for src in imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG_SIGNATURE
    refs = [v for _, a in page.tags for k, v in a.items() if k in ("src", "href") and v]
    assert not [r for r in refs if r.startswith(("http:", "https:", "//"))]
    assert "link" not in tags and "script" not in tags  # the diagnosis' "<script>" was escaped, not run
    assert "val loss rises <script>alert(1)</script>" in text and "add weight decay" in text


def test_report_of_a_bare_run_says_what_is_missing(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(
        json.dumps(
            {
                "status": "failed",
                "epochs_completed": 0,
                "global_step": 0,
                "best": {},
                "final": {},
                "samples_per_second": 0.0,
            }
        )
    )
    page = _parse(write_report(run))
    text = " ".join(page.text)
    assert "failed" in text
    assert "metrics.jsonl is missing" in text and "no predictions/val.npz" in text
    assert not [a for t, a in page.tags if t == "img"]


# ----------------------------------------------------------------------------- TensorBoard extras


def test_tensorboard_extras_logs_images_graph_histograms_and_confusion_matrix(tmp_path):
    torch = pytest.importorskip("torch")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch import nn
    from torch.utils.tensorboard import SummaryWriter

    from trainlab.report.tensorboard_extras import TensorBoardExtras

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    writer = SummaryWriter(str(tmp_path / "tb"))
    cb = TensorBoardExtras(writer, histogram_every=2)
    bn_mean = model[1].running_mean.clone()
    cb.on_train_begin(
        {
            "model": model,
            "optimizer": opt,
            "config": {},
            "run_dir": str(tmp_path),
            "sample_batch": (x, y),
            "class_names": ["a", "b", "c"],
        }
    )
    torch.testing.assert_close(model[1].running_mean, bn_mean)  # tracing the graph did not train batch-norm
    last_grad = None
    step = 0
    for epoch in range(4):
        cb.on_epoch_begin(epoch, {})
        for _ in range(2):
            step += 1
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            cb.on_after_backward(step, {"epoch": epoch, "step": step})
            last_grad = model[0].weight.grad.clone()
            opt.step()
            cb.on_batch_end(step, {"epoch": epoch, "step": step})
        cb.on_epoch_end(epoch, {"epoch": epoch, "step": step})
    with torch.no_grad():
        probs = model(x).softmax(1).numpy()
    cb.on_train_end(
        {"status": "completed", "step": step, "predictions": {"target": y.numpy(), "output": probs}}
    )
    writer.close()

    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"inputs/sample_batch", "weights/first_conv_kernels", "eval/confusion_matrix"} <= set(
        tags["images"]
    )
    assert tags["graph"] is True
    assert "weights/0.weight" in tags["histograms"] and "grads/0.weight" in tags["histograms"]
    assert [e.step for e in acc.Histograms("grads/0.weight")] == [4, 8]  # every 2nd epoch, at its last step
    # the gradient histogram is the last backward's gradient of epoch 4 (step 8)
    hist = acc.Histograms("grads/0.weight")[-1].histogram_value
    assert hist.num == last_grad.numel()
    assert hist.min == pytest.approx(last_grad.min().item(), rel=1e-5)
    assert hist.max == pytest.approx(last_grad.max().item(), rel=1e-5)
    assert cb.state_dict() == {"epochs_done": 4}


def test_tensorboard_extras_accepts_a_compiled_model(tmp_path):
    """train.compile=true hands the callback torch.compile's wrapper, whose truth value is len(): it raised
    `TypeError: SmallCNN does not support len()`. The callback works on the module inside."""
    torch = pytest.importorskip("torch")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from trainlab.models.zoo import SmallCNN
    from trainlab.report.tensorboard_extras import TensorBoardExtras

    model = SmallCNN((1, 8, 8), 10)
    compiled = torch.compile(model)  # lazy: nothing compiles unless it is called
    writer = SummaryWriter(str(tmp_path / "tb"))
    cb = TensorBoardExtras(writer)
    cb.on_train_begin({"model": compiled, "sample_batch": (torch.randn(4, 1, 8, 8), None)})
    assert cb.model is model
    cb.on_train_end({"step": 0})
    writer.close()
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    acc.Reload()
    assert "weights/first_conv_kernels" in acc.Tags()["images"] and acc.Tags()["graph"] is True


# ----------------------------------------------------------------------------- layout and smoothing


def _drawn(monkeypatch, draw):
    """The Figure a plot function builds, drawn (so text and bar extents are known), not written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from trainlab.report import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    draw(plots)
    fig = figures[0]
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    return fig, renderer


def test_smoothed_step_loss_does_not_lag_the_raw_loss(monkeypatch, tmp_path):
    """A one-way EMA (0.9) trails a falling loss by ~9 points (~100 steps at 10 steps per row)."""
    steps = [
        {"epoch": 1, "step": 10 * i, "split": "train", "kind": "step", "loss": 3.0 - 0.01 * i}
        for i in range(200)
    ]
    fig, _ = _drawn(monkeypatch, lambda p: p.plot_loss_curves(steps, tmp_path / "loss.png"))
    raw, smooth = (line.get_ydata() for line in fig.axes[1].lines[:2])
    np.testing.assert_allclose(smooth, raw, atol=1e-9)  # a straight line stays put; the old EMA was 0.09 off


def test_conv_kernel_title_does_not_touch_the_kernel_labels(monkeypatch, tmp_path):
    import matplotlib.text

    w = np.random.default_rng(0).normal(size=(32, 1, 3, 3)).astype(np.float32)
    fig, renderer = _drawn(monkeypatch, lambda p: p.plot_conv_kernels(w, tmp_path / "k.png"))
    texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_text()]
    title = next(t for t in texts if t.get_text().startswith("first conv layer"))
    labels = [t for t in texts if t.get_text().isdigit()]
    assert len(labels) == 32
    box = title.get_window_extent(renderer)
    assert not [t.get_text() for t in labels if box.overlaps(t.get_window_extent(renderer))]


def test_precision_recall_legend_covers_no_bar(monkeypatch, tmp_path):
    target = np.repeat(np.arange(4), 10)
    fig, renderer = _drawn(
        monkeypatch, lambda p: p.plot_precision_recall(target, target, list("abcd"), tmp_path / "pr.png")
    )
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent(renderer)
    bars = [b.get_window_extent(renderer) for b in ax.patches]
    assert len(bars) == 8 and not [b for b in bars if legend.overlaps(b)]  # perfect scores: bars reach 1.0


def test_best_table_is_one_row_per_split_not_one_column_per_key():
    from trainlab.report.html import _best

    best = {
        "metric": "val_loss",
        "value": 0.0529,
        "epoch": 9,
        "train_loss": 0.0043,
        "train_accuracy": 0.9992,
        "train_samples_per_second": 8551.3,
        "val_loss": 0.0529,
        "val_accuracy": 0.9889,
        "val_f1": 0.9889,
    }
    page = _Collector()
    page.feed(_best(best))
    text = " ".join(page.text)
    assert "Best checkpoint: epoch 9, chosen by val_loss = 0.0529." in text
    head = text.split("split", 1)[1].split("train")[0].split()
    assert head == ["loss", "accuracy", "samples_per_second", "f1"]  # columns: metrics, not split_metric keys
    assert "val_accuracy" not in text


def test_centred_smoothing_removes_noise():
    from trainlab.report.plots import smooth_centred

    noisy = np.tile([0.0, 2.0], 50)
    assert smooth_centred(noisy)[10:-10].std() < 0.1 * noisy.std() and len(smooth_centred(noisy)) == 100


def test_data_notes_read_as_text_in_the_report():
    from trainlab.report.html import _dataset

    info = {
        "notes": ["decoded 3 images once at 8×8 into memory, 0 MB, 0.0 s", "a second note"],
        "cache": {"where": "memory", "note": "8×8"},
    }
    html = _dataset(info, [])
    assert "decoded 3 images once at 8×8 into memory, 0 MB, 0.0 s · a second note" in html
    assert "\\u00d7" not in html and "[&quot;" not in html  # not a JSON list with escaped characters
    assert "&quot;where&quot;: &quot;memory&quot;" in html  # mappings stay JSON
