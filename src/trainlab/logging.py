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

    def __init__(self, path: Path, truncate_after_step: int | None = None, completed_epochs: int | None = None):
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
                unfinished = completed_epochs is not None and row.get("kind") == "epoch" \
                    and row.get("epoch", 0) > completed_epochs
                if row.get("step", 0) <= truncate_after_step and row.get("split") != "test" and not unfinished:
                    keep.append(line)
            path.write_text("".join(l + "\n" for l in keep))
        self.file = open(path, "a")

    def write(self, row: dict[str, Any]) -> None:
        self.file.write(json.dumps(_plain(row)) + "\n")
        self.file.flush()

    def on_batch_end(self, step: int, logs: dict[str, Any]) -> None:
        if "loss" in logs:
            self.write({"epoch": logs["epoch"], "step": step, "split": "train", "kind": "step",
                        "loss": logs["loss"], "lr": logs.get("lr"), "samples_per_second": logs.get("samples_per_second"),
                        **({"lrs": logs["lrs"]} if "lrs" in logs else {})})

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        for split in ("train", "val"):
            if logs.get(split):
                self.write({"epoch": epoch, "step": logs["step"], "split": split, "kind": "epoch", **logs[split],
                            **({"lr": logs.get("lr")} if split == "train" else {})})

    def on_train_end(self, logs: dict[str, Any]) -> None:
        if logs.get("test"):
            self.write({"epoch": logs["epoch"], "step": logs["step"], "split": "test", "kind": "epoch", **logs["test"]})
        self.file.close()


class TensorBoardScalars(Callback):
    """train/val loss, metrics, LR, gradient norm and samples/s as TensorBoard scalars."""

    def __init__(self, writer: Any):
        self.writer = writer

    def on_batch_end(self, step: int, logs: dict[str, Any]) -> None:
        if "loss" in logs:
            self.writer.add_scalar("train/loss_step", logs["loss"], step)
            for key in ("lr", "grad_norm", "samples_per_second"):
                if logs.get(key) is not None:
                    self.writer.add_scalar(f"train/{key}", logs[key], step)
            for group, lr in (logs.get("lrs") or {}).items():
                self.writer.add_scalar(f"lr/{group}", lr, step)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        for split in ("train", "val"):
            for name, value in (logs.get(split) or {}).items():
                if isinstance(value, (int, float)) and value is not None:
                    self.writer.add_scalar(f"{split}/{name}", value, epoch)
        if logs.get("lr") is not None:
            self.writer.add_scalar("lr", logs["lr"], epoch)
        self.writer.flush()

    def on_train_end(self, logs: dict[str, Any]) -> None:
        for name, value in (logs.get("test") or {}).items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(f"test/{name}", value, logs["epoch"])
        self.writer.flush()


_SHORT = {"accuracy": "acc"}
_NOT_METRICS = ("samples_per_second", "data_wait_fraction")


def _fmt(logs: dict[str, Any]) -> str:
    return " ".join(f"{_SHORT.get(k, k)} {v:.4g}" for k, v in logs.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in _NOT_METRICS)


class ConsoleProgress(Callback):
    """A tqdm bar per epoch (loss, metric, samples/s) and a summary line per epoch.
    Silenced by `quiet` or TQDM_DISABLE=1; in notebooks tqdm.auto gives widget bars."""

    def __init__(self, steps_per_epoch: int, epochs: int, quiet: bool = False, stream=None):
        from tqdm.auto import tqdm

        self.tqdm = tqdm
        self.steps_per_epoch, self.epochs = steps_per_epoch, epochs
        self.bars_off = quiet or os.environ.get("TQDM_DISABLE", "") not in ("", "0")
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.bar = None

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any]) -> None:
        if not self.bars_off:
            self.bar = self.tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch}/{self.epochs}", leave=False,
                                 initial=logs.get("position", 0), file=self.stream, dynamic_ncols=True, mininterval=0.25,
                                 disable=False)  # we decided above; tqdm reads TQDM_DISABLE only at import
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
                if logs.get("mfu") is not None:
                    post["mfu"] = f"{100 * logs['mfu']:.1f}%"
                self.bar.set_postfix(post, refresh=False)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if not self.quiet:
            train = logs.get("train") or {}
            parts = [f"epoch {epoch}/{self.epochs}", f"train {_fmt(train)}"]
            if logs.get("val"):
                parts.append(f"val {_fmt(logs['val'])}")
            if logs.get("lr") is not None:
                parts.append(f"lr {logs['lr']:.3g}")
            if train.get("samples_per_second"):
                speed = f"{train['samples_per_second']:,.0f} samples/s"
                if logs.get("eval_samples_per_second"):
                    speed += f" (eval {logs['eval_samples_per_second']:,.0f})"
                parts.append(speed)
            print(" | ".join(parts), file=sys.stdout, flush=True)

    def on_train_end(self, logs: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()
