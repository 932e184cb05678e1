"""Reading a run directory for plots, the report and `compare`: every file is optional.

A missing or unreadable file reads as empty (None, {} or []), so a half-written run (interrupted,
failed, or from an older trainlab) still gets every plot its files allow.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import yaml

# keys of metrics.jsonl rows that are bookkeeping, not metrics
NOT_METRICS = {
    "epoch",
    "step",
    "split",
    "kind",
    "loss",
    "lr",
    "time",
    "elapsed",
    "seconds",
    "samples_per_second",
    "data_wait_fraction",
    "grad_norm",
    "fold",
}


@dataclass
class RunFiles:
    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    layer_stats: list[dict[str, Any]] = field(default_factory=list)
    model_summary: str | None = None
    predictions: dict[str, np.ndarray] | None = None  # the val split's arrays, else the test split's
    prediction_split: str = "val"

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.path.name)

    @cached_property
    def task(self) -> str:
        """classification | binary | regression: summary.json, else config.yaml,
        else the prediction shapes."""
        for task in (self.summary.get("task"), self.config.get("task")):
            if task in ("classification", "binary", "regression"):
                return task
        if self.predictions is None:
            return "unknown"
        target, output = self.predictions["target"], self.predictions["output"]
        if output.ndim == 2 and output.shape[1] > 1 and np.allclose(output.sum(axis=1), 1, atol=1e-3):
            return "classification"
        if output.ndim == 1 and output.min() >= 0 and output.max() <= 1 and set(np.unique(target)) <= {0, 1}:
            return "binary"
        return "regression"

    @cached_property
    def class_names(self) -> list[str]:
        names = self.summary.get("class_names")
        if names:
            return [str(n) for n in names]
        if self.task == "binary":
            return ["0", "1"]
        n = (
            self.predictions["output"].shape[1]
            if self.predictions is not None and self.predictions["output"].ndim == 2
            else 0
        )
        return [str(i) for i in range(n)]

    def predicted_classes(self) -> np.ndarray:
        """(N,) predicted class indices: argmax of (N, C) probabilities, or P(class 1) >= 0.5 for binary."""
        output = self.predictions["output"]
        return output.argmax(axis=1) if output.ndim == 2 else (output >= 0.5).astype(int)

    def misclassified_images(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(images (M, C, H, W), true (M,), predicted (M,)) or None. Labels come from `image_target` /
        `image_pred`, or from `image_index` into the full target and output arrays."""
        p = self.predictions
        if p is None or "images" not in p or len(p["images"]) == 0 or p["images"].ndim != 4:
            return None
        if "image_target" in p and "image_pred" in p:
            return p["images"], p["image_target"], p["image_pred"]
        if "image_index" in p:
            idx = p["image_index"].astype(int)
            return p["images"], p["target"][idx], self.predicted_classes()[idx]
        return None

    def conv_kernels(self) -> np.ndarray | None:
        """(out, in, kh, kw) weights of the first conv layer: first_conv_weights.npy,
        else model.safetensors."""
        npy = self.path / "first_conv_weights.npy"
        if npy.is_file():
            return np.load(npy, allow_pickle=False)
        return first_conv_from_safetensors(self.path / "model.safetensors")


def first_conv_from_safetensors(path: Path) -> np.ndarray | None:
    """The first conv layer's weight in a safetensors file, or None. The file stores tensors by name,
    not in layer order, so pick among the 4-D weights the one with the fewest input channels (the image
    channels, 1 or 3), ties broken by natural name order ("features.0" before "features.10")."""
    if not path.is_file():
        return None
    from safetensors import safe_open  # torch is needed anyway for bf16/fp16 weights

    def natural(name: str) -> list:
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]

    try:
        with safe_open(str(path), framework="pt") as f:
            # safe_open has keys() but is not iterable
            shapes = {k: f.get_slice(k).get_shape() for k in f.keys() if k.endswith("weight")}  # noqa: SIM118
            convs = [k for k, s in shapes.items() if len(s) == 4]
            if not convs:
                return None
            key = min(convs, key=lambda k: (shapes[k][1], natural(k)))
            return f.get_tensor(key).float().numpy()
    except Exception as e:  # a corrupt file must not stop the report
        warnings.warn(f"could not read conv kernels from {path}: {e}", stacklevel=2)
        return None


def read_run(path: Path) -> RunFiles:
    path = Path(path)
    run = RunFiles(path=path)
    run.config = _read(path / "config.yaml", lambda t: yaml.safe_load(t) or {}, {})
    run.summary = _read(path / "summary.json", json.loads, {})
    run.metrics = _read(path / "metrics.jsonl", _jsonl, [])
    run.layer_stats = [r for r in _read(path / "layer_stats.jsonl", _jsonl, []) if "layer" in r]
    run.model_summary = _read(path / "model_summary.txt", str, None)
    for split in ("val", "test"):
        npz = path / "predictions" / f"{split}.npz"
        if npz.is_file():
            try:
                with np.load(npz, allow_pickle=False) as f:
                    arrays = {k: f[k] for k in f.files}
            except Exception as e:
                warnings.warn(f"could not read {npz}: {e}", stacklevel=2)
                continue
            if "target" in arrays and "output" in arrays:
                run.predictions, run.prediction_split = arrays, split
                break
    return run


def epoch_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Epoch summaries: rows marked kind "epoch", or rows without a kind."""
    return [r for r in rows if r.get("kind", "epoch") == "epoch" and "epoch" in r]


def step_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("kind") == "step" and "step" in r]


def metric_names(rows: list[dict[str, Any]]) -> list[str]:
    """Numeric keys of epoch rows that are metrics (accuracy, f1, mse, ...), in first-seen order. Where
    there are val/test rows only their keys count: train rows may also carry throughput and timings."""
    names: dict[str, None] = {}
    evaluated = [r for r in rows if r.get("split") in ("val", "test")]
    for r in evaluated or rows:
        for k, v in r.items():
            if k not in NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool):
                names[k] = None
    return list(names)


def _jsonl(text: str) -> list[dict[str, Any]]:
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a run killed mid-write leaves a partial last line
                continue
    return [r for r in rows if isinstance(r, dict)]


def _read(path: Path, parse, default):
    if not path.is_file():
        return default
    try:
        return parse(path.read_text(encoding="utf-8"))
    except Exception as e:
        warnings.warn(f"could not read {path}: {e}", stacklevel=2)
        return default
