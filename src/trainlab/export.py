"""`trainlab export RUN_DIR`: the trained model as files that run without trainlab, checked against it.

    RUN_DIR/export/model.onnx          torch.onnx.export (the dynamo exporter); input `input` (batch, ...),
                                       output `logits` (classification: one score per class; binary: the logit
                                       of class 1, before the sigmoid) or `prediction` (regression)
    RUN_DIR/export/model.pt2           torch.export.export + torch.export.save:
                                       torch.export.load(f).module()(x)
    RUN_DIR/export/preprocessing.json  how to prepare an input (shape, dtype, eval transforms, CSV features
                                       and scaler statistics) and read the output (task, class names)
    RUN_DIR/export/verification.json   the check below, per format

Both programs have a dynamic batch dimension. Verification runs each written file (ONNX Runtime's CPU
provider; `torch.export.load`) on up to 256 samples of the run's test split (else validation, else
training) and compares with the PyTorch model in eval mode (fp32, CPU):
    passed  <=>  max|exported - torch| <= rtol * max(1, max|torch|)   (rtol 1e-4 by default)
            and  every predicted class agrees, except where PyTorch's own top two scores lie within that
                 tolerance of each other (a tie that rounding may break either way; counted, not failed).
A model that cannot be exported (e.g. an `if` on tensor values in its forward) is an `ExportError`
naming the model and the exporter's reason; the other format is still written when it succeeds.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import logging
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainlab.errors import TrainlabError

FORMATS = {"onnx": ".onnx", "exported": ".pt2"}
FORMAT_TITLES = {"onnx": "ONNX, torch.onnx.export", "exported": "torch.export program"}
INPUT_NAME = "input"
ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")
# Keys of the checkpoint's `preprocessing` that only training uses (not written to preprocessing.json).
_TRAINING_ONLY = ("train_transforms", "fast_path", "fast_path_unsupported")


class ExportError(TrainlabError):
    """The model cannot be exported (or a needed package is missing): exit 2."""


@dataclass
class ExportResult:
    """What `export_run` wrote and how the verification went."""

    files: dict[str, Path]  # format -> file written
    verification: dict[str, Any]  # what export/verification.json holds
    errors: dict[str, str] = field(default_factory=dict)  # format -> why it could not be exported

    @property
    def passed(self) -> bool:
        return bool(self.verification.get("passed"))


def require_onnx() -> None:
    """onnx, onnxruntime and onnxscript (the `trainlab[export]` extra) are importable, or an ExportError."""
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(
            f"ONNX export and prediction need the packages {', '.join(missing)}, which are not "
            f"installed: pip install 'trainlab[export]'"
        )


def output_name(task: str) -> str:
    return "prediction" if task == "regression" else "logits"


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- the command


def export_run(
    run_dir: str | Path,
    formats: tuple[str, ...] | list[str] = ("onnx", "exported"),
    *,
    checkpoint: str = "best",
    out: str | Path | None = None,
    opset: int | None = None,
    rtol: float = 1e-4,
    samples: int = 256,
    verify: bool = True,
    quiet: bool = False,
) -> ExportResult:
    """Export the run's model to each of `formats` ('onnx', 'exported'), write preprocessing.json beside the
    files, and (with `verify`) compare every written file with the PyTorch model on the run's data.

    `out`: the file to write (one format), or a path whose suffix becomes .onnx and .pt2 (both formats);
    default RUN_DIR/export/model.onnx and model.pt2. Raises ExportError when a format cannot be exported
    (after writing the others); a failed verification is `result.passed == False`.
    """
    from trainlab.finished import load_run

    if not rtol >= 0:
        raise ExportError(f"--rtol: {rtol} must be a number >= 0")
    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(
            f"--format: {', '.join(unknown) or 'nothing'} is not a format; choose from onnx, exported, all"
        )
    if "onnx" in formats:
        require_onnx()
    say = (lambda *a: None) if quiet else print
    loaded = load_run(run_dir, checkpoint=checkpoint, with_data=verify)
    source = loaded.checkpoint
    model = loaded.model.to("cpu").eval()
    prep = loaded.state.get("preprocessing") or {}
    task = prep.get("task") or "classification"
    split, x = _verification_inputs(loaded, samples) if verify else (None, _placeholder_input(prep))
    with torch.no_grad():
        reference = model(
            x
        ).float()  # before exporting: an exporter must not be able to change what we compare with
    example = torch.cat([x, x])[: max(2, min(len(x), 8))]  # a batch of 2+: size 1 would be specialised
    paths = _output_paths(Path(run_dir), formats, out)
    paths[formats[0]].parent.mkdir(parents=True, exist_ok=True)
    info = {"file": source.name, "sha256": file_sha256(source)}
    model_name = _model_name(loaded.config, model)

    files, errors = _write_files(model, example, paths, output_name(task), opset, info, say)
    folder = paths[formats[0]].parent
    if files:
        doc = consumer_preprocessing(prep, x, task, info)
        (folder / "preprocessing.json").write_text(json.dumps(doc, indent=1) + "\n")
        say(f"wrote {folder / 'preprocessing.json'}")
    verification: dict[str, Any] = {
        "checkpoint": info,
        "rtol": rtol,
        "formats": {},
        "errors": errors,
        "passed": not errors and bool(files),
    }
    if verify and files:
        verification.update(verify_files(files, x, reference, task, rtol), split=split)
        verification["passed"] = verification["passed"] and all(
            v["passed"] for v in verification["formats"].values()
        )
        (folder / "verification.json").write_text(json.dumps(verification, indent=1) + "\n")
        say(format_verification(verification))
        say(f"wrote {folder / 'verification.json'}")
    if errors:
        raise ExportError(_failure_message(model_name, errors, files, verify))
    return ExportResult(files, verification, errors)


def _write_files(
    model: nn.Module,
    example: torch.Tensor,
    paths: dict[str, Path],
    output: str,
    opset: int | None,
    info: dict[str, str],
    say: Any,
) -> tuple[dict[str, Path], dict[str, str]]:
    """({format: file written}, {format: why it could not be exported})."""
    files: dict[str, Path] = {}
    errors: dict[str, str] = {}
    for fmt, path in paths.items():
        try:
            if fmt == "onnx":
                title = f"ONNX opset {_write_onnx(model, example, path, output, opset, info)}"
            else:
                _write_exported(model, example, path, info)
                title = "torch.export program"
        except Exception as e:  # noqa: BLE001 - any exporter failure is reported with its reason
            errors[fmt] = _reason(e)
            continue
        files[fmt] = path
        say(f"wrote {path} ({title}; {path.stat().st_size / 1e6:.2f} MB)")
    return files, errors


def verify_files(
    files: dict[str, Path], x: torch.Tensor, reference: torch.Tensor, task: str, rtol: float
) -> dict[str, Any]:
    """Each written file run on `x` (ONNX Runtime; torch.export.load) and compared with `reference`, the
    PyTorch model's outputs on `x`."""
    formats = {}
    for fmt, path in files.items():
        outputs = run_onnx(path, x) if fmt == "onnx" else run_exported(path, x)
        formats[fmt] = {"file": path.name, **compare_outputs(outputs, reference, task, rtol)}
    return {
        "samples": len(x),
        "formats": formats,
        "rule": "passed when max|exported - torch| <= rtol * max(1, max|torch|) and every predicted class "
        "agrees (a class differing where PyTorch's top two scores are within that tolerance is a tie, "
        "counted in `ties`)",
    }


def _output_paths(run_dir: Path, formats: list[str], out: str | Path | None) -> dict[str, Path]:
    if out is None:
        return {fmt: run_dir / "export" / f"model{FORMATS[fmt]}" for fmt in formats}
    out = Path(out)
    if len(formats) == 1:
        return {formats[0]: out}
    return {fmt: out.with_suffix(FORMATS[fmt]) for fmt in formats}


def _model_name(config: Any, model: nn.Module) -> str:
    name = config.model.name
    cls = type(model).__name__
    return f"{name!r}" if name.endswith(f":{cls}") or name == cls else f"{name!r} ({cls})"


def _verification_inputs(loaded: Any, samples: int) -> tuple[str, torch.Tensor]:
    """(split, up to `samples` model inputs of the test split, else val, else train),
    as evaluation loads them."""
    from trainlab.data.loaders import make_loader

    bundle = loaded.bundle
    split, ds = next(
        (
            (name, ds)
            for name, ds in (("test", bundle.test), ("val", bundle.val), ("train", bundle.train))
            if ds is not None and len(ds)
        ),
        (None, None),
    )
    if ds is None:
        raise ExportError(f"{loaded.run_dir}: the run's data has no samples to verify the export on")
    loader = make_loader(ds, samples, shuffle=False, device="cpu", in_memory=loaded.config.data.in_memory)
    x, _ = next(iter(loader))
    return split, x.cpu()


def _placeholder_input(prep: dict[str, Any]) -> torch.Tensor:
    """Without the data: zeros of the saved input shape (float32), enough to trace the model."""
    shape = prep.get("input_shape")
    if not shape:
        raise ExportError(
            "the checkpoint does not record the model's input shape; export with verification "
            "(it reads the run's data)"
        )
    return torch.zeros(2, *shape)


# ----------------------------------------------------------------------------- exporters


@contextlib.contextmanager
def _quiet_exporter():
    """The exporters print graphs, progress and warnings; their failures are reported by `_reason` instead."""
    torch_log = logging.getLogger("torch")
    level = torch_log.level
    torch_log.setLevel(logging.CRITICAL)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        torch_log.setLevel(level)


def _dynamic_batch() -> tuple[dict[int, Any]]:
    return ({0: torch.export.Dim("batch")},)


def capture(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """torch.export.export with a dynamic batch dimension: non-strict first, then strict (TorchDynamo), as
    torch.onnx.export tries them; the first failure is raised when both fail."""
    try:
        return torch.export.export(model, (example,), dynamic_shapes=_dynamic_batch(), strict=False)
    except Exception as first:  # noqa: BLE001
        try:
            return torch.export.export(model, (example,), dynamic_shapes=_dynamic_batch(), strict=True)
        except Exception:  # noqa: BLE001
            raise first from None


def _write_exported(model: nn.Module, example: torch.Tensor, path: Path, info: dict[str, str]) -> None:
    with _quiet_exporter():
        program = capture(model, example)
        torch.export.save(program, path, extra_files={"trainlab_checkpoint.json": json.dumps(info)})


def _write_onnx(
    model: nn.Module, example: torch.Tensor, path: Path, output: str, opset: int | None, info: dict[str, str]
) -> int:
    """Writes the ONNX file; returns its opset."""
    with _quiet_exporter():
        program = torch.onnx.export(
            model,
            (example,),
            None,
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[output],
            dynamic_shapes=_dynamic_batch(),
            opset_version=opset,
            verbose=False,
        )
    written = program.model.opset_imports.get("")
    if (
        opset is not None and written != opset
    ):  # the exporter falls back to its own opset when converting fails
        raise ExportError(
            f"--opset {opset}: the exporter could not convert the model to ONNX opset {opset} (it "
            f"writes opset {written}; the dynamo exporter starts at 18)"
        )
    program.model.metadata_props.update(
        {"trainlab.checkpoint": info["file"], "trainlab.checkpoint_sha256": info["sha256"]}
    )
    program.save(path)  # weights inside the file (external data only past 1.5 GB)
    return written


def _reason(e: BaseException) -> str:
    """The exporter's reason in one line: the innermost error's first line and the user code it points at.

    torch.onnx wraps the real error (a failed torch.export trace, an operator without an ONNX function) in
    exceptions whose messages are step-by-step advice; the innermost `__cause__` says what went wrong."""
    if isinstance(e, TrainlabError):
        return str(e)
    chain = [e]
    while chain[-1].__cause__ is not None and len(chain) < 10:
        chain.append(chain[-1].__cause__)
    root = chain[-1]
    text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(str(c) for c in chain))
    lines = [line.strip() for line in str(root).splitlines() if line.strip()]
    reason = f"{type(root).__name__}: {(lines[0] if lines else '')[:300]}"
    at = re.search(
        r'The following call raised this error:\s*File "([^"]+)", line (\d+), in \w+\s*\n\s*(\S[^\n]*)', text
    )
    if at:
        reason += f" (at {Path(at.group(1)).name}:{at.group(2)}: `{at.group(3).strip()}`)"
    if "data-dependent" in text:
        reason += (
            "; Python control flow on tensor values (an `if` or `while` on a tensor) cannot be captured: "
            "write it with torch.where or torch.cond"
        )
    return reason


def _failure_message(model_name: str, errors: dict[str, str], files: dict[str, Path], verified: bool) -> str:
    parts = [f"cannot export model {model_name}:"]
    for fmt, reason in errors.items():
        parts.append(f"{FORMAT_TITLES[fmt]} failed: {reason}.")
    for fmt, path in files.items():
        parts.append(
            f"{FORMAT_TITLES[fmt]} succeeded: {path}" + (" (verification above)." if verified else ".")
        )
    return " ".join(parts)


# ----------------------------------------------------------------------------- running the exported files


def run_onnx(path: str | Path, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The ONNX file's first output on `x` with ONNX Runtime's CPU provider, in batches."""
    require_onnx()
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = [
        session.run(None, {name: x[i : i + batch_size].numpy()})[0] for i in range(0, len(x), batch_size)
    ]
    return torch.cat([torch.from_numpy(o) for o in outputs]).float()


def run_exported(path: str | Path, x: torch.Tensor) -> torch.Tensor:
    program = torch.export.load(str(path))
    with torch.no_grad():
        return program.module()(x).float()


def onnx_metadata(path: str | Path) -> dict[str, str]:
    require_onnx()
    import onnxruntime as ort

    return dict(
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        .get_modelmeta()
        .custom_metadata_map
    )


def compare_outputs(outputs: torch.Tensor, reference: torch.Tensor, task: str, rtol: float) -> dict[str, Any]:
    """Max abs difference against the tolerance rtol * max(1, max|reference|),
    and predicted-class agreement."""
    outputs, reference = outputs.reshape(reference.shape).double(), reference.double()
    diff = float((outputs - reference).abs().max()) if reference.numel() else 0.0
    tolerance = rtol * max(1.0, float(reference.abs().max()) if reference.numel() else 1.0)
    result: dict[str, Any] = {"max_abs_diff": diff, "tolerance": tolerance}
    if task == "regression":
        result["passed"] = diff <= tolerance and bool(torch.isfinite(outputs).all())
        return result
    if task == "binary":
        ours, theirs = reference.view(-1) > 0, outputs.view(-1) > 0
        tie = reference.view(-1).abs() <= tolerance
    else:
        ours, theirs = reference.argmax(-1), outputs.argmax(-1)
        top2 = reference.topk(min(2, reference.shape[-1]), dim=-1).values
        tie = (top2[:, 0] - top2[:, -1]) <= tolerance
    differ = ours != theirs
    result.update(
        class_agreement=float((~differ).double().mean()),
        classes_differ=int(differ.sum()),
        ties=int((differ & tie).sum()),
    )
    result["passed"] = diff <= tolerance and not bool((differ & ~tie).any())
    return result


def format_verification(verification: dict[str, Any]) -> str:
    lines = [
        f"verification on {verification['samples']} {verification['split']} samples against the PyTorch "
        f"model (eval, fp32): passes when max|diff| <= {verification['rtol']:g} * max(1, max|torch output|)"
    ]
    for fmt, v in verification["formats"].items():
        agree = ""
        if "class_agreement" in v:
            n = verification["samples"]
            agree = f"  classes agree {n - v['classes_differ']}/{n}" + (
                f" ({v['ties']} ties)" if v["ties"] else ""
            )
        lines.append(
            f"  {fmt:<9} max abs diff {v['max_abs_diff']:.3g} (tolerance {v['tolerance']:.3g}){agree}  "
            f"{'passed' if v['passed'] else 'FAILED'}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- preprocessing.json


def consumer_preprocessing(
    prep: dict[str, Any], x: torch.Tensor, task: str, checkpoint: dict[str, str]
) -> dict[str, Any]:
    """The checkpoint's preprocessing as a consumer needs it: every value plain JSON, plus the input and
    output tensors and the steps from a raw input to the model's input, in words."""
    shape = list(prep.get("input_shape") or x.shape[1:])
    dtype = str(x.dtype).removeprefix("torch.")
    doc = {
        "task": task,
        "input": {"name": INPUT_NAME, "shape": ["batch", *shape], "dtype": dtype},
        "output": {"name": output_name(task), "meaning": _output_meaning(task, prep.get("class_names"))},
        "class_names": prep.get("class_names"),
        "steps": _steps(prep, shape, dtype),
    }
    doc.update({k: v for k, v in prep.items() if k not in _TRAINING_ONLY and k not in doc})
    doc["checkpoint"] = checkpoint
    return doc


def _output_meaning(task: str, class_names: list[str] | None) -> str:
    if task == "classification":
        return (
            "(batch, classes) scores before the softmax; softmax over the last axis gives the probabilities "
            "of class_names, in order"
        )
    if task == "binary":
        second = class_names[1] if class_names else "1"
        return (
            f"(batch, 1) the logit of class {second!r}: sigmoid(logit) is its probability, "
            "logit > 0 predicts it"
        )
    return "(batch, targets) the predicted values, in the target's units"


def _steps(prep: dict[str, Any], shape: list[int], dtype: str) -> list[str]:
    if prep.get("image_mode") is not None or prep.get("eval_transforms"):
        steps = [
            f"read each image as uint8 (C, H, W) in PIL mode {prep.get('image_mode')!r} "
            f"(Image.open(f).convert(mode))"
        ]
        if prep.get("image_size"):
            steps.append(
                f"resize to [H, W] = {prep['image_size']} with antialiasing when its size differs "
                f"(torchvision.transforms.v2.functional.resize)"
            )
        if prep.get("eval_transforms"):
            steps.append(
                "apply eval_transforms in order: torchvision.transforms.v2 class names with their arguments"
            )
        steps.append("if still uint8: float32 / 255")
    elif prep.get("feature_names"):
        steps = [
            f"take the columns {prep['feature_names']} in this order as float32 "
            f"(N, {len(prep['feature_names'])})"
        ]
        if prep.get("scaler"):
            steps.append("standardise each feature: (x - scaler.mean) / scaler.std")
        if len(shape) > 1:
            steps.append(f"reshape to (N, {', '.join(map(str, shape))})")
    else:
        steps = [
            f"the input is a {dtype} tensor of shape (N, "
            f"{', '.join(map(str, shape))}), as the dataset's samples"
        ]
    return [
        *steps,
        f"stack into one {dtype} batch of shape (N, {', '.join(map(str, shape))}) named {INPUT_NAME!r}",
    ]


# ----------------------------------------------------------------------------- for predict --backend onnx


def onnx_for_predict(run_dir: str | Path) -> Path:
    """RUN_DIR/export/model.onnx of the checkpoint that `predict` uses (best, else last): exported now when it
    is missing; an ExportError when it was exported from another checkpoint."""
    from trainlab.finished import checkpoint_file

    run_dir = Path(run_dir)
    path = run_dir / "export" / "model.onnx"
    source = checkpoint_file(run_dir, "best")
    if not path.exists():
        if not source.exists():
            raise TrainlabError(f"{run_dir} has no checkpoint to export (looked for {source})")
        print(
            f"note: {path} is missing; exporting it (trainlab export {run_dir} "
            "--format onnx also verifies it)",
            file=sys.stderr,
        )
        export_run(run_dir, ["onnx"], verify=False, quiet=True)
        return path
    recorded = onnx_metadata(path).get("trainlab.checkpoint_sha256")
    if source.exists() and recorded != file_sha256(source):
        raise ExportError(
            f"{path} was exported from another checkpoint than {source} (the one predict uses); "
            f"export it again: trainlab export {run_dir} --format onnx"
        )
    return path
