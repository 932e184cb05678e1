"""`trainlab predict RUN_DIR INPUT`: the run's best model on new inputs, with the preprocessing saved
in its checkpoint (feature names and scaler statistics, class names, eval transforms).

INPUT is a CSV of feature rows (columns matched by name) or an image file / a folder of images.
The output CSV has one row per input: `input`, `prediction` (the class name for a classifier, the
value for a regressor) and, for a classifier, one `prob_<class>` column per class.
"""
from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path
from typing import Any

import torch

from trainlab.errors import DataError, TrainlabError
from trainlab.metrics import probabilities

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def predict(run_dir: str | Path, input_path: str | Path, out: str | Path | None = None) -> str:
    from trainlab.run import load_run

    input_path = Path(input_path)
    if not input_path.exists():
        raise DataError(f"input not found: {input_path}")
    loaded = load_run(run_dir, with_data=False)
    prep = loaded.state.get("preprocessing") or {}
    task = prep.get("task") or "classification"
    if input_path.is_dir() or input_path.suffix.lower() in IMAGE_SUFFIXES:
        names, x = _read_images(input_path, prep)
    else:
        names, x = _read_csv(input_path, prep)
    model, device = loaded.model, loaded.device
    outputs = []
    with torch.inference_mode():
        for i in range(0, len(x), 256):
            outputs.append(model(x[i : i + 256].to(device)).float().cpu())
    values = probabilities(task, torch.cat(outputs))
    text = _write_csv(names, values, task, prep.get("class_names"))
    if out is not None:
        Path(out).write_text(text)
    return text


def _open_text(path: Path) -> io.TextIOBase:
    return gzip.open(path, "rt", newline="") if path.suffix == ".gz" else open(path, newline="")


def _read_csv(path: Path, prep: dict[str, Any]) -> tuple[list[str], torch.Tensor]:
    features = prep.get("feature_names")
    if not features:
        raise TrainlabError(f"this run was not trained on CSV/tabular features, so {path} cannot be its input; "
                            f"give an image file or folder")
    try:
        with _open_text(path) as f:
            sample = f.read(4096)
            f.seek(0)
            try:
                dialect = csv.Sniffer().sniff(sample, delimiters=",;\t ")
            except csv.Error:
                dialect = csv.excel
            rows = list(csv.reader(f, dialect))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"{path}: the file is empty")
    header = [c.strip() for c in rows[0]]
    if all(f in header for f in features):
        columns = [header.index(f) for f in features]
        body, first_line = rows[1:], 2
    elif not _is_numeric_row(header) and any(f in header for f in features) or not _is_numeric_row(header):
        missing = [f for f in features if f not in header]
        raise DataError(f"{path}: missing feature column(s) {', '.join(map(repr, missing))}; the run was trained on "
                        f"{', '.join(map(repr, features))}")
    else:  # no header: the columns are the training features in order (the target may follow)
        if len(header) < len(features):
            raise DataError(f"{path}:1: {len(header)} columns but the run expects {len(features)} features")
        columns, body, first_line = list(range(len(features))), rows, 1
    values = []
    for n, row in enumerate(body, first_line):
        try:
            values.append([float(row[c]) for c in columns])
        except IndexError:
            raise DataError(f"{path}:{n}: the row has {len(row)} columns, fewer than the header") from None
        except ValueError:
            bad = next(c for c in columns if not _is_float(row[c]))
            raise DataError(f"{path}:{n}:{bad + 1}: {row[bad]!r} is not a number (column "
                            f"{features[columns.index(bad)]!r})") from None
    x = torch.tensor(values, dtype=torch.float32)
    scaler = prep.get("scaler")
    if scaler:
        x = (x - torch.tensor(scaler["mean"])) / torch.tensor(scaler["std"])
    shape = prep.get("input_shape")
    if shape and len(shape) > 1:
        x = x.view(len(x), *shape)
    return [str(i) for i in range(1, len(values) + 1)], x


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _is_numeric_row(row: list[str]) -> bool:
    return all(_is_float(c) for c in row if c.strip())


def _read_images(path: Path, prep: dict[str, Any]) -> tuple[list[str], torch.Tensor]:
    from PIL import Image, UnidentifiedImageError

    from trainlab.data.transforms import eval_transform_from_preprocessing

    if "image_mode" not in prep and "eval_transforms" not in prep:
        raise TrainlabError(f"this run was not trained on images, so {path} cannot be its input; give a CSV of features")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and
                   not any(part.startswith(".") for part in p.relative_to(path).parts)) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path}: no image files found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    transform = eval_transform_from_preprocessing(prep)
    tensors = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                tensors.append(transform(im))
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise DataError(f"unreadable image: {f} ({e})") from None
    return [str(f) for f in files], torch.stack(tensors)


def _write_csv(names: list[str], values: torch.Tensor, task: str, class_names: list[str] | None) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if task == "classification":
        classes = class_names or [str(i) for i in range(values.shape[-1])]
        w.writerow(["input", "prediction", *(f"prob_{c}" for c in classes)])
        for name, p in zip(names, values.tolist()):
            w.writerow([name, classes[max(range(len(p)), key=p.__getitem__)], *(f"{v:.6f}" for v in p)])
    elif task == "binary":
        classes = class_names or ["0", "1"]
        w.writerow(["input", "prediction", *(f"prob_{c}" for c in classes)])
        for name, p in zip(names, values.view(-1).tolist()):
            w.writerow([name, classes[int(p > 0.5)], f"{1 - p:.6f}", f"{p:.6f}"])
    else:
        values = values.view(len(names), -1)
        cols = ["prediction"] if values.shape[1] == 1 else [f"prediction_{i}" for i in range(values.shape[1])]
        w.writerow(["input", *cols])
        for name, v in zip(names, values.tolist()):
            w.writerow([name, *(f"{x:.6g}" for x in v)])
    return buf.getvalue()
