"""docs/CONFIG.md, the config-key reference, generated from the schema in `trainlab.config`.

    python -m trainlab.config_doc            # rewrites docs/CONFIG.md
    python -m trainlab.config_doc --check    # exit 1 when docs/CONFIG.md is not what this writes

Keys, types and defaults come from the pydantic models themselves, so they cannot drift; the one-line
meanings are the table below (tests/test_config_doc.py fails for a key of the schema without one, so
a new key gets its line when it is added).
"""

from __future__ import annotations

import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from trainlab.config import Component, Config

DOC = Path(__file__).resolve().parents[2] / "docs" / "CONFIG.md"

MEANINGS: dict[str, str] = {
    "name": "run name: the run directory is `runs/<name>` (`runs/<name>-2`, ... when that holds a run)",
    "seed": "seed of every random draw: weights, splits, shuffling, augmentation, dropout",
    "task": "classification, binary or regression; auto: from the data (integer labels: classes)",
    "metrics": (
        "metric names (`trainlab list metrics`); default by task: accuracy+f1, accuracy+auroc, mse+mae+r2"
    ),
    "data": "where the samples come from and how they are split and batched",
    "data.source": (
        "a built-in (`trainlab list datasets`), csv, image_folder, a torchvision dataset name, or "
        '"module:attr"'
    ),
    "data.root": "folder of an image folder or of a torchvision dataset's files",
    "data.path": "the CSV file of the csv source (.csv or .csv.gz)",
    "data.target": "CSV target column, by name or index (negative counts from the end); default the last",
    "data.features": "CSV feature columns, by name or index; default every column but the target",
    "data.header": "whether the CSV's first row is a header; default: detected",
    "data.delimiter": "the CSV delimiter; default: detected (comma, semicolon, tab or vertical bar)",
    "data.standardize": "scale each feature to mean 0, std 1 (fitted on the training split only)",
    "data.options": (
        "keyword arguments of the source itself (e.g. a torchvision dataset's or your function's)"
    ),
    "data.val_fraction": (
        "share of the training data held out for validation (when the source has no validation set)"
    ),
    "data.test_fraction": "share held out for the final test (when the source has no test set)",
    "data.k_fold": "train k runs, each validating on another fold (kfold summary in the run directory)",
    "data.fold": "which fold this run validates on (set by k-fold runs)",
    "data.download": "let torchvision download a missing dataset into data.root",
    "data.transforms": "training transforms: a component list of torchvision.transforms.v2 classes",
    "data.eval_transforms": (
        "validation/test/predict transforms; default the deterministic part of data.transforms"
    ),
    "data.batch_size": "samples per training batch (per process when distributed)",
    "data.eval_batch_size": "samples per evaluation batch; default data.batch_size",
    "data.shuffle": "shuffle the training samples every epoch",
    "data.num_workers": "DataLoader worker processes (files decoded lazily); 0: in this process",
    "data.drop_last": "drop the last, smaller training batch of each epoch",
    "data.pin_memory": "page-locked host batches for faster copies to a GPU; auto: on for CUDA",
    "data.persistent_workers": "keep DataLoader workers across epochs; default on when there are workers",
    "data.in_memory": (
        "tensor-backed data is batched by index_select on the device, skipping the DataLoader; auto: when"
        " it can"
    ),
    "data.skip_bad_files": (
        "skip image files that cannot be decoded (listed) instead of stopping with an error"
    ),
    "data.image_size": "resize image-folder images to this size (int or [h, w]); default: keep a common size",
    "model": "the network: `name` plus the keyword arguments of what it names",
    "model.name": (
        'a zoo name (`trainlab list models`), `sequential`, `torchvision:<name>`, or "module:attr"; '
        "auto: by task and input"
    ),
    "model.layers": (
        "the component list of `name: sequential` (torch.nn classes, e.g. `- Conv2d: [1, 10, 5]`)"
    ),
    "model.init": "torch.nn.init schemes: one name for all weights, or a mapping by layer type",
    "loss": "the loss: `name` (a torch.nn loss class) plus its keyword arguments",
    "loss.name": (
        'a torch.nn loss class or "module:attr"; auto: cross-entropy, BCE with logits or MSE by task'
    ),
    "optimizer": "the optimizer: `name` (a torch.optim class) plus its keyword arguments",
    "optimizer.name": 'any torch.optim class name (SGD, Adam, AdamW, ...) or "module:attr"',
    "optimizer.lr": "learning rate (`trainlab lr-find CONFIG` suggests one)",
    "optimizer.param_groups": "per-parameter-group settings, each matched by name globs",
    "optimizer.param_groups[].params": 'glob(s) on parameter names, e.g. "features.*"',
    "optimizer.param_groups[].lr": "learning rate of this group; default optimizer.lr",
    "optimizer.param_groups[].weight_decay": "weight decay of this group; default the optimizer's",
    "optimizer.no_decay_bias_norm": "exempt biases and normalisation weights from weight decay",
    "scheduler": "the LR schedule: `name` plus its keyword arguments",
    "scheduler.name": (
        "none, a built-in (`trainlab list schedulers`: cosine, onecycle, ...) or a "
        "torch.optim.lr_scheduler class"
    ),
    "scheduler.interval": "step the schedule every epoch or every optimizer step; default by schedule",
    "scheduler.warmup_steps": "linear warm-up over this many optimizer steps before the schedule",
    "scheduler.warmup_epochs": "linear warm-up over this many epochs before the schedule",
    "scheduler.warmup_start_factor": "the warm-up starts at this fraction of the learning rate",
    "scheduler.monitor": "the metric a plateau schedule watches; auto: the run's train.monitor",
    "train": "the loop: length, device, precision, logging, checkpoints",
    "train.epochs": "passes over the training data",
    "train.max_steps": "stop after this many optimizer steps (whatever train.epochs says)",
    "train.device": "auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps or xpu",
    "train.monitor": (
        "the metric that picks best.pt and drives early stopping and plateau; auto: val_accuracy "
        "(classification, binary; ties to the lower val_loss) or val_loss (regression), train_* without a"
        " validation split"
    ),
    "train.mode": "whether train.monitor improves when it falls (min) or rises (max); auto: by its name",
    "train.early_stopping": "stop when train.monitor has not improved for a while",
    "train.early_stopping.patience": "epochs without improvement before stopping; unset: never stop early",
    "train.early_stopping.min_delta": "the smallest change that counts as an improvement",
    "train.grad_accum": (
        "optimizer step every N batches (gradients summed: an N times larger effective batch)"
    ),
    "train.grad_clip": "clip the gradients' total norm to this value",
    "train.precision": (
        "auto (bf16 on GPUs with native bf16, else fp16 + gradient scaler on CUDA, fp32 on CPU), bf16, "
        "fp16, fp32, or fp32-strict (no TF32)"
    ),
    "train.compile": (
        "torch.compile the model (falls back to eager with a warning where it fails); auto: on CUDA only"
    ),
    "train.channels_last": "channels-last memory layout for conv nets; auto: on for 2-d conv nets on the CPU",
    "train.log_every_n_steps": (
        "optimizer steps between step rows in metrics.jsonl and TensorBoard (one host sync each)"
    ),
    "train.checkpoint_every_n_steps": "also write last.pt every N steps (besides every epoch)",
    "train.histogram_every": "epochs between weight/gradient histograms in TensorBoard; unset: none",
    "train.nan_policy": "on a NaN/Inf loss: stop (exit 1) or skip that batch",
    "train.deterministic": (
        "torch.use_deterministic_algorithms, CUBLAS_WORKSPACE_CONFIG and no cudnn.benchmark (bit-exact "
        "CUDA resumes, slower)"
    ),
    "train.target_metric": "a value and its goal, e.g. {val_accuracy: 0.97}: summary.json's time_to_target",
    "train.smoke": (
        "a smoke run: 2 training steps, 1 validation and 1 test batch, a complete run directory (--smoke)"
    ),
    "data.cache": (
        "image folders: decode once at the training size into memory, a memory-mapped disk file, auto "
        "(memory when it fits cache_memory_mb, else disk) or off (decode every epoch)"
    ),
    "data.cache_memory_mb": (
        "the most an image cache keeps in memory under cache: auto; default 25% of physical memory"
    ),
    "data.cache_dir": (
        "where disk image caches go; default <data.root>/.trainlab-cache/ (~/.cache/trainlab/images/ when"
        " the root is read-only)"
    ),
    "sweep": (
        "trainlab sweep: a hyperparameter search over config keys with Optuna (trainlab train ignores it)"
    ),
    "sweep.metric": "the value each trial is judged by (its best epoch); default the resolved train.monitor",
    "sweep.direction": "maximize or minimize; default from the metric (loss, error, mae, mse: minimize)",
    "sweep.trials": "complete + pruned trials to reach (a grid: at most its size)",
    "sweep.sampler": "tpe, random, grid or cmaes, or {name: ..., Optuna sampler arguments}",
    "sweep.sampler.name": "the Optuna sampler: tpe, random, grid, cmaes",
    "sweep.pruner": (
        "median, hyperband or none, or {name: ..., Optuna pruner arguments}; judged at each epoch end"
    ),
    "sweep.pruner.name": "the Optuna pruner: median, hyperband, none",
    "sweep.params": "dotted config key -> its search space (one of uniform, loguniform, int, choice)",
    "sweep.params.uniform": "[low, high]: a float drawn uniformly",
    "sweep.params.loguniform": "[low, high]: a float drawn on a log scale (learning rates)",
    "sweep.params.int_": "[low, high] (the YAML key is int): an integer, with step or log",
    "sweep.params.choice": "[v1, v2, ...]: one of these values (any YAML values, lists and mappings too)",
    "sweep.params.step": "the grid step of int (and uniform) values",
    "sweep.params.log": "int: draw on a log scale",
    "train.peak_flops": "the device's peak FLOP/s for MFU; default: measured by a matmul probe",
}


def _type(annotation: Any) -> str:
    """A short readable type: `int`, `float | null`, `list[str | int]`, `"epoch" | "step"`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type(a) for a in args)}]"
    if annotation is type(None):
        return "null"
    if annotation is typing.Any:
        return "any"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section" if not issubclass(annotation, Component) else "component"
    return getattr(annotation, "__name__", str(annotation))


def _model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (`X`, `list[X] | None`), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if (found := _model(arg)) is not None:
            return found
    return None


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        return "" if isinstance(value, BaseModel) else json.dumps(value)
    if field.default is PydanticUndefined:
        return "required"
    return json.dumps(field.default)


def rows(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, type, default) for every key of the schema, sections before their keys, in schema order."""
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        inner = _model(field.annotation)
        out.append((key, _type(field.annotation), _default(field)))
        if inner is not None:
            is_list = typing.get_origin(field.annotation) is list or any(
                typing.get_origin(a) is list for a in typing.get_args(field.annotation)
            )
            out += rows(inner, f"{key}[]." if is_list else f"{key}.")
    return out


def render() -> str:
    lines = [
        "# Config keys",
        "",
        "Every key of a trainlab config, its type, its default and what it means. Generated from the schema",
        "in `src/trainlab/config.py` by `python -m trainlab.config_doc` (a test checks that this file is up "
        "to",
        "date). Set a key in the YAML file or on the command line: "
        "`trainlab train cfg.yaml optimizer.lr=0.01`.",
        "",
        "A *component* (`model`, `loss`, `optimizer`, `scheduler`) takes, beside the keys below, the keyword",
        "arguments of the class or function that `name` names, as in Python: "
        "`optimizer: {name: SGD, lr: 0.1,",
        "momentum: 0.9}`. To switch a component, give its `name` and only keyword arguments the new one",
        "accepts: in a YAML file, replace the whole mapping; on the command line, a mapping override "
        "replaces",
        "it too (`'model={name: mlp, hidden: [64]}'`), while `model.name=mlp` keeps the other keys and fails",
        "where the new class does not take them (the error names the key).",
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for key, type_, default in rows():
        meaning = MEANINGS.get(key, "")
        cells = [f"`{key}`", type_, f"`{default}`" if default not in ("", "required") else default, meaning]
        lines.append("| " + " | ".join(c.replace("|", "&#124;") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if "--check" in argv:
        if not DOC.is_file() or DOC.read_text() != text:
            print(f"{DOC} is out of date: run `python -m trainlab.config_doc`", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
