"""The training loop: `Trainer.fit` runs epochs of `train_step` (forward -> loss -> backward -> step)
and `evaluate` (under `torch.inference_mode()`), with checkpoints holding the full training state so
that a killed run resumes bit-identically.

    trainer = Trainer(model, train_loader, val_loader, loss_fn=nn.CrossEntropyLoss(),
                      optimizer=torch.optim.SGD(model.parameters(), lr=0.1), train=TrainConfig(epochs=3))
    history = trainer.fit()

`Trainer.from_datasets(model, train_set, val_set, ...)` wraps Datasets in loaders and fills in a
default loss and optimizer.

Cost notes: the loop never syncs the host with the device per step. The epoch's sums live on the
device (`EpochStats`) and the non-finite guard keeps references to the losses (`NonFiniteGuard`);
both are read every `log_every_n_steps` steps, at epoch ends and before every checkpoint write (so a
non-finite model is never saved).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainlab.config import TrainConfig
from trainlab.engine import checkpoint as ckpt
from trainlab.engine import distributed
from trainlab.engine.callbacks import Callback, CallbackList, EarlyStopping
from trainlab.engine.device import (
    apply_backend_flags,
    apply_determinism,
    device_state,
    resolve_channels_last,
    resolve_device,
    resolve_precision,
    unwrap,
)
from trainlab.engine.epoch_stats import EpochStats
from trainlab.engine.evaluate import evaluate
from trainlab.engine.guard import NonFiniteGuard
from trainlab.engine.memory import out_of_memory_guard
from trainlab.engine.monitor import Monitor, flat_logs
from trainlab.engine.signals import SignalCatcher
from trainlab.errors import Interrupted, RunFailed
from trainlab.metrics import TaskMetrics


class Trainer:
    """Trains `model` on `train_loader` (any iterable of (inputs, targets) batches with a length;
    trainlab's loaders add exact resume), validating on `val_loader` after every epoch.

    `train` holds the loop's settings (epochs, max_steps, device, grad_accum, grad_clip, precision,
    monitor, nan_policy, log_every_n_steps, ...: `TrainConfig`). `metrics` computes the validation
    metrics (default: the task's standard ones, sized by one forward pass). `checkpoint_dir` receives
    `last.pt`/`best.pt` (None: no checkpoints); `extra_state` is saved in them as it is.
    `flops_per_sample`/`peak_flops` give the MFU figure.
    """

    def __init__(
        self,
        model: nn.Module,
        train_loader: Any,
        val_loader: Any = None,
        *,
        loss_fn: Callable,
        optimizer: torch.optim.Optimizer,
        scheduler: Any = None,
        callbacks: list[Callback] = (),
        train: TrainConfig | None = None,
        task: str = "classification",
        metrics: TaskMetrics | None = None,
        checkpoint_dir: Path | None = None,
        extra_state: dict[str, Any] | None = None,
        rank: int = 0,
        world_size: int = 1,
        flops_per_sample: float | None = None,
        peak_flops: float | None = None,
    ):
        for name, data in (("train_loader", train_loader), ("val_loader", val_loader)):
            if isinstance(data, torch.utils.data.Dataset) and not hasattr(data, "__iter__"):
                raise TypeError(
                    f"Trainer: {name} is a Dataset; pass a loader, or use Trainer.from_datasets(...)"
                )
        self.cfg = cfg = train or TrainConfig()
        self.determinism_note = apply_determinism(cfg.deterministic)  # before the first cuBLAS call
        self.device = resolve_device(cfg.device)
        self.rank, self.world_size, self.is_main = rank, world_size, rank == 0
        self.model, self.loss_fn, self.optimizer, self.scheduler = (
            model.to(self.device),
            loss_fn,
            optimizer,
            scheduler,
        )
        self.train_loader, self.val_loader = train_loader, val_loader
        self.task, self.metrics = task, metrics
        self.checkpoint_dir, self.extra_state = checkpoint_dir, extra_state or {}
        self.flops_per_sample, self.peak_flops = flops_per_sample, peak_flops
        self.precision = resolve_precision(cfg.precision, self.device)
        self.autocast, self.scaler = self.precision.autocast(self.device), self.precision.scaler(self.device)
        apply_backend_flags(
            self.precision,
            self.device,
            unwrap(self.model),
            fixed_shapes=hasattr(train_loader, "x"),
            deterministic=cfg.deterministic,
        )
        sample = None if isinstance(cfg.channels_last, bool) else _sample_inputs(train_loader)
        self.channels_last = (
            cfg.channels_last
            if isinstance(cfg.channels_last, bool)
            else sample is not None
            and resolve_channels_last(unwrap(self.model), sample, cfg.channels_last, self.device)
        )
        self.monitor = Monitor.for_run(cfg.monitor, cfg.mode, task, val_loader is not None)
        stopping = (
            [
                EarlyStopping(
                    self.monitor.with_min_delta(cfg.early_stopping.min_delta), cfg.early_stopping.patience
                )
            ]
            if cfg.early_stopping.patience
            else []
        )
        self.callbacks = CallbackList([*callbacks, *stopping])
        self.guard = NonFiniteGuard(cfg, checkpoint_dir)
        self.signals = SignalCatcher(announce=self.is_main)
        # Training state (all of it goes into checkpoints).
        self.epoch = 0  # completed epochs
        self.global_step = 0  # optimizer steps
        self.best: dict[str, Any] = {"metric": self.monitor.name, "value": None, "epoch": None}
        self.history: list[dict[str, Any]] = []
        self.samples_seen, self.train_time, self.data_wait = 0, 0.0, 0.0
        self.stats: EpochStats | None = None  # the epoch in progress
        # This process only (for the summary; not saved).
        self.eval_samples, self.eval_time, self.last_eval_speed = 0, 0.0, None
        self.status, self.stop_reason = "running", None
        self.caller_ends_training = False  # run.py calls on_train_end itself, after testing the best weights
        self._resume_progress: dict[str, float] | None = None
        self._resume_rng: dict[str, Any] | None = None
        self._batch_index = 0

    @classmethod
    def from_datasets(
        cls,
        model: nn.Module,
        train_data: Any,
        val_data: Any = None,
        *,
        loss_fn: Callable | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        task: str | None = None,
        metrics: list[str] | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        seed: int = 0,
        quiet: bool = False,
        out: Any = None,
        **kwargs: Any,
    ) -> Trainer:
        """A Trainer for Datasets (or loaders): batches of `batch_size` in a seeded order (tensor data on
        the fast path), cross-entropy and Adam(lr=1e-3) unless given, the task from the loss, a progress
        bar and one line per epoch unless `quiet`; with `out`, a run directory there (metrics.jsonl,
        TensorBoard, checkpoints, summary.json, model.safetensors, report.html). Other keyword arguments
        go to `Trainer(...)`, or to `TrainConfig` (epochs=3, device="cpu", ...)."""
        from trainlab.data.loaders import as_loader, default_eval_batch_size
        from trainlab.logging import ConsoleProgress

        own = {
            k: kwargs.pop(k)
            for k in (
                "scheduler",
                "callbacks",
                "train",
                "checkpoint_dir",
                "extra_state",
                "rank",
                "world_size",
                "flops_per_sample",
                "peak_flops",
            )
            if k in kwargs
        }
        cfg = own.pop("train", None) or TrainConfig()
        cfg = TrainConfig.model_validate({**cfg.model_dump(), **kwargs}) if kwargs else cfg
        device = resolve_device(cfg.device)
        loss_fn = loss_fn or nn.CrossEntropyLoss()
        task = task or task_from_loss(loss_fn)
        place = dict(seed=seed, device=device, rank=own.get("rank", 0), world_size=own.get("world_size", 1))
        train_loader = as_loader(train_data, batch_size, shuffle=True, **place)
        val_loader = (
            as_loader(
                val_data, eval_batch_size or default_eval_batch_size(batch_size), shuffle=False, **place
            )
            if val_data is not None
            else None
        )
        model = model.to(device)
        if metrics is not None or val_loader is not None:
            metrics = TaskMetrics.for_output(
                task, _output_of(model, val_loader or train_loader, device), metrics
            )
        steps, epochs = (
            steps_per_epoch(len(train_loader), cfg.grad_accum),
            total_epochs(cfg, len(train_loader)),
        )
        if not quiet:
            own["callbacks"] = [*own.get("callbacks", ()), ConsoleProgress(steps, epochs)]
        if out is not None:
            from trainlab.outputs import TrainerRunDirectory

            run = TrainerRunDirectory(out, steps, epochs, quiet)
            own["callbacks"] = [*own.get("callbacks", ()), *run.callbacks]
            own.setdefault("checkpoint_dir", run.run.checkpoints)
        return cls(
            model,
            train_loader,
            val_loader,
            loss_fn=loss_fn,
            optimizer=optimizer or torch.optim.Adam(model.parameters(), lr=1e-3),
            train=cfg,
            task=task,
            metrics=metrics,
            **own,
        )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": "trainlab-checkpoint-1",
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": ckpt.rng_state(),
            "loader": self.train_loader.state_dict() if hasattr(self.train_loader, "state_dict") else None,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "best": dict(self.best),
            "callbacks": {type(c).__name__: c.state_dict() for c in self.callbacks.callbacks},
            "history": list(self.history),
            "nan_skipped": self.guard.skipped,
            "samples_seen": self.samples_seen,
            "train_time": self.train_time,
            "data_wait": self.data_wait,
            "epoch_progress": self._epoch_progress(),
            "world_size": self.world_size,
            **device_state(self.device),
            **self.extra_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if state.get("loader") is not None and hasattr(self.train_loader, "load_state_dict"):
            self.train_loader.load_state_dict(state["loader"])
        self.epoch, self.global_step = int(state["epoch"]), int(state["global_step"])
        self.best = dict(state["best"])
        self.history = list(state["history"])
        self.guard.skipped = int(state.get("nan_skipped", 0))
        self.samples_seen = int(state.get("samples_seen", 0))
        self.train_time = float(state.get("train_time", 0.0))
        self.data_wait = float(state.get("data_wait", 0.0))
        self._resume_progress = state.get("epoch_progress")
        for c in self.callbacks.callbacks:
            if type(c).__name__ in state.get("callbacks", {}):
                c.load_state_dict(state["callbacks"][type(c).__name__])
        self._resume_rng = self._rank_resume(state)
        if self._resume_rng is not None:
            ckpt.set_rng_state(self._resume_rng)  # last: everything above may have drawn random numbers

    def _rank_resume(self, state: dict[str, Any]) -> dict[str, Any] | None:
        """This rank's RNG state and partial epoch sums from a checkpoint (saved once, by rank 0, with
        every rank's entry in `rank_states`). Returns the RNG state to restore (None: keep the fresh one)."""
        saved_world = int(state.get("world_size", 1))
        own = distributed.own_rank_state(state, self.rank, self.world_size)
        if own is not None:  # the same number of processes: continue exactly
            self._resume_progress = own.get("epoch_progress")
            return own["rng"]
        if saved_world == self.world_size:  # a single-process checkpoint
            return state["rng"]
        # Another number of processes: same fraction of the epoch; rank 0 carries the partial sums.
        message = distributed.world_size_change(
            saved_world, self.world_size, getattr(self.train_loader, "batch_size", 0)
        )
        if self.is_main:
            print(f"note: {message}", file=sys.stderr, flush=True)
        if hasattr(self.train_loader, "load_state_dict") and state.get("loader") is not None:
            loader = dict(state["loader"])
            loader["position"] = distributed.rescale_position(
                int(loader["position"]), saved_world, self.world_size
            )
            self.train_loader.load_state_dict(loader)
        self._resume_progress = (
            (distributed.merge_progress(state.get("rank_states")) or state.get("epoch_progress"))
            if self.is_main
            else None
        )
        return state["rng"] if self.is_main else None

    def _epoch_progress(self) -> dict[str, float] | None:
        """The unfinished epoch's sums (mid-epoch saves only; None at an epoch's end)."""
        return self.stats.state_dict() if self.stats is not None else None

    def save(self, name: str) -> None:
        rank_states = None
        if self.world_size > 1 and self.signals.received is None:
            # A collective (every rank calls save): each rank's RNG and partial sums go to rank 0, which
            # writes them into the one checkpoint. Not after a signal: ranks may be at different steps.
            rank_states = distributed.gather_rank_states(
                {"rng": ckpt.rng_state(), "epoch_progress": self._epoch_progress()}
            )
        if self.checkpoint_dir is None or not self.is_main:
            return
        self.guard.check()  # never write non-finite weights
        state = self.state_dict()
        if rank_states is not None:
            state["rank_states"] = rank_states
        where = (
            f"epoch {self.epoch + 1}, step {self.global_step} (batch {self._batch_index} of the epoch"
            if self.stats is not None
            else f"epoch {self.epoch}, step {self.global_step} (the epoch's end"
        )
        self.guard.check_weights(state["model"], name, where)
        ckpt.save_checkpoint(state, self.checkpoint_dir / name)

    # ------------------------------------------------------------------ the loop
    def fit(self, resume_state: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Train for `train.epochs` epochs (or `train.max_steps` steps); returns the history."""
        if resume_state is not None:
            self.load_state_dict(resume_state)
        self.total_epochs = total_epochs(self.cfg, len(self.train_loader))
        self.callbacks.call(
            "on_train_begin",
            {
                "model": self.model,
                "optimizer": self.optimizer,
                "scaler": self.scaler,
                "config": self.cfg,
                "run_dir": self.checkpoint_dir.parent if self.checkpoint_dir is not None else None,
            },
        )
        if self._resume_rng is not None:  # callbacks may have drawn random numbers
            ckpt.set_rng_state(self._resume_rng)
        self.signals.install()
        try:
            while self.epoch < self.total_epochs and not self._done():
                self._train_epoch()
                if self.callbacks.stop_training or self._done():
                    break
            self.status = "completed"
            self.stop_reason = next(
                (c.stop_reason for c in self.callbacks.callbacks if getattr(c, "stop_reason", None)), None
            )
        except Interrupted:
            self.status = "interrupted"
            raise
        except RunFailed:  # diverged, out of memory
            self.status = "failed"
            raise
        finally:
            self.signals.restore()
        if not self.caller_ends_training:
            self.callbacks.call(
                "on_train_end",  # a Trainer run: also what a run directory's summary needs
                {
                    "status": self.status,
                    "history": self.history,
                    "epoch": self.epoch,
                    "step": self.global_step,
                    "best": dict(self.best),
                    "task": self.task,
                    "samples_per_second": self.samples_seen / self.train_time
                    if self.train_time > 0
                    else None,
                },
            )
        return self.history

    def _train_epoch(self) -> None:
        """fetch -> step -> accumulate -> schedule -> log when due -> checkpoint/signal, then validate."""
        epoch, loader, accum = (
            self.epoch + 1,
            self.train_loader,
            self.cfg.grad_accum,
        )  # epochs are 1-based in logs
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(self.epoch)
        start = getattr(loader, "position", 0)
        self.callbacks.call("on_epoch_begin", epoch, {"position": start // accum})
        self.model.train()
        progress, self._resume_progress = self._resume_progress, None
        stats = self.stats = EpochStats.start(self.device, self.task, progress if start > 0 else None)
        n_batches, self._batch_index = len(loader), start
        t_fetch = time.perf_counter()
        for x, y in loader:
            x, y = self._to_device(x, y)
            stats.data_wait += time.perf_counter() - t_fetch
            self._batch_index += 1
            update = self._batch_index % accum == 0 or self._batch_index == n_batches
            with out_of_memory_guard(getattr(loader, "batch_size", len(y)), accum, device=self.device):
                result = self.train_step(x, y, update)
            if result is not None:  # None: skipped (nan_policy=skip)
                stats.add(*result, y)
            if update:
                self.global_step += 1
                if self.scheduler is not None:
                    self.scheduler.step_batch()
                self._after_step(epoch, len(y))
                if self._done():
                    break
            t_fetch = time.perf_counter()
        self.guard.check()
        train_logs = stats.epoch_logs(self.world_size)
        self.stats = None
        self.train_time += stats.elapsed
        self.data_wait += stats.data_wait
        self.samples_seen += stats.samples
        self.epoch += 1
        self._end_epoch(epoch, train_logs)

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, update: bool
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Forward, loss and backward on one batch, and the optimizer step when `update` (the last batch
        of a gradient accumulation). Returns (loss, output), or None for a batch skipped by
        `nan_policy: skip` (a non-finite loss or gradient: the weights stay as they were)."""
        with self.autocast():
            output = self.model(x)
            loss = self.loss_fn(output, y)
        where = (self.global_step, self.epoch + 1, self._batch_index)
        if self.guard.rejects(loss.detach(), *where):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        scaled = loss / self.cfg.grad_accum if self.cfg.grad_accum > 1 else loss
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        if update:
            if self.callbacks.has("on_after_backward"):
                self.callbacks.call(
                    "on_after_backward", self.global_step, {"model": self.model, "scaler": self.scaler}
                )
            if self.scaler is not None:
                self.scaler.unscale_(
                    self.optimizer
                )  # an fp16 step with Inf gradients is skipped by the scaler
            if self.cfg.grad_clip is not None or (self.guard.skip and self.scaler is None):
                norm = _grad_norm(self.model, self.cfg.grad_clip)
                if self.scaler is None and self.guard.rejects(norm, *where):
                    self.optimizer.zero_grad(set_to_none=True)
                    return None
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach(), output.detach()

    def _after_step(self, epoch: int, batch_size: int) -> None:
        """After an optimizer step: the interval's logs when due, a checkpoint when due, a signal."""
        logs: dict[str, Any] = {"epoch": epoch, "batch_size": batch_size, "steps_since": 1}
        if self.global_step % self.cfg.log_every_n_steps == 0:
            self.guard.check()
            logs.update(self.stats.interval_logs())
            logs["lr"] = self.optimizer.param_groups[0]["lr"]
            if len(self.optimizer.param_groups) > 1:  # per-layer learning rates: each group's own
                logs["lrs"] = {
                    str(g.get("name", i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)
                }
            if self.flops_per_sample and self.peak_flops:
                logs["mfu"] = logs["samples_per_second"] * self.flops_per_sample / self.peak_flops
                logs["mfu_peak"] = self.precision.peak_label
        if self.callbacks.has("on_batch_end"):
            self.callbacks.call("on_batch_end", self.global_step, logs)
        if self.cfg.checkpoint_every_n_steps and self.global_step % self.cfg.checkpoint_every_n_steps == 0:
            self.save("last.pt")
        if self.signals.received is not None:
            self.save("last.pt")  # the epoch's partial sums travel in epoch_progress
            # For the summary of this (interrupted) process only; not saved, so never counted twice.
            self.train_time += self.stats.seconds
            self.samples_seen += self.stats.samples
            self.data_wait += self.stats.data_wait
            raise Interrupted(self.signals.received)

    def _end_epoch(self, epoch: int, train_logs: dict[str, float]) -> None:
        """Validate, step the epoch schedule, keep the best weights, tell the callbacks, save."""
        val_logs = self.validate()
        flat = flat_logs(train_logs, val_logs)
        monitored = self.monitor.value(flat)
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scheduler is not None:
            self.scheduler.step_epoch(flat)
        self.history.append(
            {"epoch": epoch, "step": self.global_step, "lr": lr, "elapsed_seconds": self.train_time, **flat}
        )
        tie = flat.get(self.monitor.tie_break) if self.monitor.tie_break else None
        improved = self.monitor.is_improvement(monitored, self.best["value"], tie, self.best.get("tie_value"))
        if improved:
            self.best.update(
                value=monitored,
                epoch=epoch,
                **({"tie_break": self.monitor.tie_break, "tie_value": tie} if tie is not None else {}),
            )
        self.callbacks.call(
            "on_epoch_end",
            epoch,
            {
                "epoch": epoch,
                "step": self.global_step,
                "lr": lr,
                "train": train_logs,
                "val": val_logs,
                "monitored": monitored,
                "eval_samples_per_second": self.last_eval_speed if val_logs else None,
            },
        )
        if improved:
            self.save("best.pt")
        self.save("last.pt")
        if self.signals.received is not None:
            raise Interrupted(self.signals.received)

    def validate(self) -> dict[str, float] | None:
        if self.val_loader is None:
            return None
        if self.metrics is None:
            self.metrics = TaskMetrics.for_output(
                self.task, _output_of(self.model, self.val_loader, self.device)
            )
        stats: dict[str, float] = {}
        with out_of_memory_guard(
            getattr(self.val_loader, "batch_size", 0), evaluating=True, device=self.device
        ):
            logs, _ = evaluate(
                self.model,
                self.val_loader,
                self.loss_fn,
                self.metrics.to(self.device),
                self.device,
                self.autocast,
                stats=stats,
            )
        self.eval_samples += int(stats["samples"])
        self.eval_time += stats["seconds"]
        self.last_eval_speed = stats["samples"] / max(stats["seconds"], 1e-9)
        return logs

    # ------------------------------------------------------------------ using the trained model
    def evaluate(self, data: Any = None, batch_size: int = 256) -> dict[str, float]:
        """Loss and metrics on `data` (a Dataset or a loader; default: the validation loader)."""
        from trainlab.data.loaders import as_loader

        loader = (
            self.val_loader
            if data is None
            else as_loader(data, batch_size, shuffle=False, device=self.device)
        )
        if loader is None:
            raise ValueError("Trainer.evaluate: no data given and no validation loader")
        if self.metrics is None:
            self.metrics = TaskMetrics.for_output(self.task, _output_of(self.model, loader, self.device))
        logs, _ = evaluate(
            self.model, loader, self.loss_fn, self.metrics.to(self.device), self.device, self.autocast
        )
        return logs

    def predict(self, inputs: Any, batch_size: int = 256, probabilities: bool = True) -> torch.Tensor:
        """The model's outputs on `inputs` (a tensor of samples, a Dataset or a loader), in eval mode:
        class probabilities (classification), P(class 1) (binary) or values (regression); the raw
        outputs with `probabilities=False`."""
        from trainlab.metrics import probabilities as to_probabilities

        if isinstance(inputs, torch.Tensor):
            batches: Any = inputs.split(batch_size)
        else:
            from trainlab.data.loaders import as_loader

            batches = (x for x, _ in as_loader(inputs, batch_size, shuffle=False, device=self.device))
        was = self.model.training
        self.model.eval()
        with torch.inference_mode(), self.autocast():
            outputs = torch.cat([self.model(x.to(self.device)).float() for x in batches])
        self.model.train(was)
        return to_probabilities(self.task, outputs) if probabilities else outputs

    # ------------------------------------------------------------------ small helpers
    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def _done(self) -> bool:
        return self.cfg.max_steps is not None and self.global_step >= self.cfg.max_steps

    @property
    def nan_skipped(self) -> int:
        return self.guard.skipped


def steps_per_epoch(batches: int, grad_accum: int) -> int:
    """Optimizer steps in an epoch of `batches` batches (the last, partial accumulation steps too)."""
    return max(1, math.ceil(batches / grad_accum))


def total_epochs(cfg: TrainConfig, batches: int) -> int:
    """Epochs of the run: `train.epochs`, fewer when `train.max_steps` ends it first."""
    if cfg.max_steps is None:
        return cfg.epochs
    return min(cfg.epochs, math.ceil(cfg.max_steps / steps_per_epoch(batches, cfg.grad_accum)))


def _grad_norm(model: nn.Module, clip: float | None) -> torch.Tensor:
    """The total gradient norm (clipping to `clip` when given), on the device."""
    if clip is not None:
        return nn.utils.clip_grad_norm_(model.parameters(), clip)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return nn.utils.get_total_norm(grads) if grads else torch.zeros(())


def _sample_inputs(loader: Any) -> torch.Tensor | None:
    """Two inputs for the layout trial (None: the data has no tensor inputs, e.g. dicts)."""
    from trainlab.data.peek import sample_batch

    try:
        x, _ = sample_batch(loader)
        return x if isinstance(x, torch.Tensor) else None
    except Exception:  # noqa: BLE001 - only an optimisation depends on it
        return None


def _output_of(model: nn.Module, loader: Any, device: torch.device) -> torch.Tensor:
    """The model's output on two samples, in eval mode (sizes the metrics)."""
    from trainlab.data.peek import sample_batch

    x, _ = sample_batch(loader)
    was = model.training
    model.eval()
    with torch.inference_mode(), torch.random.fork_rng(devices=[]):
        out = model(x.to(device))
    model.train(was)
    return out


def task_from_loss(loss_fn: Callable) -> str:
    inner = getattr(loss_fn, "loss", loss_fn)
    if isinstance(inner, (nn.CrossEntropyLoss, nn.NLLLoss, nn.MultiMarginLoss)):
        return "classification"
    if isinstance(inner, (nn.BCEWithLogitsLoss, nn.BCELoss, nn.SoftMarginLoss)):
        return "binary"
    return "regression"
