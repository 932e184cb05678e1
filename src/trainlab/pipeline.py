"""Building the pipeline from a config: data, loaders, model (shape-checked), loss (checked against the
data's targets), optimizer, LR schedule and the monitored value; and the model's last preparations
(layout, DDP, torch.compile, FLOPs).
"""

from __future__ import annotations

import itertools
import random
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from trainlab.config import Config
from trainlab.data.base import DataBundle
from trainlab.data.loaders import default_eval_batch_size, make_loader
from trainlab.data.peek import sample_batch
from trainlab.engine import distributed
from trainlab.engine.device import (
    resolve_channels_last,
    resolve_compile,
    resolve_device,
    resolve_precision,
    unwrap,
)
from trainlab.engine.loop import steps_per_epoch
from trainlab.engine.monitor import Monitor
from trainlab.errors import ConfigError
from trainlab.registry import load_builtins


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


@dataclass
class Pipeline:
    config: Config
    bundle: DataBundle
    model: nn.Module
    loss_fn: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    monitor: Monitor
    train_loader: Any
    val_loader: Any
    test_loader: Any
    device: torch.device
    summary: str = ""


def build_pipeline(
    config: Config,
    bundle: DataBundle | None = None,
    rank: int = 0,
    world_size: int = 1,
    model: nn.Module | None = None,
) -> Pipeline:
    """Data, loaders, model (shape-checked by a dry forward pass), loss, optimizer and schedule.
    `model`: a module instance to use instead of building `config.model`."""
    from trainlab.data import build_data
    from trainlab.engine.optim import build_optimizer, build_scheduler
    from trainlab.losses import build_loss
    from trainlab.models import build_model, check_shapes, model_summary

    load_builtins()
    seed_everything(config.seed)
    device = resolve_device(config.train.device)
    resolve_precision(config.train.precision, device)  # a precision this device lacks is a config error now
    bundle = bundle or build_data(config)
    d = config.data
    loader_args = dict(
        seed=config.seed,
        device=device,
        num_workers=d.num_workers,
        pin_memory=d.pin_memory,
        persistent_workers=d.persistent_workers,
        in_memory=d.in_memory,
    )
    train_loader = make_loader(
        bundle.train,
        d.batch_size,
        shuffle=d.shuffle,
        drop_last=d.drop_last,
        rank=rank,
        world_size=world_size,
        **loader_args,
    )
    # Evaluation shards: every sample on exactly one rank (no padding), reduced by sums across ranks.
    val_set, test_set = (distributed.eval_shard(s, rank, world_size) for s in (bundle.val, bundle.test))
    val_loader = (
        make_loader(val_set, eval_batch_size(config), shuffle=False, **loader_args)
        if val_set is not None and len(bundle.val)
        else None
    )
    test_loader = (
        make_loader(test_set, eval_batch_size(config), shuffle=False, **loader_args)
        if test_set is not None and len(bundle.test)
        else None
    )
    if config.train.smoke:  # one batch of each evaluation split (the training steps: train.max_steps)
        val_loader, test_loader = (
            FirstBatches(loader, 1) if loader is not None else None for loader in (val_loader, test_loader)
        )
    if model is None:
        model = build_model(config.model, bundle.input_shape, bundle.output_dim, bundle.task)
    model = model.to(device)
    x, y = sample_batch(bundle.train)
    check_shapes(model, x.to(device), output_dim=bundle.output_dim)
    summary = model_summary(model, tuple(bundle.input_shape), device=str(device))
    loss_fn = build_loss(config.loss, bundle.task)
    check_loss(loss_fn, model, x.to(device), y.to(device), bundle.task)
    optimizer = build_optimizer(config.optimizer, model)
    monitor = Monitor.for_run(config.train.monitor, config.train.mode, bundle.task, val_loader is not None)
    scheduler = build_scheduler(
        config.scheduler,
        optimizer,
        steps_per_epoch(len(train_loader), config.train.grad_accum),
        config.train.epochs,
        config.train.max_steps,
        monitor,
    )
    return Pipeline(
        config,
        bundle,
        model,
        loss_fn,
        optimizer,
        scheduler,
        monitor,
        train_loader,
        val_loader,
        test_loader,
        device,
        summary,
    )


def eval_batch_size(config: Config) -> int:
    return config.data.eval_batch_size or default_eval_batch_size(config.data.batch_size)


class FirstBatches:
    """The first `n` batches of a loader (smoke runs)."""

    def __init__(self, loader: Any, n: int):
        self.loader, self.n = loader, n

    def __len__(self) -> int:
        return min(self.n, len(self.loader))

    def __iter__(self):
        state = self.loader.state_dict() if hasattr(self.loader, "state_dict") else None
        try:
            yield from itertools.islice(self.loader, self.n)
        finally:  # a resumable loader left mid-epoch would serve the rest of it next time
            if state is not None:
                self.loader.load_state_dict(state)


def check_loss(loss_fn: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str) -> None:
    """One loss evaluation on a batch, so that a loss/target mismatch is a config error before training."""
    model.eval()
    try:
        with torch.no_grad():
            loss_fn(model(x), y)
    except (RuntimeError, ValueError, IndexError) as e:
        raise ConfigError(
            f"loss: {type(getattr(loss_fn, 'loss', loss_fn)).__name__} cannot take this model's output "
            f"and the data's targets (task {task}, target dtype {y.dtype}, shape "
            f"{tuple(y.shape)}): {str(e).splitlines()[0]}"
        ) from None
    finally:
        model.train()


def prepare_model(pipe: Pipeline, rank: int, world_size: int) -> bool:
    """The model's layout, DDP wrapper and torch.compile, in that order (the layout is chosen before DDP
    or compile hold the parameters). Returns whether training runs channels-last."""
    cfg = pipe.config
    channels_last = False
    if cfg.train.channels_last is not False:
        x, _ = sample_batch(pipe.bundle.train)
        channels_last = resolve_channels_last(pipe.model, x, cfg.train.channels_last, pipe.device)
    if world_size > 1:
        pipe.model = distributed.wrap_model(pipe.model, pipe.device)  # rank 0's initial weights on every rank
        if rank > 0:  # its own random stream (dropout, batch augmentation); rank 0 keeps the 1-process one
            seed_everything(cfg.seed + 1_000_003 * rank)
    if resolve_compile(cfg.train.compile, pipe.device):
        pipe.model = compile_model(pipe.model, pipe.bundle, pipe.device)
    return channels_last


def compile_model(model: nn.Module, bundle: DataBundle, device: torch.device) -> nn.Module:
    """torch.compile, tried on one batch; where the backend is missing or fails,
    the eager model with a warning."""
    try:
        compiled = torch.compile(model)
        x, _ = sample_batch(bundle.train)
        saved = {k: v.clone() for k, v in model.state_dict().items()}  # e.g. BatchNorm statistics
        with torch.random.fork_rng(
            devices=[device] if device.type == "cuda" else []
        ):  # keep the training RNG
            compiled(x.to(device))
        model.load_state_dict(saved)
        return compiled
    except Exception as e:  # noqa: BLE001 - any backend failure means: train eagerly
        warnings.warn(
            f"train.compile: torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            f"training without it",
            stacklevel=2,
        )
        return model


def measure_flops(pipe: Pipeline) -> tuple[float | None, float | None]:
    """(FLOPs per training sample, the device's peak FLOP/s in the run's precision) for MFU; (None, None)
    when not countable."""
    from trainlab.engine.perf import flops_per_sample, peak_flops

    try:
        x, y = sample_batch(pipe.bundle.train)
        flops = flops_per_sample(unwrap(pipe.model), pipe.loss_fn, x.to(pipe.device), y.to(pipe.device))
    except Exception:  # noqa: BLE001 - FLOP counting is informative only
        return None, None
    dtype = resolve_precision(pipe.config.train.precision, pipe.device).dtype or torch.float32
    return flops, pipe.config.train.peak_flops or peak_flops(pipe.device, dtype)


def data_line(bundle: DataBundle) -> str:
    sizes = ", ".join(
        f"{k} {len(v)}"
        for k, v in (("train", bundle.train), ("val", bundle.val), ("test", bundle.test))
        if v is not None
    )
    classes = f", {bundle.output_dim} classes" if bundle.task == "classification" else ""
    target = f"; target {bundle.info['target']!r}" if bundle.info.get("target") is not None else ""
    return (
        f"data: {bundle.info.get('source', '?')} ({bundle.task}{classes}; input {tuple(bundle.input_shape)}"
        f"{target}; {sizes})"
    )
