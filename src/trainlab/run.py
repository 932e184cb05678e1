"""From a config to a finished run directory: build the pipeline, train, test the best checkpoint,
write the outputs. Everything the CLI does is a function here.

    run = trainlab.train("examples/mnist_mlp.yaml", optimizer__lr=0.1)   # or {"optimizer.lr": 0.1}
    run.history            # a table of per-epoch values
    run.best, run.final    # metrics
    run.model, run.run_dir
"""
from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainlab.config import Config, load_config, validate
from trainlab.data.base import ArrayDataset, DataBundle
from trainlab.data.loaders import TensorLoader, make_loader
from trainlab.engine import checkpoint as ckpt
from trainlab.engine import distributed
from trainlab.engine.callbacks import Callback
from trainlab.engine.device import resolve_channels_last
from trainlab.engine.loop import Interrupted, Trainer, evaluate, resolve_device, unwrap
from trainlab.errors import CheckpointError, ConfigError, TrainingDiverged, TrainlabError
from trainlab.logging import ConsoleProgress, MetricsFile, RunDir, TensorBoardScalars
from trainlab.metrics import TaskMetrics, probabilities
from trainlab.registry import load_builtins


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def distributed_env() -> tuple[int, int]:
    """(rank, world_size) from torchrun's environment (0, 1 when not distributed)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@dataclass
class Pipeline:
    config: Config
    bundle: DataBundle
    model: nn.Module
    loss_fn: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: Any
    val_loader: Any
    test_loader: Any
    device: torch.device
    summary: str = ""


def build_pipeline(config: Config, bundle: DataBundle | None = None, rank: int = 0, world_size: int = 1) -> Pipeline:
    """Data, loaders, model (shape-checked by a dry forward pass), loss, optimizer and schedule."""
    from trainlab.data import build_data
    from trainlab.engine.optim import build_optimizer, build_scheduler
    from trainlab.losses import build_loss
    from trainlab.models import build_model, check_shapes, model_summary

    load_builtins()
    seed_everything(config.seed)
    device = resolve_device(config.train.device)
    if config.train.precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision: fp16 needs a CUDA device (GradScaler); on CPU use bf16 or fp32")
    bundle = bundle or build_data(config)
    d = config.data
    loader_args = dict(seed=config.seed, device=device, num_workers=d.num_workers, pin_memory=d.pin_memory,
                       persistent_workers=d.persistent_workers, in_memory=d.in_memory)
    train_loader = make_loader(bundle.train, d.batch_size, shuffle=d.shuffle, drop_last=d.drop_last,
                               rank=rank, world_size=world_size, **loader_args)
    eval_bs = d.eval_batch_size or d.batch_size * 4
    # Evaluation shards: every sample on exactly one rank (no padding), reduced by sums across ranks.
    val_set, test_set = (distributed.eval_shard(s, rank, world_size) for s in (bundle.val, bundle.test))
    val_loader = make_loader(val_set, eval_bs, shuffle=False, **loader_args) if val_set is not None and len(bundle.val) else None
    test_loader = make_loader(test_set, eval_bs, shuffle=False, **loader_args) if test_set is not None and len(bundle.test) else None
    model = build_model(config.model, bundle.input_shape, bundle.output_dim, bundle.task).to(device)
    x, _ = _one_batch(bundle)
    check_shapes(model, x.to(device), output_dim=bundle.output_dim)
    summary = model_summary(model, tuple(bundle.input_shape), device=str(device))
    loss_fn = build_loss(config.loss, bundle.task)
    _check_loss(loss_fn, model, bundle, device)
    optimizer = build_optimizer(config.optimizer, model)
    steps_per_epoch = max(1, -(-len(train_loader) // config.train.grad_accum))
    scheduler = build_scheduler(config.scheduler, optimizer, steps_per_epoch, config.train.epochs,
                                config.train.max_steps)
    return Pipeline(config, bundle, model, loss_fn, optimizer, scheduler, train_loader, val_loader, test_loader,
                    device, summary)


def _one_batch(bundle: DataBundle, n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    ds = bundle.train
    if isinstance(ds, ArrayDataset):
        x = ds.x[:n]
        return (ds.transform(x) if ds.transform is not None else x), ds.y[:n]
    items = [ds[i] for i in range(min(n, len(ds)))]
    return torch.stack([torch.as_tensor(a) for a, _ in items]), torch.stack([torch.as_tensor(b) for _, b in items])


def _check_loss(loss_fn: Any, model: nn.Module, bundle: DataBundle, device: torch.device) -> None:
    """One loss evaluation on a batch, so that a loss/target mismatch is a config error before training."""
    x, y = _one_batch(bundle)
    model.eval()
    try:
        with torch.no_grad():
            loss_fn(model(x.to(device)), y.to(device))
    except (RuntimeError, ValueError, IndexError) as e:
        raise ConfigError(f"loss: {type(getattr(loss_fn, 'loss', loss_fn)).__name__} cannot take this model's output "
                          f"and the data's targets (task {bundle.task}, target dtype {y.dtype}, shape "
                          f"{tuple(y.shape)}): {str(e).splitlines()[0]}") from None
    finally:
        model.train()


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


def train(config: str | Path | dict[str, Any] | Config | None = None, overrides: list[str] | dict[str, Any] | None = None,
          *, out: str | Path | None = None, resume: bool = False, quiet: bool = False,
          callbacks: list[Callback] = (), **kw_overrides: Any) -> Run:
    """Train from a YAML path, a dict or a Config; `overrides` are dotted keys (`["optimizer.lr=0.1"]` or
    `{"optimizer.lr": 0.1}`); keyword overrides use `__` for dots (`optimizer__lr=0.1`)."""
    overrides = dict(overrides) if isinstance(overrides, dict) else list(overrides or [])
    if kw_overrides:
        extra = {k.replace("__", "."): v for k, v in kw_overrides.items()}
        overrides = {**overrides, **extra} if isinstance(overrides, dict) else \
            [*overrides, *(f"{k}={_yaml_value(v)}" for k, v in extra.items())]
    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    if isinstance(config, Config) and overrides:
        from trainlab.config import apply_overrides
        cfg = validate(apply_overrides(config.to_dict(), overrides))
    if cfg.data.k_fold and cfg.data.fold is None:
        from trainlab.kfold import train_kfold
        return train_kfold(cfg, out=out, quiet=quiet)
    if out is None:
        rank, world_size, _ = distributed.setup(resolve_device(cfg.train.device))
        # Under torchrun every rank uses rank 0's choice (rank 0 may have created the folder already).
        out = distributed.broadcast_object(default_run_dir(cfg, existing=resume or distributed.restarted())
                                           if rank == 0 else None)
    return _train_one(cfg, Path(out), resume=resume, quiet=quiet, callbacks=list(callbacks))


def _yaml_value(v: Any) -> str:
    import yaml
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def _train_one(cfg: Config, out: Path, *, resume: bool, quiet: bool, callbacks: list[Callback]) -> Run:
    rank, world_size, _ = distributed.setup(resolve_device(cfg.train.device))  # joins torchrun's group
    is_main = rank == 0
    resume_state = None
    restarted = distributed.restarted()
    if restarted and (out / "checkpoints" / "last.pt").exists():
        resume = True  # an elastic restart continues from the last checkpoint (none yet: from the start)
    if resume:
        resume_state, cfg = _resume_state(out, cfg)
    elif not restarted and (out / "checkpoints" / "last.pt").exists():  # every rank stops, not only rank 0
        raise TrainlabError(f"{out} already holds a run; use --resume to continue it, or --out for a new folder")
    run = RunDir(out) if is_main else None
    if run is not None:
        ckpt.clean_temp_files(run.checkpoints)
    pipe = build_pipeline(cfg, rank=rank, world_size=world_size)
    # The layout is chosen before DistributedDataParallel or torch.compile hold the parameters (the
    # Trainer keeps the choice).
    train_cfg = cfg.train
    if cfg.train.channels_last is not False:
        with torch.random.fork_rng(devices=[]):
            x, _ = _one_batch(pipe.bundle, 2)
        train_cfg = cfg.train.model_copy(update={"channels_last": resolve_channels_last(
            pipe.model, x, cfg.train.channels_last, pipe.device)})
    if world_size > 1:
        pipe.model = distributed.wrap_model(pipe.model, pipe.device)  # rank 0's initial weights on every rank
        if rank > 0:  # its own random stream (dropout, batch augmentation); rank 0 keeps the 1-process one
            seed_everything(cfg.seed + 1_000_003 * rank)
    if cfg.train.compile:
        pipe.model = compile_model(pipe.model, pipe.bundle, pipe.device)
    # output_dim: predict and eval rebuild the model from the checkpoint alone (without the data).
    extra = {"config": cfg.to_dict(), "preprocessing": {**pipe.bundle.preprocessing, "output_dim": pipe.bundle.output_dim}}
    cbs: list[Callback] = []
    writer = None
    if run is not None:
        run.write_config(cfg.to_dict())
        (run.path / "model_summary.txt").write_text(pipe.summary + "\n")
        if not quiet:
            print(pipe.summary)
            print(_data_line(pipe.bundle))
            for note in pipe.bundle.info.get("notes", []):  # issue 16: the data layer's notes (image cache)
                print(f"data: {note}")
            if world_size > 1:
                accum = f" x grad_accum {cfg.train.grad_accum}" if cfg.train.grad_accum > 1 else ""
                print(f"distributed: {world_size} processes x batch {cfg.data.batch_size}{accum} = "
                      f"effective batch size {world_size * cfg.data.batch_size * cfg.train.grad_accum}")
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run.tensorboard), purge_step=(resume_state or {}).get("epoch", 0) + 1 if resume_state else None)
        cbs += [MetricsFile(run.metrics, truncate_after_step=resume_state["global_step"] if resume_state else None,
                            completed_epochs=resume_state["epoch"] if resume_state else None),
                TensorBoardScalars(writer),
                ConsoleProgress(len(pipe.train_loader), cfg.train.epochs, quiet=quiet)]
        cbs += _optional_callbacks(cfg, run, pipe, writer)
        run.update_summary(status="running", name=cfg.name, task=pipe.bundle.task,
                           class_names=pipe.bundle.class_names, data_info=pipe.bundle.info)
    trainer = Trainer(pipe.model, pipe.train_loader, pipe.val_loader, loss_fn=pipe.loss_fn, optimizer=pipe.optimizer,
                      scheduler=pipe.scheduler, task=pipe.bundle.task,
                      metrics=TaskMetrics(pipe.bundle.task, pipe.bundle.num_classes if pipe.bundle.task == "classification" else None,
                                          pipe.bundle.output_dim, cfg.metrics).to(pipe.device),
                      seed=cfg.seed, callbacks=cbs + list(callbacks) + distributed.fault_callbacks(rank), train=train_cfg,
                      checkpoint_dir=run.checkpoints if run else None, extra_state=extra, rank=rank,
                      world_size=world_size)
    trainer.caller_ends_training = True
    _measure_flops(trainer, pipe, cfg)
    status = "failed"
    error: BaseException | None = None
    try:
        trainer.fit(resume_state)
        status = "completed"
    except Interrupted as e:
        status, error = "interrupted", e
    except TrainingDiverged as e:
        status, error = "failed", e
    finally:
        if status == "failed" and error is None and run is not None:
            run.update_summary(status="failed")
    final, best = _finish(trainer, pipe, run, cfg, status, writer, quiet)
    if error is not None:
        raise error
    return Run(out, cfg, unwrap(pipe.model), trainer.history, best, final, status,
               run.read_summary() if run else {})


def compile_model(model: nn.Module, bundle: DataBundle, device: torch.device) -> nn.Module:
    """torch.compile, tried on one batch; where the backend is missing or fails, the eager model with a warning."""
    import warnings

    try:
        compiled = torch.compile(model)
        x, _ = _one_batch(bundle)
        saved = {k: v.clone() for k, v in model.state_dict().items()}  # e.g. BatchNorm statistics
        with torch.random.fork_rng(devices=[]):  # the trial forward must not move the training RNG
            compiled(x.to(device))
        model.load_state_dict(saved)
        return compiled
    except Exception as e:  # noqa: BLE001 - any backend failure means: train eagerly
        warnings.warn(f"train.compile: torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                      f"training without it", stacklevel=2)
        return model


def _data_line(bundle: DataBundle) -> str:
    sizes = ", ".join(f"{k} {len(v)}" for k, v in (("train", bundle.train), ("val", bundle.val), ("test", bundle.test))
                      if v is not None)
    classes = f", {bundle.output_dim} classes" if bundle.task == "classification" else ""
    return f"data: {bundle.info.get('source', '?')} ({bundle.task}{classes}; input {tuple(bundle.input_shape)}; {sizes})"


def _optional_callbacks(cfg: Config, run: RunDir, pipe: Pipeline, writer: Any) -> list[Callback]:
    """Callbacks from other modules (diagnosis statistics, TensorBoard images), when present."""
    cbs: list[Callback] = []
    try:
        from trainlab.diagnose.gradients import LayerStatsCallback
        cbs.append(LayerStatsCallback(run.path))
    except ImportError:
        pass
    try:
        from trainlab.report.tensorboard_extras import TensorBoardExtras
        x, y = _one_batch(pipe.bundle, 16)
        cbs.append(TensorBoardExtras(writer, cfg.train.histogram_every, (x, y), pipe.bundle.class_names,
                                     run_dir=run.path))
    except ImportError:
        pass
    return cbs


def _measure_flops(trainer: Trainer, pipe: Pipeline, cfg: Config) -> None:
    from trainlab.engine.perf import flops_per_sample, peak_flops

    try:
        x, y = _one_batch(pipe.bundle, 2)
        trainer.flops_per_sample = flops_per_sample(unwrap(pipe.model), pipe.loss_fn, x.to(pipe.device), y.to(pipe.device))
        trainer.peak_flops = cfg.train.peak_flops or peak_flops(pipe.device)
    except Exception:  # noqa: BLE001 - FLOP counting is informative only
        trainer.flops_per_sample = None


def _resume_state(out: Path, cfg: Config) -> tuple[dict[str, Any], Config]:
    last = out / "checkpoints" / "last.pt"
    if not last.exists():
        raise CheckpointError(f"--resume: no checkpoint to resume from at {last}")
    state = ckpt.load_checkpoint(last)
    saved = state.get("config") or {}
    diffs = _config_diffs(saved, cfg.to_dict())
    allowed = {"train.epochs", "train.max_steps"}
    refused = [d for d in diffs if d[0] not in allowed and not d[0].startswith("train.early_stopping")]
    if refused:
        lines = "; ".join(f"{k}: {a!r} in the run, {b!r} now" for k, a, b in refused)
        raise ConfigError(f"--resume refused: the config differs from the run's ({lines}). Resume with the same "
                          f"config (only train.epochs and train.max_steps may change), or start a new run with --out.")
    if diffs:
        cfg = validate({**cfg.to_dict()})
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
    return [(k, fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if k not in ignore and fa.get(k) != fb.get(k)]


def _finish(trainer: Trainer, pipe: Pipeline, run: RunDir | None, cfg: Config, status: str, writer: Any,
            quiet: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Test the best checkpoint, write summary.json, model.safetensors, predictions and the report."""
    final: dict[str, Any] = {}
    last_row = trainer.history[-1] if trainer.history else {}
    final["train"] = {k[6:]: v for k, v in last_row.items() if k.startswith("train_")}
    final["val"] = {k[4:]: v for k, v in last_row.items() if k.startswith("val_")}
    best = {**trainer.best}
    best_row = next((r for r in trainer.history if r["epoch"] == best.get("epoch")), None)
    if best_row:
        best.update({k: v for k, v in best_row.items() if k.startswith("val_") or k.startswith("train_")})
    if status == "completed":
        _load_best(trainer, run)
        distributed.broadcast_weights(trainer.model)  # every rank tests the best weights rank 0 loaded
        metrics = TaskMetrics(pipe.bundle.task, pipe.bundle.num_classes if pipe.bundle.task == "classification" else None,
                              pipe.bundle.output_dim, cfg.metrics).to(pipe.device)
        for split, loader in (("val", pipe.val_loader), ("test", pipe.test_loader)):
            if loader is None:
                continue
            logs, kept = evaluate(trainer.model, loader, pipe.loss_fn, metrics, pipe.device, trainer.autocast,
                                  keep_outputs=run is not None or trainer.world_size > 1)
            kept = distributed.gather_eval_outputs(kept, trainer.rank, trainer.world_size)  # whole split on rank 0
            if split == "test":
                final["test"] = logs
            if run is not None and kept is not None:
                _save_predictions(run, split, kept, pipe, loader)
    if run is None:
        return final, best
    if status == "completed" or run.best.exists():
        _write_safetensors(run)
    summary = run.update_summary(
        status=status, epochs_completed=trainer.epoch, global_step=trainer.global_step, best=best, final=final,
        samples_per_second=(trainer.samples_seen / trainer.train_time) if trainer.train_time > 0 else None,
        data_wait_fraction=trainer.data_wait / trainer.train_time if trainer.train_time > 0 else None,
        eval_samples_per_second=trainer.eval_samples / trainer.eval_time if trainer.eval_time > 0 else None,
        flops_per_sample=trainer.flops_per_sample,
        mfu=((trainer.samples_seen / trainer.train_time) * trainer.flops_per_sample / trainer.peak_flops)
        if trainer.flops_per_sample and trainer.train_time > 0 and getattr(trainer, "peak_flops", None) else None,
        peak_flops=getattr(trainer, "peak_flops", None), nan_skipped=trainer.nan_skipped,
        channels_last=trainer.channels_last, threads=torch.get_num_threads() if pipe.device.type == "cpu" else None,
        time_to_target=_time_to_target(trainer), train_time_seconds=trainer.train_time)
    test_for_logs = {"epoch": trainer.epoch, "step": trainer.global_step, "test": final.get("test"), "status": status}
    trainer.callbacks.call("on_train_end", test_for_logs)
    if writer is not None:
        writer.close()
    if summary.get("samples_per_second") is None:
        run.update_summary(samples_per_second=None)
    try:
        from trainlab.report import write_report
        write_report(run.path)
    except ImportError:
        _minimal_report(run)
    if not quiet:
        wait = summary.get("data_wait_fraction")
        if wait is not None and wait > 0.3 and cfg.data.num_workers == 0 and not isinstance(pipe.train_loader, TensorLoader):
            print(f"\nnote: {wait:.0%} of the training time waited for data (decoded in this process); "
                  f"data.num_workers=N decodes in N worker processes (worth it with cores to spare)")
        print(f"\nrun directory: {run.path}")
        if final.get("test"):
            print("test: " + " ".join(f"{k}={v:.4f}" for k, v in final["test"].items()))
        print(f"report: {run.report}")
    return final, best


def _time_to_target(trainer: Trainer) -> dict[str, Any] | None:
    """Seconds of training until validation accuracy first reached 0.97 (the default example's target)."""
    for row in trainer.history:
        if (row.get("val_accuracy") or 0) >= 0.97:
            return {"metric": "val_accuracy", "target": 0.97, "epoch": row["epoch"],
                    "seconds": row.get("elapsed_seconds")}
    return None


def _load_best(trainer: Trainer, run: RunDir | None) -> None:
    if run is None or not run.best.exists():
        return
    state = ckpt.load_checkpoint(run.best)
    unwrap(trainer.model).load_state_dict(state["model"])


def _write_safetensors(run: RunDir) -> None:
    from safetensors.torch import save_file

    source = run.best if run.best.exists() else run.last
    state = ckpt.load_checkpoint(source)["model"]
    tensors = {k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    tmp = run.safetensors.with_name(".model.safetensors.tmp")
    save_file(tensors, str(tmp), metadata={"source": source.name})
    os.replace(tmp, run.safetensors)


def _save_predictions(run: RunDir, split: str, kept: dict[str, torch.Tensor], pipe: Pipeline, loader: Any) -> None:
    task = pipe.bundle.task
    output = probabilities(task, kept["output"]).numpy()
    target = kept["target"].numpy()
    arrays: dict[str, Any] = {"target": target, "output": output}
    ds = pipe.bundle.val if split == "val" else pipe.bundle.test
    if isinstance(ds, ArrayDataset):
        x = ds.x
        if x.dim() == 2 and x.shape[1] == 1:
            arrays["inputs"] = x.float().numpy()
        if x.dim() == 4 and task in ("classification", "binary"):
            pred = output.argmax(-1) if task == "classification" else (output > 0.5).astype(int)
            wrong = np.nonzero(pred != target.reshape(pred.shape))[0][:64]
            if len(wrong):
                imgs = x[torch.as_tensor(wrong)]
                imgs = imgs.float() / 255 if imgs.dtype == torch.uint8 else imgs.float()
                arrays.update(images=imgs.numpy(), image_index=wrong, image_target=target[wrong], image_pred=pred[wrong])
    run.predictions.mkdir(exist_ok=True)
    np.savez_compressed(run.predictions / f"{split}.npz", **arrays)


def _minimal_report(run: RunDir) -> None:
    import html

    run.report.write_text(f"<!doctype html><title>{html.escape(run.path.name)}</title><pre>"
                          f"{html.escape(run.summary.read_text())}</pre>")


# ----------------------------------------------------------------------------- loading a finished run

@dataclass
class LoadedRun:
    run_dir: Path
    config: Config
    bundle: DataBundle
    model: nn.Module
    loss_fn: Any
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    state: dict[str, Any]
    device: torch.device


def load_run(run_dir: str | Path, checkpoint: str = "best.pt", with_data: bool = True) -> LoadedRun:
    """The run's config, data (rebuilt from the config), loss and model with the checkpoint's weights."""
    from trainlab.data import build_data
    from trainlab.losses import build_loss
    from trainlab.models import build_model

    load_builtins()
    run = RunDir.__new__(RunDir)
    run.path = Path(run_dir)
    if not run.path.is_dir():
        raise TrainlabError(f"run directory not found: {run.path}")
    path = run.checkpoints / checkpoint
    if not path.exists():
        path = run.last
    state = ckpt.load_checkpoint(path)
    config = validate(state["config"])
    device = resolve_device(config.train.device)
    seed_everything(config.seed)
    bundle = build_data(config) if with_data else None
    prep = state.get("preprocessing") or {}
    input_shape = tuple(prep.get("input_shape") or (bundle.input_shape if bundle else ()))
    task = prep.get("task") or (bundle.task if bundle else "classification")
    output_dim = int(prep.get("output_dim") or (bundle.output_dim if bundle else
                                                 len(prep.get("class_names") or []) if task == "classification" else 1))
    model = build_model(config.model, input_shape, output_dim, task).to(device)
    if bundle is not None:
        x, _ = _one_batch(bundle)
        with torch.no_grad():
            model.eval()
            model(x.to(device))  # materialises Lazy layers before loading weights
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not match the model of its config: {str(e).splitlines()[0]}") from None
    model.eval()
    return LoadedRun(run.path, config, bundle, model, build_loss(config.loss, task), run.read_metrics(),
                     run.read_summary(), state, device)


def evaluate_run(run_dir: str | Path, split: str = "test") -> dict[str, float]:
    loaded = load_run(run_dir)
    ds = {"train": loaded.bundle.train, "val": loaded.bundle.val, "test": loaded.bundle.test}[split]
    if ds is None or len(ds) == 0:
        raise TrainlabError(f"--split {split}: this run's data has no {split} split")
    cfg = loaded.config
    loader = make_loader(ds, cfg.data.eval_batch_size or cfg.data.batch_size * 4, shuffle=False, device=loaded.device,
                         in_memory=cfg.data.in_memory)
    b = loaded.bundle
    metrics = TaskMetrics(b.task, b.num_classes if b.task == "classification" else None, b.output_dim, cfg.metrics).to(loaded.device)
    logs, _ = evaluate(loaded.model, loader, loaded.loss_fn, metrics, loaded.device)
    return logs
