"""`trainlab predict RUN_DIR INPUT`: the run's best model on new inputs, with the preprocessing saved
in its checkpoint (feature names and scaler statistics, class names, eval transforms).

INPUT is a CSV of feature rows (columns matched by name) or an image file / a folder of images.
The output CSV has one row per input: `input`, `prediction` (the class name for a classifier, the
value for a regressor) and, for a classifier, one `prob_<class>` column per class.

Two backends run the model on the prepared inputs; everything else is shared:
    torch  the PyTorch model rebuilt from the checkpoint (the default)
    onnx   RUN_DIR/export/model.onnx in ONNX Runtime (see trainlab.export), with export/preprocessing.json
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import torch

from trainlab.errors import DataError, TrainlabError
from trainlab.logging import output_path
from trainlab.metrics import probabilities

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
BACKENDS = ("torch", "onnx")


def predict(
    run_dir: str | Path, input_path: str | Path, out: str | Path | None = None, backend: str = "torch"
) -> str:
    """The output CSV's text (also written to `out` when given)."""
    if backend not in BACKENDS:
        raise TrainlabError(f"--backend: {backend!r} is not a backend; choose from {', '.join(BACKENDS)}")
    input_path = Path(input_path)
    if not input_path.exists():
        raise DataError(f"input not found: {input_path}")
    if out is not None:
        out = output_path(out, folder=False)  # before the work, not after it
    if backend == "onnx":
        from trainlab.export import onnx_for_predict, run_onnx

        model_file = onnx_for_predict(run_dir)
        prep_file = model_file.parent / "preprocessing.json"
        if not prep_file.is_file():
            raise TrainlabError(
                f"{prep_file} is missing (it says how to prepare inputs for {model_file}); "
                f"export again: trainlab export {run_dir} --format onnx"
            )
        prep = json.loads(prep_file.read_text())
        names, x = prepare_inputs(input_path, prep)
        output = run_onnx(model_file, x)
    else:
        from trainlab.finished import load_run

        loaded = load_run(run_dir, with_data=False)
        prep = loaded.state.get("preprocessing") or {}
        names, x = prepare_inputs(input_path, prep)
        output = _torch_outputs(loaded.model, loaded.device, x)
    task = prep.get("task") or "classification"
    text = _write_csv(names, probabilities(task, output), task, prep.get("class_names"))
    if out is not None:
        Path(out).write_text(text)
    return text


def prepare_inputs(input_path: Path, prep: dict[str, Any]) -> tuple[list[str], torch.Tensor]:
    """(row or file names, the model inputs (N, *input_shape)) of a CSV or image file / folder."""
    if input_path.is_dir() or input_path.suffix.lower() in IMAGE_SUFFIXES:
        return _read_images(input_path, prep)
    return _read_csv(input_path, prep)


def _torch_outputs(model: torch.nn.Module, device: torch.device, x: torch.Tensor) -> torch.Tensor:
    outputs = []
    with torch.inference_mode():
        for i in range(0, len(x), 256):
            outputs.append(model(x[i : i + 256].to(device)).float().cpu())
    return torch.cat(outputs)


def _read_csv(path: Path, prep: dict[str, Any]) -> tuple[list[str], torch.Tensor]:
    """(names, (N, *input_shape) features): columns picked and scaled the way the training data was."""
    from trainlab.data import apply_scaler
    from trainlab.data.csv_source import read_features

    features = prep.get("feature_names")
    if not features:
        raise TrainlabError(
            f"this run was not trained on CSV/tabular features, so {path} cannot be its input; "
            f"give an image file or folder"
        )
    # A CSV run saved how its file was read; a built-in tabular set (iris, ...) only its feature names.
    csv_info = prep.get("csv") or {
        "features": list(features),
        "columns": list(features),
        "header": True,
        "delimiter": None,
    }
    x = read_features(path, csv_info)  # (N, F), matched by column name when the file has a header
    if prep.get("scaler"):
        x = apply_scaler(x, prep["scaler"])
    shape = prep.get("input_shape")
    if shape and len(shape) > 1:
        x = x.view(len(x), *shape)
    return [str(i) for i in range(1, len(x) + 1)], x


def _read_images(path: Path, prep: dict[str, Any]) -> tuple[list[str], torch.Tensor]:
    from PIL import Image, UnidentifiedImageError

    from trainlab.data.transforms import eval_transform_from_preprocessing

    if "image_mode" not in prep and "eval_transforms" not in prep:
        raise TrainlabError(
            f"this run was not trained on images, so {path} cannot be its input; give a CSV of features"
        )
    files = (
        sorted(
            p
            for p in path.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if path.is_dir()
        else [path]
    )
    if not files:
        raise DataError(f"{path}: no image files found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    transform = eval_transform_from_preprocessing(prep)
    tensors = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                tensors.append(transform(im))
        except Image.DecompressionBombError as e:  # more pixels than PIL decodes safely
            raise DataError(f"refused image: {f} ({e})") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise DataError(f"unreadable image: {f} ({str(e)[:200]})") from None
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
