"""Optimizers (any torch.optim class, with parameter groups) and LR schedules (any
torch.optim.lr_scheduler class, short preset names, linear warmup in front).

    optimizer = build_optimizer(config.optimizer, model)
    schedule = build_scheduler(config.scheduler, optimizer, steps_per_epoch, epochs)
    ...after each optimizer step:       schedule.step_batch()
    ...after validation, each epoch:    schedule.step_epoch({"val_loss": 0.31, "val_accuracy": 0.9})

Units. A schedule steps once per optimizer step (`interval: step`) or once per epoch (`interval:
epoch`); every count in its arguments (step_size, milestones, T_max, total_iters, warmup) is in
that unit. The default is `step` for onecycle and CyclicLR, `epoch` otherwise, with one exception:
`warmup_steps` in front of a schedule whose shape only depends on the run length (`none`, `cosine`,
`linear`, `polynomial` with no T_max/total_iters given) makes the whole schedule per step, since the
curve is the same, only smoother. `warmup_epochs` with `interval: step` is converted exactly
(epochs x steps_per_epoch); `warmup_steps` with a per-epoch schedule is a ConfigError (an epoch-wise
schedule cannot change the LR inside an epoch) that says how to fix it.

Preset names fill their run-length arguments: `cosine` T_max, `linear` (a linear decay from lr to 0)
and `polynomial` total_iters all default to the run length after warmup; `onecycle` takes max_lr =
each group's lr and total_steps = steps_per_epoch x epochs. Torch class names (`LinearLR`, ...) keep
torch's own defaults, except the required T_max of CosineAnnealingLR and OneCycleLR's lengths.
"""

from __future__ import annotations

import copy
import fnmatch
import inspect
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler as lrs

from trainlab.config import OptimizerConfig, SchedulerConfig
from trainlab.engine.monitor import Monitor, flat_logs
from trainlab.errors import ConfigError, short, warn
from trainlab.registry import OPTIMIZERS, SCHEDULERS, Entry, check_kwargs

# ----------------------------------------------------------------------------- optimizer registry

for _name, _desc in [
    ("SGD", "stochastic gradient descent: lr, momentum, nesterov, weight_decay"),
    ("Adam", "adaptive moments: lr, betas, eps, weight_decay (L2 added to the gradient)"),
    ("AdamW", "Adam with decoupled weight decay: lr, betas, eps, weight_decay"),
    ("Adagrad", "per-parameter LR shrinking with the sum of squared gradients: lr, lr_decay"),
    ("RMSprop", "running mean of squared gradients: lr, alpha, momentum, centered"),
    ("Adadelta", "Adagrad variant with a window of past gradients: lr, rho"),
    ("Adamax", "Adam with the infinity norm: lr, betas"),
    ("NAdam", "Adam with Nesterov momentum: lr, betas, momentum_decay"),
    ("RAdam", "Adam with a rectified warm start of the variance: lr, betas"),
    ("ASGD", "averaged SGD: lr, lambd, alpha, t0"),
    ("Rprop", "resilient backprop (sign of the gradient, full batch): lr, etas, step_sizes"),
]:
    OPTIMIZERS.add(_name, getattr(torch.optim, _name), _desc)


def _torch_classes(module: Any, base: type) -> dict[str, type]:
    """{lowercased name: class} for the public subclasses of `base` in `module`."""
    return {
        n.lower(): c
        for n, c in vars(module).items()
        if isinstance(c, type) and issubclass(c, base) and c is not base and not n.startswith("_")
    }


def _optimizer_fallback(name: str) -> Entry | None:
    # Any torch.optim class, whatever the case ("adamw", "sgd").
    registered = {n.lower(): n for n in OPTIMIZERS.names()}
    if name.lower() in registered:
        return OPTIMIZERS.entry(registered[name.lower()], "optimizer.name")
    cls = _torch_classes(torch.optim, torch.optim.Optimizer).get(name.lower())
    return Entry(cls.__name__, cls, (inspect.getdoc(cls) or "").split("\n")[0]) if cls else None


OPTIMIZERS.fallback = _optimizer_fallback
OPTIMIZERS.extra_names = lambda: sorted(
    {
        c.__name__
        for c in _torch_classes(torch.optim, torch.optim.Optimizer).values()
        if c is not torch.optim.LBFGS
    }
    - set(OPTIMIZERS.names())
)

# Normalisation layers: their weights (scales) are exempt from weight decay with no_decay_bias_norm.
_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def _accepts(factory: Any, arg: str) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return True
    return arg in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _no_decay_names(model: nn.Module) -> set[str]:
    """Names of biases (incl. RNN `bias_ih_l0`) and normalisation-layer weights."""
    names = set()
    for module_name, module in model.named_modules():
        for local, _ in module.named_parameters(recurse=False):
            if local.startswith("bias") or isinstance(module, _NORM_LAYERS):
                names.add(f"{module_name}.{local}" if module_name else local)
    return names


def _matches(name: str, pattern: str) -> bool:
    # "features.*" matches "features.0.weight"; a bare module path "0" or "features" matches below it too.
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + ".*")


def param_groups(
    cfg: OptimizerConfig, model: nn.Module, takes_weight_decay: bool = True
) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: cfg.param_groups in order (first match wins), then the rest;
    each split in two when no_decay_bias_norm is set. Each group carries a `name` for logs."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ConfigError("optimizer: the model has no trainable parameters (all are frozen or it has none)")
    taken: set[str] = set()
    groups: list[tuple[str, list[tuple[str, torch.Tensor]], dict[str, float]]] = []
    for i, group in enumerate(cfg.param_groups or []):
        key = f"optimizer.param_groups[{i}]"
        patterns = [group.params] if isinstance(group.params, str) else list(group.params)
        hits = [(n, p) for n, p in named if any(_matches(n, pat) for pat in patterns)]
        members = [(n, p) for n, p in hits if n not in taken]
        if not members:
            why = "only parameters already taken by an earlier group" if hits else "no trainable parameter"
            shown = [n for n, _ in named][:12]
            raise ConfigError(
                f"{key}.params: {group.params!r} matches {why}; globs match parameter names "
                f"such as {', '.join(shown)}{' ...' if len(named) > 12 else ''}"
            )
        if group.weight_decay is not None and not takes_weight_decay:
            raise ConfigError(f"{key}.weight_decay: optimizer {cfg.name!r} has no weight_decay argument")
        taken.update(n for n, _ in members)
        options = {k: v for k, v in (("lr", group.lr), ("weight_decay", group.weight_decay)) if v is not None}
        groups.append((f"param_groups[{i}]", members, options))
    rest = [(n, p) for n, p in named if n not in taken]
    if rest:
        groups.append(("default", rest, {}))

    if cfg.no_decay_bias_norm:
        if not takes_weight_decay:
            raise ConfigError(
                f"optimizer.no_decay_bias_norm: optimizer {cfg.name!r} has no weight_decay argument"
            )
        exempt = _no_decay_names(model)
        split = []
        for name, members, options in groups:
            decay = [(n, p) for n, p in members if n not in exempt]
            no_decay = [(n, p) for n, p in members if n in exempt]
            if decay:
                split.append((name, decay, options))
            if no_decay:
                split.append((f"{name}.no_decay", no_decay, {**options, "weight_decay": 0.0}))
        groups = split
    return [{"params": [p for _, p in members], "name": name, **options} for name, members, options in groups]


def build_optimizer(cfg: OptimizerConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer `cfg.name` (any torch.optim class, case-insensitive, or `module:attr`) over the
    model's trainable parameters, grouped by `cfg.param_groups` and `cfg.no_decay_bias_norm`."""
    cls = OPTIMIZERS.get(cfg.name, "optimizer.name")
    if cls is torch.optim.LBFGS:
        raise ConfigError(
            "optimizer.name: LBFGS re-evaluates the loss through a closure at each step, "
            "which the training loop does not pass; use SGD, Adam or AdamW"
        )
    kwargs = cfg.kwargs()
    kwargs = check_kwargs(cls, kwargs, "optimizer", skip=("params",))
    groups = param_groups(cfg, model, takes_weight_decay=_accepts(cls, "weight_decay"))
    try:
        return cls(groups, **kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(
            f"optimizer: {cfg.name} rejected its arguments {short(kwargs)}: {str(e)[:300]}"
        ) from None


# ----------------------------------------------------------------------------- scheduler registry


def _constant(optimizer: torch.optim.Optimizer) -> None:
    """constant LR (a warmup still applies)"""
    return None


for _name, _factory, _desc in [
    ("none", _constant, "constant LR; warmup_steps/warmup_epochs still ramp it up"),
    ("step", lrs.StepLR, "StepLR: lr x gamma every step_size units"),
    ("multistep", lrs.MultiStepLR, "MultiStepLR: lr x gamma at each of milestones"),
    ("exponential", lrs.ExponentialLR, "ExponentialLR: lr x gamma every unit"),
    (
        "cosine",
        lrs.CosineAnnealingLR,
        "CosineAnnealingLR: half cosine to eta_min over T_max (default: the run)",
    ),
    (
        "linear",
        lrs.LinearLR,
        "LinearLR: linear decay from lr to 0 over the run (start_factor 1, end_factor 0)",
    ),
    ("polynomial", lrs.PolynomialLR, "PolynomialLR: (1 - t/total_iters)^power decay over the run"),
    ("onecycle", lrs.OneCycleLR, "OneCycleLR: warm up to max_lr (default: lr), anneal to ~0; per step"),
    ("plateau", lrs.ReduceLROnPlateau, "ReduceLROnPlateau: lr x factor when `monitor` stops improving"),
]:
    SCHEDULERS.add(_name, _factory, _desc)


def _scheduler_fallback(name: str) -> Entry | None:
    registered = {n.lower(): n for n in SCHEDULERS.names()}
    if name.lower() in registered:
        return SCHEDULERS.entry(registered[name.lower()], "scheduler.name")
    cls = _torch_classes(lrs, lrs.LRScheduler).get(name.lower())
    return Entry(cls.__name__, cls, (inspect.getdoc(cls) or "").split("\n")[0]) if cls else None


SCHEDULERS.fallback = _scheduler_fallback
SCHEDULERS.extra_names = lambda: sorted(c.__name__ for c in _torch_classes(lrs, lrs.LRScheduler).values())

_PER_STEP = (lrs.OneCycleLR, lrs.CyclicLR)  # made to step once per batch
_RUN_SHAPED = {"none": (), "cosine": ("T_max",), "linear": ("total_iters",), "polynomial": ("total_iters",)}


class LRSchedule:
    """One LR schedule as the loop sees it: a torch scheduler (with its warmup) and the unit it steps in.

    `scheduler` is a torch LRScheduler (a SequentialLR of LinearLR warmup + main schedule when there is
    a warmup) or None for a constant LR. ReduceLROnPlateau cannot sit in a SequentialLR (its step
    needs the metric), so for `plateau` the warmup is a separate LinearLR stepped first.
    """

    def __init__(
        self,
        name: str,
        optimizer: torch.optim.Optimizer,
        scheduler: lrs.LRScheduler | None,
        interval: str,
        monitor: Monitor | None = None,
        warmup: lrs.LinearLR | None = None,
        warmup_length: int = 0,
    ):
        self.name = name
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.interval = interval
        self.monitor = monitor  # set for plateau only
        self.warmup = warmup  # plateau only
        self.warmup_length = warmup_length
        self.warmup_done = 0

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def lrs(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def step_batch(self) -> None:
        if self.interval == "step" and self.scheduler is not None:
            s = self.scheduler
            if isinstance(s, lrs.OneCycleLR) and s.last_epoch + 1 >= s.total_steps:
                # past the planned run (e.g. more epochs on resume): keep the final LR, torch would raise
                return
            self.scheduler.step()

    def step_epoch(self, logs: dict[str, Any] | None = None) -> None:
        if self.interval != "epoch":
            return
        if self.monitor is None:
            if self.scheduler is not None:
                self.scheduler.step()
            return
        logs = logs or {}  # flat epoch logs {"train_loss": .., "val_accuracy": ..}, or the loop's nested ones
        flat = (
            flat_logs(logs["train"] or {}, logs.get("val")) if isinstance(logs.get("train"), dict) else logs
        )
        if self.monitor.name not in flat:
            raise ConfigError(
                f"scheduler.monitor: {self.monitor.name!r} is not among the logged values after this "
                f"epoch ({', '.join(sorted(flat)) or 'none'}); plateau needs a validation split or "
                f"a monitor such as train_loss"
            )
        if self.warmup is not None and self.warmup_done < self.warmup_length:
            self.warmup.step()  # no plateau bookkeeping while the LR is still ramping up
            self.warmup_done += 1
        else:
            self.scheduler.step(float(flat[self.monitor.name]))

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "interval": self.interval,
            "lrs": self.lrs(),
            "warmup_done": self.warmup_done,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "warmup": self.warmup.state_dict() if self.warmup is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = copy.deepcopy(state)  # SequentialLR.load_state_dict pops keys from what it is given
        if state.get("name") != self.name or state.get("interval") != self.interval:
            raise ConfigError(
                f"scheduler: the checkpoint's schedule is {state.get('name')!r} per "
                f"{state.get('interval')}, the config's is {self.name!r} per {self.interval}"
            )
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.warmup is not None and state["warmup"] is not None:
            self.warmup.load_state_dict(state["warmup"])
        self.warmup_done = state["warmup_done"]
        # The current LRs live in the optimizer; restore them so loading order does not matter.
        for group, lr in zip(self.optimizer.param_groups, state["lrs"], strict=True):
            group["lr"] = lr

    def __repr__(self) -> str:
        return f"LRSchedule({self.name!r}, interval={self.interval!r}, lr={self.lr():.3g})"


def _resolve_interval(cfg: SchedulerConfig, entry: Entry) -> str:
    cls = entry.factory
    if cls in _PER_STEP:
        if cfg.interval == "epoch" and cls is lrs.OneCycleLR:
            raise ConfigError(
                "scheduler.interval: onecycle always steps once per batch; drop `interval: epoch`"
            )
        return "step"
    if cls is lrs.ReduceLROnPlateau:
        if cfg.interval == "step":
            raise ConfigError(
                "scheduler.interval: plateau reads a validation metric once per epoch; drop `interval: step`"
            )
        return "epoch"
    if cfg.interval is not None:
        return cfg.interval
    run_shaped = _RUN_SHAPED.get(entry.name)
    if cfg.warmup_steps and run_shaped is not None and not set(run_shaped) & set(cfg.kwargs()):
        return "step"  # same curve as per epoch, only smoother, and the warmup can count steps
    return "epoch"


def _main_kwargs(
    name: str,
    cls: Any,
    kwargs: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    length: int,
    total_steps: int,
    monitor: Monitor,
) -> dict[str, Any]:
    """Fill the run-length arguments the user left out (length: units after the warmup)."""
    kwargs = dict(kwargs)
    if cls is lrs.CosineAnnealingLR:
        kwargs.setdefault("T_max", max(1, length))
    elif name == "linear":
        kwargs = {"start_factor": 1.0, "end_factor": 0.0, "total_iters": max(1, length), **kwargs}
    elif name == "polynomial":
        kwargs.setdefault("total_iters", max(1, length))
    elif cls is lrs.OneCycleLR:
        kwargs.setdefault("max_lr", [g["lr"] for g in optimizer.param_groups])
        if not {"total_steps", "epochs", "steps_per_epoch"} & set(kwargs):
            kwargs["total_steps"] = total_steps
        # Cycling momentum turns plain SGD into momentum SGD; only cycle what the optimizer already uses.
        d = optimizer.defaults
        kwargs.setdefault("cycle_momentum", "betas" in d or bool(d.get("momentum", 0)))
    elif cls is lrs.ReduceLROnPlateau:
        kwargs.setdefault("mode", monitor.mode)  # the one rule of engine/monitor.py
    return kwargs


def _check_required(cls: Any, kwargs: dict[str, Any], name: str) -> None:
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return
    for arg, p in list(params.items())[1:]:  # the first is the optimizer
        if (
            p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and arg not in kwargs
        ):
            raise ConfigError(
                f"scheduler.{arg}: {name} needs {arg!r} (e.g. scheduler: {{name: {name}, {arg}: ...}})"
            )


def build_scheduler(
    cfg: SchedulerConfig,
    optimizer: torch.optim.Optimizer,
    steps_per_epoch: int,
    epochs: int,
    max_steps: int | None = None,
    monitor: Monitor | None = None,
) -> LRSchedule:
    """The LR schedule `cfg.name` with its warmup, for a run of `epochs` x `steps_per_epoch`
    optimizer steps (count optimizer steps, i.e. batches / grad_accum), or `max_steps` when shorter.
    `monitor`: the run's monitored value (train.monitor resolved), which `plateau` follows unless
    `scheduler.monitor` names another.

    A warmup or a schedule length longer than the run (a smoke run of a real config, a tiny data
    set) is clipped to the run with a one-line warning, never an error."""
    entry = SCHEDULERS.entry(cfg.name, "scheduler.name")
    cls, name = entry.factory, entry.name
    interval = _resolve_interval(cfg, entry)
    user_kwargs = cfg.kwargs()
    if cls is _constant and user_kwargs:
        raise ConfigError(f"scheduler.{next(iter(user_kwargs))}: scheduler 'none' takes no arguments")
    if cls is not _constant:
        user_kwargs = check_kwargs(cls, user_kwargs, "scheduler", skip=("optimizer", "last_epoch"))

    # Warmup length, in the interval's unit.
    if cfg.warmup_steps and cfg.warmup_epochs:
        raise ConfigError("scheduler.warmup_steps: give warmup_steps or warmup_epochs, not both")
    if cfg.warmup_steps and interval == "epoch":
        raise ConfigError(
            f"scheduler.warmup_steps: the {name!r} schedule steps once per epoch, so a warmup "
            f"cannot count steps; use warmup_epochs: N, or interval: step (then its own counts "
            f"such as step_size and milestones are in steps too)"
        )
    warmup = cfg.warmup_steps or cfg.warmup_epochs * (steps_per_epoch if interval == "step" else 1)
    if warmup and cls in _PER_STEP:
        raise ConfigError(
            f"scheduler.warmup_{'steps' if cfg.warmup_steps else 'epochs'}: {name} has its own "
            f"warmup (pct_start / base_lr); drop the warmup"
        )
    total_steps = steps_per_epoch * epochs
    if max_steps is not None and max_steps < total_steps:  # train.max_steps ends the run first
        total_steps = max_steps
    run = total_steps if interval == "step" else -(-total_steps // steps_per_epoch)
    if warmup >= run and cls is not _constant:
        key = f"scheduler.warmup_{'steps' if cfg.warmup_steps else 'epochs'}"
        clipped = max(0, run - 1)  # the main schedule keeps at least one unit
        warn(
            f"{key}: the warmup ({warmup} {interval}s) is as long as the run ({run} {interval}s) or longer; "
            f"clipped to {clipped} {interval}s for this run"
        )
        warmup = clipped
    _warn_past_the_end(name, user_kwargs, run - warmup, interval)
    if cls is lrs.ReduceLROnPlateau or monitor is None:
        monitor = (
            monitor
            if cfg.monitor == "auto" and monitor is not None
            else Monitor("val_loss" if cfg.monitor == "auto" else cfg.monitor)
        )
    kwargs = _main_kwargs(name, cls, user_kwargs, optimizer, run - warmup, total_steps, monitor)
    if cls is not _constant:
        _check_required(cls, kwargs, name)
    try:
        ramp = (
            lrs.LinearLR(optimizer, start_factor=cfg.warmup_start_factor, end_factor=1.0, total_iters=warmup)
            if warmup
            else None
        )
        main = cls(optimizer, **kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(
            f"scheduler: {name} rejected its arguments {short(kwargs)}: {str(e)[:300]}"
        ) from None

    if cls is lrs.ReduceLROnPlateau:
        return LRSchedule(name, optimizer, main, interval, monitor=monitor, warmup=ramp, warmup_length=warmup)
    if ramp is not None:
        # SequentialLR resets the LRs and replays only the warmup's first step; after `warmup` units
        # the main schedule starts from its own step 0 (the full lr).
        main = ramp if main is None else lrs.SequentialLR(optimizer, [ramp, main], milestones=[warmup])
    return LRSchedule(name, optimizer, main, interval)


def _warn_past_the_end(name: str, kwargs: dict[str, Any], length: int, interval: str) -> None:
    """A schedule length the user gave that the run never reaches: warn (the schedule is still right
    for the full run, so a short run of the same config works)."""
    for key in ("T_max", "total_iters", "total_steps", "step_size"):
        value = kwargs.get(key)
        if isinstance(value, int) and value > length:
            warn(
                f"scheduler.{key}: {value} {interval}s, longer than this run's {length}; the run ends before "
                f"the {name} schedule does"
            )
    late = [m for m in kwargs.get("milestones") or [] if isinstance(m, int) and m >= length]
    if late:
        warn(
            f"scheduler.milestones: {late} at or past the end of this run ({length} "
            f"{interval}s) are never reached"
        )
