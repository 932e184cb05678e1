"""The training loop: `Trainer.fit` runs epochs of `train_step` (zero_grad -> forward -> loss ->
backward -> step) and `evaluate` (under `torch.inference_mode()`), with checkpoints holding the full
training state so that a killed run resumes bit-identically.

Cost notes: the loop never syncs the host with the device per step. Losses and the count of
non-finite losses are accumulated as device tensors and read every `log_every_n_steps` steps, at
epoch ends and before every checkpoint write (so a non-finite model is never saved).
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from trainlab.config import TrainConfig
from trainlab.data.loaders import TensorLoader, make_loader
from trainlab.engine import checkpoint as ckpt
from trainlab.engine import distributed
from trainlab.engine.callbacks import Callback, CallbackList, EarlyStopping, monitor_mode
from trainlab.engine.device import resolve_channels_last, resolve_device, unwrap
from trainlab.engine.evaluate import evaluate
from trainlab.engine.signals import SignalCatcher
from trainlab.errors import ConfigError, Interrupted, TrainingDiverged
from trainlab.metrics import TaskMetrics, prepare




class Trainer:
    """Trains any `nn.Module` on any `Dataset`/`DataLoader` with a loss callable and an optimizer.

        trainer = Trainer(model, train_set, val_set, loss_fn=nn.CrossEntropyLoss(),
                          optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epochs=3)
        history = trainer.fit()

    Keyword arguments not listed take their values from `TrainConfig` (epochs, max_steps, device,
    grad_accum, grad_clip, precision, monitor, log_every_n_steps, ...).
    """

    def __init__(self, model: nn.Module, train_data: Dataset | DataLoader | TensorLoader,
                 val_data: Dataset | DataLoader | TensorLoader | None = None, *,
                 loss_fn: Callable | None = None, optimizer: torch.optim.Optimizer | None = None,
                 scheduler: Any = None, task: str | None = None, metrics: TaskMetrics | list[str] | None = None,
                 batch_size: int = 64, eval_batch_size: int | None = None, seed: int = 0,
                 callbacks: list[Callback] = (), train: TrainConfig | None = None,
                 checkpoint_dir: Any = None, extra_state: dict[str, Any] | None = None,
                 rank: int = 0, world_size: int = 1, **train_kwargs: Any):
        self.cfg = (train or TrainConfig()).model_copy(update=train_kwargs) if train_kwargs else (train or TrainConfig())
        if train_kwargs:
            TrainConfig.model_validate(self.cfg.model_dump())  # validate the overrides
        self.device = resolve_device(self.cfg.device)
        self.rank, self.world_size, self.is_main = rank, world_size, rank == 0
        self.seed = seed
        self.model = model.to(self.device)
        self.loss_fn = loss_fn or nn.CrossEntropyLoss()
        self.optimizer = optimizer or torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.scheduler = scheduler
        self.task = task or _task_from_loss(self.loss_fn)
        self.train_loader = self._loader(train_data, batch_size, shuffle=True)
        eval_bs = eval_batch_size or batch_size * 4  # no gradients kept: a larger batch is cheaper per sample
        self.val_loader = self._loader(val_data, eval_bs, shuffle=False) if val_data is not None else None
        # after the loaders: the layout is tried on two of their inputs
        sample = self._sample_inputs() if self.cfg.channels_last is not False else None
        self.channels_last = sample is not None and resolve_channels_last(
            unwrap(self.model), sample, self.cfg.channels_last, self.device)
        self.metric_names = metrics if isinstance(metrics, list) else None
        self.metrics = metrics if isinstance(metrics, TaskMetrics) else None
        self.callbacks = CallbackList(list(callbacks))
        self.checkpoint_dir = checkpoint_dir  # a folder (Path) for last.pt/best.pt, or None
        self.extra_state = extra_state or {}
        self.mode = monitor_mode(self.cfg.monitor, self.cfg.mode)
        if self.cfg.early_stopping.patience:
            self.callbacks = CallbackList([*self.callbacks.callbacks, EarlyStopping(
                self.cfg.monitor, self.mode, self.cfg.early_stopping.patience, self.cfg.early_stopping.min_delta)])
        self._setup_precision()
        # Training state (all of it goes into checkpoints).
        self.epoch = 0  # completed epochs
        self.global_step = 0  # optimizer steps
        self.best: dict[str, Any] = {"metric": self.cfg.monitor, "value": None, "epoch": None}
        self.history: list[dict[str, Any]] = []
        self.nan_skipped = 0
        self.samples_seen = 0
        self.train_time = 0.0
        self.data_wait = 0.0
        self.eval_samples, self.eval_time = 0, 0.0  # validation passes (this process; for samples/s)
        self.last_eval_speed: float | None = None
        self.status = "running"
        self.flops_per_sample: float | None = None
        self.signals = SignalCatcher(announce=self.is_main)
        # run.py calls on_train_end itself, after testing the best checkpoint (with the test metrics)
        self.caller_ends_training = False
        self._watched: list[tuple[torch.Tensor, int, int, int]] = []  # see _watch
        self._batch_index = 0
        # Sums of the epoch in progress (plain numbers), saved by mid-epoch checkpoints so that a
        # resumed epoch logs the same train loss/accuracy as an uninterrupted one.
        self._epoch_progress: dict[str, float] | None = None
        self._resume_progress: dict[str, float] | None = None
        self._resume_rng: dict[str, Any] | None = None

    # ------------------------------------------------------------------ setup helpers
    def _loader(self, data: Any, batch_size: int, shuffle: bool) -> Any:
        if isinstance(data, (TensorLoader, DataLoader)) or hasattr(data, "state_dict") and hasattr(data, "__iter__") \
                and not isinstance(data, Dataset):
            return data
        return make_loader(data, batch_size, shuffle=shuffle, seed=self.seed, device=self.device,
                           rank=self.rank, world_size=self.world_size)

    def _setup_precision(self) -> None:
        p = self.cfg.precision
        if p == "fp16" and self.device.type != "cuda":
            raise ConfigError("train.precision: fp16 needs a CUDA device (GradScaler); on CPU use bf16 or fp32")
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(p)
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=dtype)) if dtype else contextlib.nullcontext
        self.scaler = torch.amp.GradScaler("cuda") if p == "fp16" else None

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
            "nan_skipped": self.nan_skipped,
            "samples_seen": self.samples_seen,
            "train_time": self.train_time,
            "data_wait": self.data_wait,
            "epoch_progress": self._epoch_progress,
            "world_size": self.world_size,
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
        self.nan_skipped = int(state.get("nan_skipped", 0))
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
        message = distributed.world_size_change(saved_world, self.world_size, getattr(self.train_loader, "batch_size", 0))
        if self.is_main:
            print(f"note: {message}", file=sys.stderr, flush=True)
        if hasattr(self.train_loader, "load_state_dict") and state.get("loader") is not None:
            loader = dict(state["loader"])
            loader["position"] = distributed.rescale_position(int(loader["position"]), saved_world, self.world_size)
            self.train_loader.load_state_dict(loader)
        self._resume_progress = (distributed.merge_progress(state.get("rank_states")) or state.get("epoch_progress")) \
            if self.is_main else None
        return state["rng"] if self.is_main else None

    def save(self, name: str) -> None:
        rank_states = None
        if self.world_size > 1 and self.signals.received is None:
            # A collective (every rank calls save): each rank's RNG and partial sums go to rank 0, which
            # writes them into the one checkpoint. Not after a signal: ranks may be at different steps.
            rank_states = distributed.gather_rank_states({"rng": ckpt.rng_state(), "epoch_progress": self._epoch_progress})
        if self.checkpoint_dir is None or not self.is_main:
            return
        self._check_finite()  # never write non-finite weights
        state = self.state_dict()
        if rank_states is not None:
            state["rank_states"] = rank_states
        bad = ckpt.nonfinite_tensors(state["model"])
        if bad:  # finite losses but a step with Inf/NaN gradients (no grad_clip to see them) broke the weights
            mid_epoch = self._epoch_progress is not None  # set by mid-epoch saves only
            where = (f"epoch {self.epoch + 1}, step {self.global_step} (batch {getattr(self.train_loader, 'position', '?')}"
                     f" of the epoch" if mid_epoch else f"epoch {self.epoch}, step {self.global_step} (the epoch's end")
            raise TrainingDiverged(
                f"the weights became NaN/Inf by {where}; in {', '.join(bad[:3])}); "
                f"{name} was not written and keeps the last finite weights. Try a lower optimizer.lr, "
                f"train.grad_clip, or train.nan_policy=skip.")
        ckpt.save_checkpoint(state, self.checkpoint_dir / name)

    # ------------------------------------------------------------------ the loop
    def train_step(self, x: torch.Tensor, y: torch.Tensor, update: bool) -> torch.Tensor:
        """Forward, loss and backward on one batch; optimizer step when `update` (gradient accumulation)."""
        with self.autocast():
            output = self.model(x)
            loss = self.loss_fn(output, y)
        scaled = loss / self.cfg.grad_accum if self.cfg.grad_accum > 1 else loss
        if self.scaler is not None:
            self.scaler.scale(scaled).backward()
        else:
            scaled.backward()
        if self._train_correct is not None:
            with torch.no_grad():  # on the device: no sync; a logit > 0 is a probability > 0.5
                if self.task == "classification" and y.dim() == 1:
                    self._train_correct += (output.argmax(-1) == y).sum()
                elif self.task == "binary":
                    self._train_correct += ((output.view(-1) > 0) == (y.view(-1) > 0.5)).sum()
                else:
                    preds, target = prepare(self.task, output, y)
                    self._train_correct += (preds.argmax(-1) == target).sum()
        if update:
            if self.callbacks.has("on_after_backward"):
                self.callbacks.call("on_after_backward", self.global_step, {"model": self.model})
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            if self.cfg.grad_clip is not None:
                norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
                self._watch(norm)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def _watch(self, value: torch.Tensor) -> None:
        """Keeps a loss or gradient norm (a device scalar) with where it came from, for `_check_finite`:
        no host sync per step, only a reference kept until the next check."""
        self._watched.append((value, self.global_step, self.epoch + 1, self._batch_index))

    def _check_finite(self) -> None:
        """Raises TrainingDiverged naming the first non-finite loss or gradient since the last check."""
        if not self._watched:
            return
        values = torch.stack([v if v.dtype == torch.float32 and v.dim() == 0 else v.detach().float().reshape(())
                              for v, *_ in self._watched])  # losses are float32 scalars already: no op each
        bad = ~torch.isfinite(values)
        if bool(bad.any()):  # note: host sync, once per log interval and before every save
            _, step, epoch, batch = self._watched[int(bad.nonzero()[0])]
            raise TrainingDiverged(
                f"the loss or a gradient became NaN/Inf at epoch {epoch}, step {step + 1} (batch {batch} of the "
                f"epoch); last.pt and best.pt keep the last finite weights. Try a lower optimizer.lr, "
                f"train.grad_clip, or train.nan_policy=skip.")
        self._watched.clear()

    def fit(self, resume_state: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Train for `train.epochs` epochs (or `train.max_steps` steps); returns the history."""
        if resume_state is not None:
            self.load_state_dict(resume_state)
        steps_per_epoch = max(1, math.ceil(len(self.train_loader) / self.cfg.grad_accum))
        total_epochs = self.cfg.epochs
        if self.cfg.max_steps is not None:
            total_epochs = min(total_epochs, math.ceil(self.cfg.max_steps / steps_per_epoch))
        self.total_epochs = total_epochs
        self._watched: list[tuple[torch.Tensor, int, int, int]] = []
        self._batch_index = 0
        self.callbacks.call("on_train_begin", {"trainer": self, "model": self.model, "optimizer": self.optimizer})
        if resume_state is not None and self._resume_rng is not None:  # callbacks may have drawn random numbers
            ckpt.set_rng_state(self._resume_rng)
        self.signals.install()
        self.model.train()
        try:
            while self.epoch < total_epochs and not self._done():
                self._train_epoch(steps_per_epoch)
                if self.callbacks.stop_training or self._done():
                    break
            self.status = "completed"
        except Interrupted:
            self.status = "interrupted"
            raise
        except TrainingDiverged:
            self.status = "failed"
            raise
        finally:
            self.signals.restore()
        if not self.caller_ends_training:
            self.callbacks.call("on_train_end", {"status": self.status, "history": self.history,
                                                 "epoch": self.epoch, "step": self.global_step})
        return self.history

    def _done(self) -> bool:
        return self.cfg.max_steps is not None and self.global_step >= self.cfg.max_steps

    def _train_epoch(self, steps_per_epoch: int) -> None:
        epoch = self.epoch + 1  # 1-based in logs
        loader = self.train_loader
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(self.epoch)
        start_position = getattr(loader, "position", 0)
        self.callbacks.call("on_epoch_begin", epoch, {"position": start_position // self.cfg.grad_accum})
        self.model.train()
        accum = self.cfg.grad_accum
        n_batches = len(loader)
        running = torch.zeros((), device=self.device)  # sum of loss*batch since the last log
        epoch_loss = torch.zeros((), device=self.device)  # the same over the epoch's earlier intervals
        self._train_correct = torch.zeros((), device=self.device, dtype=torch.long) \
            if self.task in ("classification", "binary") else None
        epoch_samples = interval_samples = 0
        t_epoch = t_log = time.perf_counter()
        wait = 0.0
        progress, self._resume_progress = self._resume_progress, None
        if progress and start_position > 0:  # resuming mid-epoch: continue the epoch's sums
            epoch_loss += progress["loss_sum"] - progress["running_sum"]
            running += progress["running_sum"]
            epoch_samples, interval_samples = int(progress["samples"]), int(progress["interval_samples"])
            if self._train_correct is not None:
                self._train_correct += int(progress["correct"])
            t_epoch -= progress["seconds"]
            wait = progress["data_wait"]

        def snapshot() -> None:  # note: host sync; only before a checkpoint write
            self._epoch_progress = {
                "loss_sum": float(epoch_loss + running), "running_sum": float(running), "samples": epoch_samples,
                "interval_samples": interval_samples, "seconds": time.perf_counter() - t_epoch, "data_wait": wait,
                "correct": int(self._train_correct) if self._train_correct is not None else 0}
        batch_index = start_position
        t_fetch = time.perf_counter()
        for x, y in loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            wait += time.perf_counter() - t_fetch
            batch_index += 1
            self._batch_index = batch_index
            update = batch_index % accum == 0 or batch_index == n_batches
            if self.cfg.nan_policy == "skip":
                loss = self._skip_nonfinite_step(x, y, update)
            else:
                loss = self.train_step(x, y, update)
                self._watch(loss)
            bs = len(y)
            running.add_(loss.float(), alpha=bs)  # one op (loss.float() is the loss itself in fp32)
            epoch_samples += bs
            interval_samples += bs
            if not update:
                t_fetch = time.perf_counter()
                continue
            self.global_step += 1
            if self.scheduler is not None:
                self.scheduler.step_batch()
            logs: dict[str, Any] = {"epoch": epoch, "batch_size": bs, "steps_since": 1}
            if self.global_step % self.cfg.log_every_n_steps == 0:
                self._check_finite()
                now = time.perf_counter()
                logs["loss"] = float(running) / max(interval_samples, 1)  # note: host sync, once per interval
                logs["lr"] = self.optimizer.param_groups[0]["lr"]
                if len(self.optimizer.param_groups) > 1:  # per-layer learning rates: each group's own
                    logs["lrs"] = {str(g.get("name", i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)}
                logs["samples_per_second"] = interval_samples / max(now - t_log, 1e-9)
                logs["data_wait_fraction"] = wait / max(now - t_epoch, 1e-9)  # of the epoch so far
                if self.flops_per_sample and getattr(self, "peak_flops", None):
                    logs["mfu"] = logs["samples_per_second"] * self.flops_per_sample / self.peak_flops
                epoch_loss += running
                running.zero_()
                interval_samples, t_log = 0, now
            if self.callbacks.has("on_batch_end"):
                self.callbacks.call("on_batch_end", self.global_step, logs)
            if self.cfg.checkpoint_every_n_steps and self.global_step % self.cfg.checkpoint_every_n_steps == 0:
                snapshot()
                self.save("last.pt")
            if self.signals.received is not None:
                snapshot()
                self._on_interrupt(t_epoch, epoch_samples, wait)
            if self._done():
                break
            t_fetch = time.perf_counter()
        self._epoch_progress = None
        self._check_finite()
        epoch_loss += running
        elapsed = time.perf_counter() - t_epoch
        correct = self._train_correct
        if self.world_size > 1:  # the epoch's train numbers over every rank's shard (one collective)
            loss_sum, n, hits = distributed.all_reduce_sums(epoch_loss, epoch_samples, 0 if correct is None else correct)
            epoch_loss, epoch_samples = torch.tensor(loss_sum), int(n)
            correct = None if correct is None else torch.tensor(hits)
        self.train_time += elapsed
        self.data_wait += wait
        self.samples_seen += epoch_samples
        train_logs = {"loss": float(epoch_loss) / max(epoch_samples, 1)}
        if correct is not None:
            train_logs["accuracy"] = float(correct) / max(epoch_samples, 1)
        train_logs["samples_per_second"] = epoch_samples / max(elapsed, 1e-9)
        train_logs["data_wait_fraction"] = wait / max(elapsed, 1e-9)
        self.epoch += 1
        val_logs = self.validate()
        monitored = self._monitored(train_logs, val_logs)
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scheduler is not None:
            self.scheduler.step_epoch({**{f"train_{k}": v for k, v in train_logs.items()},
                                       **{f"val_{k}": v for k, v in (val_logs or {}).items()}})
        row = {"epoch": epoch, "step": self.global_step, "lr": lr, "train": train_logs, "val": val_logs,
               "monitored": monitored, "eval_samples_per_second": self.last_eval_speed if val_logs else None}
        self.history.append({"epoch": epoch, "step": self.global_step, "lr": lr, "elapsed_seconds": self.train_time,
                             **{f"train_{k}": v for k, v in train_logs.items()},
                             **{f"val_{k}": v for k, v in (val_logs or {}).items()}})
        improved = monitored is not None and (self.best["value"] is None or (
            monitored < self.best["value"] if self.mode == "min" else monitored > self.best["value"]))
        if improved:
            self.best.update(value=monitored, epoch=epoch)
        self.callbacks.call("on_epoch_end", epoch, row)
        if improved:
            self.save("best.pt")
        self.save("last.pt")
        if self.signals.received is not None:
            raise Interrupted(self.signals.received)

    def validate(self) -> dict[str, float] | None:
        if self.val_loader is None:
            return None
        if self.metrics is None:
            self.metrics = self._make_metrics()
        stats: dict[str, float] = {}
        logs, _ = evaluate(self.model, self.val_loader, self.loss_fn, self.metrics, self.device, self.autocast,
                           stats=stats)
        self.eval_samples += int(stats["samples"])
        self.eval_time += stats["seconds"]
        self.last_eval_speed = stats["samples"] / max(stats["seconds"], 1e-9)
        return logs

    def _make_metrics(self) -> TaskMetrics | None:
        x = self._peek_inputs()
        with torch.inference_mode():
            was = self.model.training
            self.model.eval()
            out = self.model(x[:2].to(self.device))
            self.model.train(was)
        num_classes = out.shape[-1] if self.task == "classification" else None
        return TaskMetrics(self.task, num_classes, out.shape[-1] if out.dim() > 1 else 1, self.metric_names).to(self.device)

    def _sample_inputs(self) -> torch.Tensor | None:
        """`_peek_inputs` without moving any random stream the training run depends on (None: the data
        gives no tensor inputs to peek at, e.g. a user's dataset of dicts)."""
        generator = getattr(getattr(self.train_loader, "transform", None), "generator", None)  # a BatchTransform's
        saved = generator.get_state() if generator is not None else None
        try:
            with torch.random.fork_rng(devices=[]):
                x = self._peek_inputs()
            return x if isinstance(x, torch.Tensor) else None
        except Exception:  # noqa: BLE001 - only an optimisation depends on it
            return None
        finally:
            if generator is not None:
                generator.set_state(saved)

    def _peek_inputs(self) -> torch.Tensor:
        """Two inputs from the data, read without moving any loader's position."""
        loader = self.val_loader or self.train_loader
        if isinstance(loader, TensorLoader):
            return loader.x[:2] if loader.transform is None else loader.transform(loader.x[:2])
        ds = loader.dataset
        return torch.stack([torch.as_tensor(ds[i][0]) for i in range(min(2, len(ds)))])

    def _monitored(self, train_logs: dict[str, float], val_logs: dict[str, float] | None) -> float | None:
        split, _, name = self.cfg.monitor.partition("_")
        source = {"train": train_logs, "val": val_logs or {}}.get(split)
        if source is None or (split == "val" and val_logs is None):
            source, name = train_logs, name if split in ("train", "val") else self.cfg.monitor
        if name not in source:
            available = [f"train_{k}" for k in train_logs] + [f"val_{k}" for k in (val_logs or {})]
            raise ConfigError(f"train.monitor: {self.cfg.monitor!r} is not a logged value; available: {', '.join(available)}")
        return source[name]

    def _skip_nonfinite_step(self, x: torch.Tensor, y: torch.Tensor, update: bool) -> torch.Tensor:
        """nan_policy=skip: a batch whose loss or gradients are not finite changes nothing (one sync per step)."""
        with self.autocast():
            output = self.model(x)
            loss = self.loss_fn(output, y)
        if not torch.isfinite(loss):
            self.nan_skipped += 1
            self.optimizer.zero_grad(set_to_none=True)
            return torch.zeros((), device=self.device)
        (loss / self.cfg.grad_accum).backward()
        if update:
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            norm = nn.utils.get_total_norm(grads) if grads else torch.zeros(())
            if not torch.isfinite(norm):
                self.nan_skipped += 1
                self.optimizer.zero_grad(set_to_none=True)
                return torch.zeros((), device=self.device)
            if self.cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def _on_interrupt(self, t_epoch: float, epoch_samples: int, wait: float) -> None:
        self.save("last.pt")  # the epoch's partial sums travel in epoch_progress
        # For the summary of this (interrupted) process only; not saved, so never counted twice.
        self.train_time += time.perf_counter() - t_epoch
        self.samples_seen += epoch_samples
        self.data_wait += wait
        raise Interrupted(self.signals.received)


def _task_from_loss(loss_fn: Callable) -> str:
    inner = getattr(loss_fn, "loss", loss_fn)
    if isinstance(inner, (nn.CrossEntropyLoss, nn.NLLLoss, nn.MultiMarginLoss)):
        return "classification"
    if isinstance(inner, (nn.BCEWithLogitsLoss, nn.BCELoss, nn.SoftMarginLoss)):
        return "binary"
    return "regression"
