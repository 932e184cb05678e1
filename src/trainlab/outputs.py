"""The end of a training run: test the best and the last weights, and write summary.json,
model.safetensors, predictions/*.npz and the report."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from trainlab.data.base import ArrayDataset
from trainlab.data.loaders import ResumableDataLoader
from trainlab.engine import checkpoint as ckpt
from trainlab.engine import distributed
from trainlab.engine.callbacks import Callback
from trainlab.engine.device import unwrap
from trainlab.engine.evaluate import evaluate
from trainlab.engine.loop import Trainer
from trainlab.logging import RunDir
from trainlab.metrics import TaskMetrics, probabilities
from trainlab.pipeline import Pipeline


def test_runs(trainer: Trainer, pipe: Pipeline, run: RunDir | None) -> dict[str, Any]:
    """`final["test_last"]` (the last weights), then the best checkpoint loaded: `final["test"]`, and
    predictions/{val,test}.npz of the best weights."""
    final: dict[str, Any] = {}
    metrics = TaskMetrics.for_data(pipe.bundle, pipe.config.metrics).to(pipe.device)
    # best.pt holds the last weights when the last epoch was the best: test once, not twice
    last_is_best = trainer.best.get("epoch") == trainer.epoch
    if pipe.test_loader is not None and not last_is_best:
        final["test_last"], _ = evaluate(
            trainer.model, pipe.test_loader, pipe.loss_fn, metrics, pipe.device, trainer.autocast
        )
    if run is not None and run.best.exists() and not last_is_best:
        unwrap(trainer.model).load_state_dict(ckpt.load_checkpoint(run.best)["model"])
    distributed.broadcast_weights(trainer.model)  # every rank tests the best weights rank 0 loaded
    for split, loader in (("val", pipe.val_loader), ("test", pipe.test_loader)):
        if loader is None:
            continue
        logs, kept = evaluate(
            trainer.model,
            loader,
            pipe.loss_fn,
            metrics,
            pipe.device,
            trainer.autocast,
            keep_outputs=run is not None or trainer.world_size > 1,
        )
        kept = distributed.gather_eval_outputs(
            kept, trainer.rank, trainer.world_size
        )  # whole split on rank 0
        if split == "test":
            final["test"] = logs
            final.setdefault("test_last", logs)
        if run is not None and kept is not None:
            save_predictions(run, split, kept, pipe)
    return final


def write_summary(
    trainer: Trainer, pipe: Pipeline, run: RunDir, status: str, final: dict[str, Any], best: dict[str, Any]
) -> dict[str, Any]:
    speed = trainer.samples_seen / trainer.train_time if trainer.train_time > 0 else None
    mfu = (
        speed * trainer.flops_per_sample / trainer.peak_flops
        if speed and trainer.flops_per_sample and trainer.peak_flops
        else None
    )
    return run.update_summary(
        status=status,
        epochs_completed=trainer.epoch,
        global_step=trainer.global_step,
        best=best,
        final=final,
        samples_per_second=speed,
        data_wait_fraction=trainer.data_wait / trainer.train_time if trainer.train_time > 0 else None,
        eval_samples_per_second=trainer.eval_samples / trainer.eval_time if trainer.eval_time > 0 else None,
        flops_per_sample=trainer.flops_per_sample,
        mfu=mfu,
        peak_flops=trainer.peak_flops,
        peak_flops_precision=trainer.precision.peak_label,
        precision=trainer.precision.name,
        nan_skipped=trainer.nan_skipped,
        channels_last=trainer.channels_last,
        threads=torch.get_num_threads() if pipe.device.type == "cpu" else None,
        time_to_target=time_to_target(trainer.history, pipe.config.train.target_metric),
        train_time_seconds=trainer.train_time,
        stop_reason=trainer.stop_reason,
        diverging=divergence(trainer, pipe) if status == "completed" else None,
    )


def divergence(trainer: Trainer, pipe: Pipeline) -> dict[str, Any] | None:
    """The last epoch's training loss against the best constant prediction's, for the standard losses
    (cross-entropy, binary cross-entropy, MSE): 10x the baseline or more, or not finite, is a run that
    diverged or never trained, reported even though it completed."""
    import math

    from trainlab.data.splits import targets_of
    from trainlab.diagnose.flowchart import baseline_loss

    loss = (trainer.history[-1] if trainer.history else {}).get("train_loss")
    if loss is None or pipe.config.loss.name not in (
        "auto",
        "CrossEntropyLoss",
        "BCEWithLogitsLoss",
        "MSELoss",
    ):
        return None
    base = baseline_loss(pipe.bundle.task, targets_of(pipe.bundle.train))
    if math.isfinite(loss) and (base <= 0 or loss < 10 * base):
        return None
    return {"train_loss": loss, "baseline_loss": base, "ratio": loss / base if base > 0 else None}


def best_and_final(trainer: Trainer) -> tuple[dict[str, Any], dict[str, Any]]:
    """summary.json's `best` (the monitored value, its epoch and that epoch's values) and the last
    epoch's train/val values for `final`."""
    return best_and_final_of(trainer.best, trainer.history)


def best_and_final_of(best: dict[str, Any], history: list[dict[str, Any]]) -> tuple[dict, dict]:
    last_row = history[-1] if history else {}
    final = {
        "train": {k[6:]: v for k, v in last_row.items() if k.startswith("train_")},
        "val": {k[4:]: v for k, v in last_row.items() if k.startswith("val_")},
    }
    best = {k: v for k, v in best.items() if k not in ("tie_break", "tie_value")}  # checkpoint-only
    best_row = next((r for r in history if r["epoch"] == best.get("epoch")), None)
    if best_row:
        best.update({k: v for k, v in best_row.items() if k.startswith("val_") or k.startswith("train_")})
    return best, final


def time_to_target(history: list[dict[str, Any]], target: dict[str, float] | None) -> dict[str, Any] | None:
    """Seconds of training until a value first reached its target (`train.target_metric`, e.g.
    `{val_accuracy: 0.97}`; a loss-like value must fall to it)."""
    if not target:
        return None
    ((metric, goal),) = target.items()
    lower = any(w in metric for w in ("loss", "error", "mse", "mae"))
    for row in history:
        value = row.get(metric)
        if value is not None and (value <= goal if lower else value >= goal):
            return {
                "metric": metric,
                "target": goal,
                "epoch": row["epoch"],
                "seconds": row.get("elapsed_seconds"),
            }
    return None


def write_safetensors(run: RunDir) -> None:
    from safetensors.torch import save_file

    source = run.best if run.best.exists() else run.last
    state = ckpt.load_checkpoint(source)["model"]
    tensors = {k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    tmp = run.safetensors.with_name(".model.safetensors.tmp")
    save_file(tensors, str(tmp), metadata={"source": source.name})
    os.replace(tmp, run.safetensors)


def save_predictions(run: RunDir, split: str, kept: dict[str, torch.Tensor], pipe: Pipeline) -> None:
    task = pipe.bundle.task
    output = probabilities(task, kept["output"]).numpy()
    target = kept["target"].numpy()
    arrays: dict[str, Any] = {"target": target, "output": output}
    ds = pipe.bundle.val if split == "val" else pipe.bundle.test
    if isinstance(ds, ArrayDataset) and len(ds) == len(target):  # (a smoke run tests one batch only)
        shape = ds.storage.shape  # the shape of a sample: that of a row
        if len(shape) == 2 and shape[1] == 1:
            arrays["inputs"] = ds.x.float().numpy()
        if len(shape) == 4 and task in ("classification", "binary"):
            pred = output.argmax(-1) if task == "classification" else (output > 0.5).astype(int)
            wrong = np.nonzero(pred != target.reshape(pred.shape))[0][:64]
            if len(wrong):
                imgs = ds.gather(torch.as_tensor(wrong))
                imgs = imgs.float() / 255 if imgs.dtype == torch.uint8 else imgs.float()
                arrays.update(
                    images=imgs.numpy(), image_index=wrong, image_target=target[wrong], image_pred=pred[wrong]
                )
    run.predictions.mkdir(exist_ok=True)
    np.savez_compressed(run.predictions / f"{split}.npz", **arrays)


def closing_lines(summary: dict[str, Any], pipe: Pipeline, run: RunDir) -> list[str]:
    """What the user reads at the end of training."""
    lines = []
    if summary.get("diverging"):
        d = summary["diverging"]
        times = f"{d['ratio']:.3g}x" if d.get("ratio") else "far above"
        lines.append(
            f"\nwarning: the final training loss ({d['train_loss']:.4g}) is {times} the loss of a constant "
            f"prediction ({d['baseline_loss']:.4g}): the run diverged or did not learn. Try a lower "
            f"optimizer.lr (trainlab lr-find), then trainlab doctor {run.path}"
        )
    wait = summary.get("data_wait_fraction")
    if (
        wait is not None
        and wait > 0.3
        and pipe.config.data.num_workers == 0
        and isinstance(pipe.train_loader, ResumableDataLoader)  # decoding or transforming per sample
    ):
        lines.append(
            f"\nnote: {wait:.0%} of the training time waited for data (decoded in this process); "
            f"data.num_workers=N decodes in N worker processes (worth it with cores to spare)"
        )
    if summary.get("stop_reason"):
        lines.append(summary["stop_reason"])
    lines.append(f"\nrun directory: {run.path}")
    final, best = summary.get("final") or {}, summary.get("best") or {}
    if final.get("test"):
        where = (
            f"best checkpoint: epoch {best['epoch']} by {best['metric']}"
            if best.get("epoch")
            else "last weights"
        )
        lines.append(f"test: {_values(final['test'])} ({where})")
        if final.get("test_last") and final["test_last"] != final["test"]:
            lines.append(
                f"test (last weights, epoch {summary.get('epochs_completed')}): "
                + _values(final["test_last"])
            )
    lines.append(f"report: {run.report}")
    return lines


def _values(logs: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in logs.items())


class TrainerRunDirectory:
    """The run directory of a Python `Trainer` (`Trainer.from_datasets(..., out=DIR)`): the callbacks
    that write metrics.jsonl, TensorBoard and layer statistics while training, and at the end
    summary.json, model.safetensors and report.html. (A config run writes these through `run.py`.)"""

    def __init__(self, out: str | Any, steps_per_epoch: int, epochs: int, quiet: bool):
        from torch.utils.tensorboard import SummaryWriter

        from trainlab.claim import claim_run_dir
        from trainlab.diagnose.gradients import LayerStatsCallback
        from trainlab.logging import MetricsFile, TensorBoardScalars

        self.run = claim_run_dir(out)  # one owner; a folder that holds a run is refused
        self.quiet = quiet
        self.writer = SummaryWriter(str(self.run.tensorboard))
        self.run.update_summary(status="running")
        self.callbacks = [
            MetricsFile(self.run.metrics),
            TensorBoardScalars(self.writer),
            LayerStatsCallback(self.run.path),
            _FinishRun(self),
        ]


class _FinishRun(Callback):
    def __init__(self, owner: TrainerRunDirectory):
        self.owner = owner

    def on_train_end(self, logs: dict[str, Any]) -> None:
        from trainlab.claim import release_all
        from trainlab.report import write_report

        run = self.owner.run
        best, final = best_and_final_of(logs.get("best") or {}, logs.get("history") or [])
        if run.best.exists() or run.last.exists():
            write_safetensors(run)
        run.update_summary(
            status=logs["status"],
            epochs_completed=logs["epoch"],
            global_step=logs["step"],
            best=best,
            final=final,
            task=logs.get("task"),
            samples_per_second=logs.get("samples_per_second"),
        )
        self.owner.writer.close()
        write_report(run.path)
        release_all()
        if not self.owner.quiet:
            print(f"\nrun directory: {run.path}\nreport: {run.report}")
