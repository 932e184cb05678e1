"""The run directory and what is written into it while training: metrics.jsonl, TensorBoard scalars,
summary.json, and the console progress (tqdm bars and one line per epoch)."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from trainlab.engine.callbacks import Callback
from trainlab.errors import TrainlabError


def _plain(value: Any) -> Any:
    """JSON-safe: floats that are NaN/Inf become None, tensors become numbers."""
    if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(_plain(data), f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def output_path(path: str | Path, folder: bool, flag: str = "--out") -> Path:
    """Where a command writes (a file, or a `folder` it creates): a clean error when a file stands where a
    folder must be, a folder where the file must be, or the place cannot be written."""
    path = Path(path)
    parent = path if folder else path.parent
    for p in [parent, *parent.parents]:
        if p.exists():
            if not p.is_dir():
                raise TrainlabError(f"{flag} {path}: {p} is a file, not a folder")
            break
    if not folder and path.is_dir():
        raise TrainlabError(f"{flag} {path} is a folder; give a file name, e.g. {path / 'predictions.csv'}")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrainlabError(f"{flag} {path}: cannot create {parent}: {e.strerror}") from None
    return path


class RunDir:
    """Paths of one run directory; creating it checks that it is writable (checkpoints/ is made by the
    first checkpoint). A training run takes its folder with `trainlab.claim.claim_run_dir`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise TrainlabError(f"run directory {self.path} is not writable: {e.strerror}") from None

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """An existing run directory, for reading (and updating summary.json): creates nothing."""
        run = cls.__new__(cls)
        run.path = Path(path)
        if not run.path.is_dir():
            raise TrainlabError(f"run directory not found: {run.path}")
        return run

    config = property(lambda self: self.path / "config.yaml")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    summary = property(lambda self: self.path / "summary.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    last = property(lambda self: self.path / "checkpoints" / "last.pt")
    best = property(lambda self: self.path / "checkpoints" / "best.pt")
    safetensors = property(lambda self: self.path / "model.safetensors")
    tensorboard = property(lambda self: self.path / "tensorboard")
    predictions = property(lambda self: self.path / "predictions")
    report = property(lambda self: self.path / "report.html")

    def release(self) -> None:
        """Give up the folder's lock, if this process claimed it (`claim_run_dir` sets this)."""

    def write_config(self, config: dict[str, Any]) -> None:
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))

    def read_summary(self) -> dict[str, Any]:
        try:
            return json.loads(self.summary.read_text()) if self.summary.is_file() else {}
        except json.JSONDecodeError:
            return {}

    def update_summary(self, **fields: Any) -> dict[str, Any]:
        summary = self.read_summary()
        summary.update(fields)
        write_json_atomic(self.summary, summary)
        return summary

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.is_file():
            return []
        rows = []
        for line in self.metrics.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill
        return rows


class MetricsFile(Callback):
    """Appends one JSON object per line to metrics.jsonl: step rows ("kind": "step") every log
    interval and epoch rows ("kind": "epoch") for each split."""

    def __init__(
        self, path: Path, truncate_after_step: int | None = None, completed_epochs: int | None = None
    ):
        self.path = path
        if truncate_after_step is not None and path.is_file():
            # Resuming: drop rows written after the checkpoint we resume from, so that no step is
            # logged twice, and the old test row (the resumed run tests again at its end). A
            # checkpoint taken at an epoch's last step but before its end (checkpoint_every_n_steps)
            # has that epoch's rows at the same step: they go too (`completed_epochs`).
            keep = []
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                unfinished = (
                    completed_epochs is not None
                    and row.get("kind") == "epoch"
                    and row.get("epoch", 0) > completed_epochs
                )
                if (
                    row.get("step", 0) <= truncate_after_step
                    and row.get("split") != "test"
                    and not unfinished
                ):
                    keep.append(line)
            path.write_text("".join(kept + "\n" for kept in keep))
        # stays open for the whole run (rows are appended as they come); on_train_end closes it
        self.file = open(path, "a")  # noqa: SIM115

    def write(self, row: dict[str, Any]) -> None:
        self.file.write(json.dumps(_plain(row)) + "\n")
        self.file.flush()

    def on_batch_end(self, step: int, logs: dict[str, Any]) -> None:
        if "loss" in logs:
            self.write(
                {
                    "epoch": logs["epoch"],
                    "step": step,
                    "split": "train",
                    "kind": "step",
                    "loss": logs["loss"],
                    "lr": logs.get("lr"),
                    "samples_per_second": logs.get("samples_per_second"),
                    **({"lrs": logs["lrs"]} if "lrs" in logs else {}),
                }
            )

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        for split in ("train", "val"):
            if logs.get(split):
                self.write(
                    {
                        "epoch": epoch,
                        "step": logs["step"],
                        "split": split,
                        "kind": "epoch",
                        **logs[split],
                        **({"lr": logs.get("lr")} if split == "train" else {}),
                    }
                )

    def on_train_end(self, logs: dict[str, Any]) -> None:
        if logs.get("test"):
            self.write(
                {
                    "epoch": logs["epoch"],
                    "step": logs["step"],
                    "split": "test",
                    "kind": "epoch",
                    **logs["test"],
                }
            )
        self.file.close()


def _hparam_values(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as the flat {dotted.key: bool/int/float/str} that TensorBoard's hparams take
    (lists and other values as their text, None as "none")."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_hparam_values(value, f"{prefix}{key}."))
        elif isinstance(value, (bool, int, float, str)):
            out[f"{prefix}{key}"] = value
        else:
            out[f"{prefix}{key}"] = "none" if value is None else json.dumps(_plain(value))
    return out


def log_hparams(writer: Any, config: dict[str, Any], metric_tags: list[str]) -> None:
    """The config as hyperparameters of this run in TensorBoard's HPARAMS tab, next to the final
    values of `metric_tags` (scalars this run already wrote, e.g. "val/loss", "test/accuracy").
    SummaryWriter.add_hparams would write them into a new sub-run (a second entry per run); the
    same three summaries written into the run's own event file keep one run."""
    from torch.utils.tensorboard.summary import hparams

    experiment, start, end = hparams(_hparam_values(config), {tag: 0.0 for tag in metric_tags})
    file_writer = writer._get_file_writer()
    for summary in (experiment, start, end):
        file_writer.add_summary(summary)


class TensorBoardScalars(Callback):
    """train/val loss and metrics per epoch, the step loss, LR (train/lr, per step), gradient norm and
    samples/s as TensorBoard scalars; at the end the test metrics and the config as hyperparameters
    (`hparams`, else the run directory's config.yaml beside the writer's folder)."""

    def __init__(self, writer: Any, hparams: dict[str, Any] | None = None):
        self.writer = writer
        self.hparams = hparams
        self.metric_tags: dict[str, None] = {}  # the epoch and test scalars written, in order

    def on_batch_end(self, step: int, logs: dict[str, Any]) -> None:
        if "loss" in logs:
            self.writer.add_scalar("train/loss_step", logs["loss"], step)
            for key in ("lr", "grad_norm", "samples_per_second"):
                if logs.get(key) is not None:
                    self.writer.add_scalar(f"train/{key}", logs[key], step)
            for group, lr in (logs.get("lrs") or {}).items():
                self.writer.add_scalar(f"lr/{group}", lr, step)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        # the LR is train/lr at its steps only: a per-epoch copy was the same curve on another x axis
        for split in ("train", "val"):
            for name, value in (logs.get(split) or {}).items():
                if isinstance(value, (int, float)) and value is not None:
                    self.writer.add_scalar(f"{split}/{name}", value, epoch)
                    self.metric_tags[f"{split}/{name}"] = None
        self.writer.flush()

    def on_train_end(self, logs: dict[str, Any]) -> None:
        for name, value in (logs.get("test") or {}).items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(f"test/{name}", value, logs["epoch"])
                self.metric_tags[f"test/{name}"] = None
        config = self.hparams
        if config is None:  # the run directory's config.yaml, beside or above the event files' folder
            log_dir = Path(self.writer.log_dir)
            path = next(
                (p for p in (log_dir / "config.yaml", log_dir.parent / "config.yaml") if p.is_file()), None
            )
            config = yaml.safe_load(path.read_text()) if path is not None else None
        if isinstance(config, dict) and self.metric_tags:
            tags = [
                t for t in self.metric_tags if not t.endswith(("samples_per_second", "data_wait_fraction"))
            ]
            log_hparams(self.writer, config, tags)
        self.writer.flush()


_SHORT = {"accuracy": "acc"}
_NOT_METRICS = ("samples_per_second", "data_wait_fraction")
_FRACTIONS = ("accuracy", "f1", "precision", "recall", "auroc")  # always in [0, 1]: four decimals


def _number(name: str, value: float) -> str:
    """One value of an epoch line at a fixed width, so that the columns of successive lines align:
    a fraction as 0.9833 / 1.0000, anything else with 4 significant digits, trailing zeros kept
    (0.8448, 0.002436, 1.000, 1653, 3.900e+30), right-aligned in 8 characters."""
    if name in _FRACTIONS and 0 <= value <= 1:
        return f"{value:.4f}"
    return f"{f'{value:#.4g}'.removesuffix('.'):>8}"


def _fmt(logs: dict[str, Any]) -> str:
    return " ".join(
        f"{_SHORT.get(k, k)} {_number(k, v)}"
        for k, v in logs.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in _NOT_METRICS
    )


def in_notebook() -> bool:
    """Running in a Jupyter kernel (notebook, lab, VS Code, Colab): tqdm.autonotebook's own test."""
    if "ipykernel.zmqshell" not in sys.modules:
        return False
    shell = sys.modules["IPython"].get_ipython()
    return shell is not None and "zmq" in type(shell).__name__.lower()


def progress_bar_class(stream: Any) -> Any:
    """The tqdm class for progress bars on `stream`, or None for no bars (one line per epoch only):
    tqdm.notebook's widget bar in a notebook with ipywidgets; none in a notebook without them
    (tqdm's fallback writes a frame per refresh into the cell: noise, and a warning); the terminal
    bar when `stream` is a terminal; none when it is redirected to a file or a pipe (every refresh
    would be a frame in the log)."""
    if in_notebook():
        try:
            import ipywidgets  # noqa: F401 - tqdm.notebook draws with it
        except ImportError:
            return None
        from tqdm.notebook import tqdm as notebook_tqdm

        return notebook_tqdm
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        from tqdm import tqdm

        return tqdm
    return None


def show_model_summary(text: str, stream: Any = None) -> None:
    """The torchinfo summary: printed in a terminal; in a notebook a collapsed block (one line until
    opened), so that a cell that trains shows the progress, not 28 lines of table."""
    if in_notebook():
        import html

        from IPython.display import HTML, display

        total = next(
            (line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Total params")),
            "",
        )
        display(
            HTML(
                f"<details><summary>model summary ({total} parameters)</summary>"
                f"<pre>{html.escape(text)}</pre></details>"
            )
        )
        return
    print(text, file=stream or sys.stdout, flush=True)


class ConsoleProgress(Callback):
    """A tqdm bar per epoch (loss, metric, samples/s) where the output is a terminal or a notebook
    with ipywidgets (`progress_bar_class`), and a summary line per epoch always (unless `quiet`).
    TQDM_DISABLE=1 turns the bars off too."""

    def __init__(self, steps_per_epoch: int, epochs: int, quiet: bool = False, stream=None):
        self.steps_per_epoch, self.epochs = steps_per_epoch, epochs
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.tqdm = (
            None
            if quiet or os.environ.get("TQDM_DISABLE", "") not in ("", "0")
            else progress_bar_class(self.stream)
        )
        self.bars_off = self.tqdm is None
        self.bar = None

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any]) -> None:
        if not self.bars_off:
            self.bar = self.tqdm(
                total=self.steps_per_epoch,
                desc=f"epoch {epoch}/{self.epochs}",
                leave=False,
                initial=logs.get("position", 0),
                file=self.stream,
                dynamic_ncols=True,
                mininterval=0.25,
                disable=False,
            )  # we decided above; tqdm reads TQDM_DISABLE only at import
        self._start = time.perf_counter()

    def on_batch_end(self, step: int, logs: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.update(logs.get("steps_since", 1))
            if "loss" in logs:
                post = {"loss": f"{logs['loss']:.4f}"}
                if logs.get("accuracy") is not None:
                    post["acc"] = f"{logs['accuracy']:.3f}"
                if logs.get("samples_per_second"):
                    post["samples/s"] = f"{logs['samples_per_second']:,.0f}"
                if logs.get("data_wait_fraction") is not None:
                    post["data wait"] = f"{100 * logs['data_wait_fraction']:.0f}%"
                if (
                    logs.get("mfu") is not None
                ):  # of the measured peak of the precision in use (mfu_peak: bf16, ...)
                    post[f"mfu({logs['mfu_peak']})" if logs.get("mfu_peak") else "mfu"] = (
                        f"{100 * logs['mfu']:.1f}%"
                    )
                self.bar.set_postfix(post, refresh=False)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if not self.quiet:
            train = logs.get("train") or {}
            parts = [f"epoch {epoch:>{len(str(self.epochs))}}/{self.epochs}", f"train {_fmt(train)}"]
            if logs.get("val"):
                parts.append(f"val {_fmt(logs['val'])}")
            if logs.get("lr") is not None:
                parts.append(f"lr {logs['lr']:.2e}")
            if train.get("samples_per_second"):
                speed = f"{train['samples_per_second']:>7,.0f} samples/s"
                if logs.get("eval_samples_per_second"):
                    speed += f" (eval {logs['eval_samples_per_second']:,.0f})"
                parts.append(speed)
            print(" | ".join(parts), file=sys.stdout, flush=True)

    def on_train_end(self, logs: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()
