"""Reading a finished run: its config, data, loss and model with a checkpoint's weights, and
evaluating it (`trainlab eval`, `predict`, `doctor`, `export`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainlab.config import Config, validate
from trainlab.data.base import DataBundle
from trainlab.data.loaders import make_loader
from trainlab.data.peek import sample_batch
from trainlab.engine import checkpoint as ckpt
from trainlab.engine.device import inference_device
from trainlab.engine.evaluate import evaluate
from trainlab.errors import CheckpointError, TrainlabError
from trainlab.logging import RunDir
from trainlab.metrics import TaskMetrics
from trainlab.pipeline import eval_batch_size, seed_everything
from trainlab.registry import load_builtins

CHECKPOINTS = {"best": "best.pt", "last": "last.pt"}


@dataclass
class LoadedRun:
    run_dir: Path
    config: Config
    bundle: DataBundle | None
    model: nn.Module
    loss_fn: Any
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    state: dict[str, Any]
    device: torch.device
    checkpoint: Path


def checkpoint_file(run_dir: str | Path, checkpoint: str = "best") -> Path:
    """The file a run's `checkpoint` names: `best` is best.pt, else last.pt (a run stopped before its
    first validation); `last` is last.pt; anything else a file name in checkpoints/."""
    folder = Path(run_dir) / "checkpoints"
    name = CHECKPOINTS.get(checkpoint, checkpoint)
    if name == "best.pt" and not (folder / name).exists():
        return folder / "last.pt"
    return folder / name


def load_run(
    run_dir: str | Path, checkpoint: str = "best", with_data: bool = True, model: nn.Module | None = None
) -> LoadedRun:
    """The run's config, data (rebuilt from the config), loss and model with the weights of
    `checkpoint` (`best` (falls back to `last` when there is no best.pt), `last`, or a file name).
    `model`: a module of the run's architecture to load them into (a run trained from an instance)."""
    from trainlab.data import build_data, check_same_data
    from trainlab.losses import build_loss
    from trainlab.models import build_model

    load_builtins()
    run = RunDir.open(run_dir)
    path = checkpoint_file(run.path, checkpoint)
    if not path.exists():
        raise CheckpointError(f"--checkpoint {checkpoint}: {path} does not exist")
    state = ckpt.load_checkpoint(path, need=ckpt.RUN_STATE)
    config = validate(state["config"])
    device = inference_device(config.train.device)  # a CUDA run is evaluated on the CPU where there is no GPU
    seed_everything(config.seed)
    bundle = build_data(config) if with_data else None
    prep = state.get("preprocessing") or {}
    input_shape = tuple(prep.get("input_shape") or (bundle.input_shape if bundle else ()))
    task = prep.get("task") or (bundle.task if bundle else "classification")
    output_dim = int(
        prep.get("output_dim")
        or (
            bundle.output_dim
            if bundle
            else len(prep.get("class_names") or [])
            if task == "classification"
            else 1
        )
    )
    model = (model if model is not None else build_model(config.model, input_shape, output_dim, task)).to(
        device
    )
    if bundle is not None:
        check_same_data(bundle, prep, path)  # a CSV that gained a column, a class folder that vanished
        x, _ = sample_batch(bundle.train)
        with torch.no_grad():
            model.eval()
            model(x.to(device))  # materialises Lazy layers before loading weights
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(
            f"checkpoint {path} does not match the model of its config: {str(e).splitlines()[0]}"
        ) from None
    model.eval()
    return LoadedRun(
        run.path,
        config,
        bundle,
        model,
        build_loss(config.loss, task),
        run.read_metrics(),
        run.read_summary(),
        state,
        device,
        path,
    )


def evaluate_run(
    run_dir: str | Path, split: str = "test", checkpoint: str = "best", model: nn.Module | None = None
) -> dict[str, float]:
    """Loss and metrics of a checkpoint of the run on one split of its data."""
    loaded = load_run(run_dir, checkpoint, model=model)
    b = loaded.bundle
    ds = {"train": b.train, "val": b.val, "test": b.test}[split]
    if ds is None or len(ds) == 0:
        raise TrainlabError(f"--split {split}: this run's data has no {split} split")
    cfg = loaded.config
    loader = make_loader(
        ds, eval_batch_size(cfg), shuffle=False, device=loaded.device, in_memory=cfg.data.in_memory
    )
    metrics = TaskMetrics.for_data(b, cfg.metrics).to(loaded.device)
    logs, _ = evaluate(loaded.model, loader, loaded.loss_fn, metrics, loaded.device)
    return logs
