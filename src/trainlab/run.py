"""The training recipe, from a config to a finished run directory: set up (config, run directory,
pipeline, callbacks), fit, finish (test the best and the last weights, write the outputs). It reads
top to bottom; the parts live in `pipeline.py` (building), `engine/` (the loop) and `outputs.py`
(what is written at the end). Everything the CLI's `train` does is a function here.

    run = trainlab.train("examples/mnist_mlp.yaml", optimizer__lr=0.1)   # or {"optimizer.lr": 0.1}
    run.history            # a table of per-epoch values
    run.best, run.final    # metrics
    run.model, run.run_dir
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainlab import outputs
from trainlab.claim import claim_run_dir, release_all
from trainlab.config import Config, apply_overrides, load_config, validate
from trainlab.data.peek import sample_batch
from trainlab.engine import checkpoint as ckpt
from trainlab.engine import distributed
from trainlab.engine.callbacks import Callback
from trainlab.engine.device import apply_determinism, check_resume_device, resolve_device, unwrap
from trainlab.engine.loop import Trainer, steps_per_epoch
from trainlab.errors import CheckpointError, ConfigError, Interrupted, RunFailed, warn
from trainlab.logging import ConsoleProgress, MetricsFile, RunDir, TensorBoardScalars, show_model_summary
from trainlab.metrics import TaskMetrics
from trainlab.pipeline import Pipeline, build_pipeline, data_line, measure_flops, prepare_model

# ----------------------------------------------------------------------------- the run


@dataclass
class Run:
    """What `train` returns."""

    run_dir: Path
    config: Config
    model: nn.Module
    history_rows: list[dict[str, Any]]
    best: dict[str, Any]
    final: dict[str, Any]
    status: str
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def history(self) -> Any:
        """Per-epoch values as a table (a pandas DataFrame when pandas is installed, else a list of rows)."""
        try:
            import pandas as pd

            return pd.DataFrame(self.history_rows).set_index("epoch")
        except ImportError:
            return self.history_rows

    def evaluate(self, split: str = "test", checkpoint: str = "best") -> dict[str, float]:
        """Loss and metrics of the best (or last) checkpoint on a split of the run's data."""
        from trainlab.finished import evaluate_run

        return evaluate_run(self.run_dir, split, checkpoint, model=self.model)

    def predict(self, inputs: Any, out: str | Path | None = None) -> Any:
        """A tensor of samples: the best model's class probabilities, P(class 1) or values. A path (a CSV
        of feature rows, an image or a folder): the `trainlab predict` CSV's text (also written to `out`)."""
        if isinstance(inputs, torch.Tensor):
            from trainlab.metrics import probabilities

            was = self.model.training
            self.model.eval()
            device = next(self.model.parameters()).device
            with torch.inference_mode():
                outputs = self.model(inputs.to(device)).float().cpu()
            self.model.train(was)
            return probabilities(self.summary.get("task", "classification"), outputs)
        from trainlab.predict import predict

        return predict(self.run_dir, inputs, out)

    def __repr__(self) -> str:
        test = self.final.get("test") or {}
        shown = ", ".join(f"{k}={v:.4g}" for k, v in test.items() if isinstance(v, float))
        return f"Run({self.run_dir}, status={self.status}, test: {shown})"


def default_run_dir(config: Config, existing: bool = False) -> Path:
    """runs/<name>; when that already holds a run, runs/<name>-2, -3, ... (`existing`: the latest one)."""
    base = Path("runs") / config.name
    candidates = [base] + [base.with_name(f"{base.name}-{i}") for i in range(2, 10_000)]
    latest = base
    for path in candidates:
        if not (path / "checkpoints" / "last.pt").exists() and not (path / "summary.json").exists():
            return latest if existing else path
        latest = path
    return latest


def train(
    config: str | Path | dict[str, Any] | Config | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    quiet: bool = False,
    callbacks: list[Callback] = (),
    model: nn.Module | None = None,
    **kw_overrides: Any,
) -> Run:
    """Train from a YAML path, a dict or a Config; `overrides` are dotted keys (`["optimizer.lr=0.1"]` or
    `{"optimizer.lr": 0.1}`); keyword overrides use `__` for dots (`optimizer__lr=0.1`).

    `model`: an `nn.Module` instance to train instead of `model.name` (also accepted as the config
    dict's `model` value). Its class is recorded as `model.name: "module:Class"`, so `predict` and
    `eval` rebuild it where that module imports (a class defined in a notebook: in that notebook)."""
    if isinstance(config, dict) and isinstance(config.get("model"), nn.Module):
        config = {k: v for k, v in config.items() if k != "model"}
        model = model or config.get("model")
    if model is not None:
        kind = type(model)
        overrides = {
            **(dict(overrides) if isinstance(overrides, dict) else _as_dict(overrides or [])),
            "model": {"name": f"{kind.__module__}:{kind.__qualname__}"},
        }
    overrides = dict(overrides) if isinstance(overrides, dict) else list(overrides or [])
    if kw_overrides:
        extra = {k.replace("__", "."): v for k, v in kw_overrides.items()}
        overrides = (
            {**overrides, **extra}
            if isinstance(overrides, dict)
            else [*overrides, *(f"{k}={_yaml_value(v)}" for k, v in extra.items())]
        )
    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    if isinstance(config, Config) and overrides:
        cfg = validate(apply_overrides(config.to_dict(), overrides))
    if cfg.train.smoke:  # 2 training steps (1 validation and 1 test batch: pipeline.py)
        cfg = validate(apply_overrides(cfg.to_dict(), {"train.max_steps": min(cfg.train.max_steps or 2, 2)}))
    if cfg.data.k_fold and cfg.data.fold is None:
        from trainlab.kfold import train_kfold

        return train_kfold(cfg, out=out, quiet=quiet)
    if out is None:
        rank, world_size, _ = distributed.setup(resolve_device(cfg.train.device))
        # Under torchrun every rank uses rank 0's choice (rank 0 may have created the folder already).
        out = distributed.broadcast_object(
            default_run_dir(cfg, existing=resume or distributed.restarted()) if rank == 0 else None
        )
    try:
        return train_one(cfg, Path(out), resume=resume, quiet=quiet, callbacks=list(callbacks), model=model)
    finally:
        release_all()  # the run directory's lock ends with the run


def _as_dict(overrides: list[str]) -> dict[str, Any]:
    import yaml

    return {k: yaml.safe_load(v) for k, _, v in (o.partition("=") for o in overrides)}


def _yaml_value(v: Any) -> str:
    import yaml

    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def train_one(
    cfg: Config,
    out: Path,
    *,
    resume: bool,
    quiet: bool,
    callbacks: list[Callback],
    model: nn.Module | None = None,
) -> Run:
    """One run into `out`: set up, fit, finish."""
    note = apply_determinism(cfg.train.deterministic)  # before CUDA starts (cuBLAS reads its variable then)
    rank, world_size, _ = distributed.setup(resolve_device(cfg.train.device))  # joins torchrun's group
    if note and rank == 0 and not quiet:
        print(note)
    restarted = (
        distributed.restarted()
    )  # an elastic restart continues from last.pt (none yet: from the start)
    resume = resume or (restarted and (out / "checkpoints" / "last.pt").exists())
    run = claim_run_dir(
        out, resume, restarted=restarted, is_main=rank == 0
    )  # one owner; a used folder needs resume
    resume_state, cfg = _resume(out, cfg) if resume else (None, cfg)
    if run is not None:
        ckpt.clean_temp_files(run.checkpoints)
    pipe = build_pipeline(cfg, rank=rank, world_size=world_size, model=model)
    channels_last = prepare_model(pipe, rank, world_size)
    writer = _open_run(run, pipe, resume_state, quiet, world_size)
    flops, peak = measure_flops(pipe)
    trainer = Trainer(
        pipe.model,
        pipe.train_loader,
        pipe.val_loader,
        loss_fn=pipe.loss_fn,
        optimizer=pipe.optimizer,
        scheduler=pipe.scheduler,
        task=pipe.bundle.task,
        callbacks=[
            *_run_callbacks(run, pipe, resume_state, writer, quiet),
            *callbacks,
            *distributed.fault_callbacks(rank),
        ],
        train=cfg.train.model_copy(update={"channels_last": channels_last}),
        metrics=TaskMetrics.for_data(pipe.bundle, cfg.metrics).to(pipe.device),
        checkpoint_dir=run.checkpoints if run else None,
        rank=rank,
        world_size=world_size,
        flops_per_sample=flops,
        peak_flops=peak,
        # predict and eval rebuild the model from the checkpoint alone (without the data)
        extra_state={
            "config": cfg.to_dict(),
            "preprocessing": {**pipe.bundle.preprocessing, "output_dim": pipe.bundle.output_dim},
        },
    )
    trainer.caller_ends_training = True  # after testing, below

    status, error = "failed", None
    try:
        trainer.fit(resume_state)
        status = "completed"
    except (Interrupted, RunFailed) as e:  # RunFailed: diverged, out of memory
        status, error = ("interrupted" if isinstance(e, Interrupted) else "failed"), e
    finally:
        if status == "failed" and error is None and run is not None:  # an unexpected exception
            run.update_summary(status="failed")

    best, final = outputs.best_and_final(trainer)
    if status == "completed":
        final.update(outputs.test_runs(trainer, pipe, run))
    if run is not None:
        _write_outputs(trainer, pipe, run, status, final, best, writer, quiet)
    if error is not None:
        raise error
    # Under torchrun the other ranks wait here while rank 0 writes the outputs, so that no process leaves
    # the process group while another still holds it (a lone early exit once aborted a rank in teardown)
    distributed.barrier()
    return Run(
        out, cfg, unwrap(pipe.model), trainer.history, best, final, status, run.read_summary() if run else {}
    )


def _resume(out: Path, cfg: Config) -> tuple[dict[str, Any], Config]:
    """The checkpoint to resume from and the config to use (a device change is said in one line)."""
    state, cfg = _resume_state(out, cfg)
    note = check_resume_device(state, cfg.train.device, out / "checkpoints" / "last.pt")
    if note and distributed.env()[0] == 0:
        print(note, file=sys.stderr)
    return state, cfg


def _open_run(
    run: RunDir | None, pipe: Pipeline, resume_state: dict[str, Any] | None, quiet: bool, world_size: int
) -> Any:
    """Writes config.yaml, model_summary.txt and the first summary.json; prints the run's header;
    returns the TensorBoard writer (None on ranks other than 0)."""
    if run is None:
        return None
    cfg = pipe.config
    run.write_config(cfg.to_dict())
    (run.path / "model_summary.txt").write_text(pipe.summary + "\n")
    if pipe.bundle.split_indices:  # which samples each split holds: reference tests, a user's own analysis
        np.savez_compressed(run.path / "splits.npz", **pipe.bundle.split_indices)
    if not quiet:
        show_model_summary(pipe.summary)  # collapsed in a notebook
        print(data_line(pipe.bundle))
        for note in pipe.bundle.info.get("notes", []):  # what the data layer did (e.g. the image cache)
            print(f"data: {note}")
        print(f"monitor: {pipe.monitor.name} ({pipe.monitor.mode}) decides best.pt")
        if world_size > 1:
            accum = f" x grad_accum {cfg.train.grad_accum}" if cfg.train.grad_accum > 1 else ""
            print(
                f"distributed: {world_size} processes x batch {cfg.data.batch_size}{accum} = "
                f"effective batch size {world_size * cfg.data.batch_size * cfg.train.grad_accum}"
            )
    run.update_summary(
        status="running",
        name=cfg.name,
        task=pipe.bundle.task,
        class_names=pipe.bundle.class_names,
        data_info=pipe.bundle.info,
        monitor={"metric": pipe.monitor.name, "mode": pipe.monitor.mode},
    )
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run.tensorboard), purge_step=resume_state["epoch"] + 1 if resume_state else None)


def _run_callbacks(
    run: RunDir | None, pipe: Pipeline, resume_state: dict[str, Any] | None, writer: Any, quiet: bool
) -> list[Callback]:
    """metrics.jsonl, TensorBoard, the console, layer statistics (rank 0 only)."""
    from trainlab.diagnose.gradients import LayerStatsCallback
    from trainlab.report.tensorboard_extras import TensorBoardExtras

    if run is None:
        return []
    cfg = pipe.config
    return [
        MetricsFile(
            run.metrics,
            truncate_after_step=resume_state["global_step"] if resume_state else None,
            completed_epochs=resume_state["epoch"] if resume_state else None,
        ),
        TensorBoardScalars(writer, hparams=cfg.to_dict()),
        ConsoleProgress(
            steps_per_epoch(len(pipe.train_loader), cfg.train.grad_accum), cfg.train.epochs, quiet=quiet
        ),
        LayerStatsCallback(run.path),
        TensorBoardExtras(
            writer,
            cfg.train.histogram_every,
            sample_batch(pipe.bundle.train, 16),
            pipe.bundle.class_names,
            run_dir=run.path,
        ),
    ]


def _write_outputs(
    trainer: Trainer,
    pipe: Pipeline,
    run: RunDir,
    status: str,
    final: dict[str, Any],
    best: dict[str, Any],
    writer: Any,
    quiet: bool,
) -> None:
    from trainlab.report import write_report

    if status == "completed" or run.best.exists():
        outputs.write_safetensors(run)
    summary = outputs.write_summary(trainer, pipe, run, status, final, best)
    trainer.callbacks.call(
        "on_train_end",
        {"epoch": trainer.epoch, "step": trainer.global_step, "test": final.get("test"), "status": status},
    )
    writer.close()
    write_report(run.path)
    lines = outputs.closing_lines(summary, pipe, run)
    if not quiet:
        print("\n".join(lines))
    elif summary.get("diverging"):  # a warning even when quiet
        print(lines[0].strip(), file=sys.stderr)


RUN_SHAPED = ("cosine", "linear", "polynomial", "onecycle", "cosineannealinglr", "onecyclelr")
# Defaults that changed after runs were saved with the old ones (train.monitor was
# val_loss, precision fp32, ...)
CHANGED_DEFAULTS = {"train.monitor", "train.precision", "train.compile", "scheduler.monitor"}


def _resume_state(out: Path, cfg: Config) -> tuple[dict[str, Any], Config]:
    last = out / "checkpoints" / "last.pt"
    if not last.exists():
        raise CheckpointError(f"--resume: no checkpoint to resume from at {last}")
    state = ckpt.load_checkpoint(last, need=ckpt.RUN_STATE)
    saved = state.get("config") or {}
    diffs = _config_diffs(saved, cfg.to_dict())
    # A run saved by an earlier trainlab: keys it did not have, and defaults that changed since, keep
    # the run's own values when the config leaves them at today's default.
    saved_flat, defaults = _flatten(saved), _flatten(validate({}).to_dict())
    kept = {
        k: a for k, a, b in diffs if (k not in saved_flat or k in CHANGED_DEFAULTS) and b == defaults.get(k)
    }
    if any(k in saved_flat for k in kept):
        cfg = validate(apply_overrides(cfg.to_dict(), {k: v for k, v in kept.items() if k in saved_flat}))
    diffs = [d for d in diffs if d[0] not in kept]
    allowed = {"train.epochs", "train.max_steps", "train.device"}  # a device change: check_resume_device
    refused = [d for d in diffs if d[0] not in allowed and not d[0].startswith("train.early_stopping")]
    longer = [
        (k, a, b) for k, a, b in diffs if k in ("train.epochs", "train.max_steps") and a and b and b > a
    ]
    if longer and not refused and cfg.scheduler.name.lower() in RUN_SHAPED:
        k, a, b = longer[0]
        warn(
            f"{k}: {a} -> {b}, but the {cfg.scheduler.name} schedule was planned for the first run and has "
            "ended: the extra training runs at its final learning rate (about 0 for cosine and linear). "
            "Start a new run with --out for a schedule over the longer run."
        )
    if refused:
        lines = "; ".join(f"{k}: {a!r} in the run, {b!r} now" for k, a, b in refused)
        raise ConfigError(
            f"--resume refused: the config differs from the run's ({lines}). Resume with the same "
            f"config (only train.epochs and train.max_steps may change), or start a new run with --out."
        )
    return state, cfg


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _config_diffs(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    fa, fb = _flatten(a), _flatten(b)
    ignore = {"name"}
    return [
        (k, fa.get(k), fb.get(k))
        for k in sorted(set(fa) | set(fb))
        if k not in ignore and fa.get(k) != fb.get(k)
    ]
