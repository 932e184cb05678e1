"""The config schema (every default lives here), YAML loading and dotted KEY=VALUE overrides.

A config is YAML read with `yaml.safe_load` only, then validated by pydantic; unknown keys, wrong
types and out-of-range values become a `ConfigError` naming the key and the bad value.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from trainlab.errors import ConfigError, did_you_mean

DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Component(BaseModel):
    """`name` plus the keyword arguments of what it names, side by side."""

    model_config = ConfigDict(extra="allow")
    name: str

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments for what `name` names (the keys trainlab does not read itself)."""
        return dict(self.model_extra or {})


class ModelConfig(Component):
    name: str = "auto"
    layers: list[Any] | None = None  # the component list of `name: sequential`
    init: dict[str, Any] | str | None = None  # torch.nn.init schemes by layer type


class LossConfig(Component):
    name: str = "auto"


class ParamGroup(_Strict):
    params: str | list[str]  # glob(s) on parameter names, e.g. "features.*"
    lr: float | None = Field(default=None, gt=0)
    weight_decay: float | None = Field(default=None, ge=0)


class OptimizerConfig(Component):
    name: str = "Adam"
    lr: float = Field(default=1e-3, gt=0)
    param_groups: list[ParamGroup] | None = None
    no_decay_bias_norm: bool = False  # exempt biases and normalisation weights from weight decay

    def kwargs(self) -> dict[str, Any]:
        return {"lr": self.lr, **(self.model_extra or {})}


class SchedulerConfig(Component):
    name: str = "none"
    interval: Literal["epoch", "step"] | None = None  # default: step for onecycle/linear warmup-style, epoch else
    warmup_steps: int = Field(default=0, ge=0)
    warmup_epochs: int = Field(default=0, ge=0)
    warmup_start_factor: float = Field(default=0.1, gt=0, le=1)
    monitor: str = "val_loss"  # for plateau


class DataConfig(_Strict):
    source: str = "digits"
    root: str | None = None
    path: str | None = None
    target: str | int | None = None
    features: list[str | int] | None = None
    header: bool | None = None  # None: detect
    delimiter: str | None = None  # None: detect
    standardize: bool = False
    options: dict[str, Any] = Field(default_factory=dict)  # keyword arguments of the source itself
    val_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    k_fold: int | None = Field(default=None, ge=2)
    fold: int | None = Field(default=None, ge=0)  # set by k-fold runs
    download: bool = False
    transforms: list[Any] | None = None
    eval_transforms: list[Any] | None = None
    batch_size: int = Field(default=64, ge=1)
    eval_batch_size: int | None = Field(default=None, ge=1)
    shuffle: bool = True
    num_workers: int = Field(default=0, ge=0)
    drop_last: bool = False
    pin_memory: bool | Literal["auto"] = "auto"
    persistent_workers: bool | None = None
    in_memory: bool | Literal["auto"] = "auto"
    skip_bad_files: bool = False
    image_size: int | list[int] | None = None  # resize image-folder images (default: keep a common size)
    # Image folders: decode once at the training size (data/image_cache.py). auto: in memory when the
    # decoded split fits cache_memory_mb, else a memory-mapped file in cache_dir; off: decode per epoch.
    cache: Literal["auto", "memory", "disk", "off"] = "auto"
    cache_memory_mb: float | None = Field(default=None, gt=0)  # None: 25% of the physical memory
    cache_dir: str | None = None  # None: <data.root>/.trainlab-cache, else ~/.cache/trainlab/images


class EarlyStopping(_Strict):
    patience: int | None = Field(default=None, ge=1)  # None: off
    min_delta: float = Field(default=0.0, ge=0)


class TrainConfig(_Strict):
    epochs: int = Field(default=10, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    device: str = "auto"
    monitor: str = "val_loss"  # decides best.pt and early stopping
    mode: Literal["auto", "min", "max"] = "auto"
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    grad_accum: int = Field(default=1, ge=1)
    grad_clip: float | None = Field(default=None, gt=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = False
    # auto: on for 2-d conv nets on the CPU when the model's forward allows it (engine/device.py)
    channels_last: bool | Literal["auto"] = "auto"
    log_every_n_steps: int = Field(default=50, ge=1)
    checkpoint_every_n_steps: int | None = Field(default=None, ge=1)
    histogram_every: int | None = Field(default=None, ge=1)  # epochs between weight/grad histograms
    nan_policy: Literal["stop", "skip"] = "stop"
    deterministic: bool = False
    peak_flops: float | None = Field(default=None, gt=0)  # for MFU; measured when not given

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        base = v.split(":")[0]
        if base not in ("auto", "cpu", "cuda", "mps", "xpu"):
            raise ValueError(f"unknown device {v!r}; use auto, cpu, cuda, cuda:N or mps")
        return v


class Config(_Strict):
    name: str = "run"
    seed: int = 0
    task: Literal["auto", "classification", "binary", "regression"] = "auto"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    metrics: list[str] | None = None  # default: by task

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# ----------------------------------------------------------------------------- loading

def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as e:
        mark = e.problem_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: YAML tag refused ({e.problem}); trainlab configs are plain YAML "
                          f"(yaml.safe_load) and never construct Python objects") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config is a mapping of keys (name, data, model, ...), not a {type(raw).__name__}")
    return raw


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optimizer.lr=1e-3' -> (['optimizer', 'lr'], 0.001); values are parsed as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {text!r} is not of the form KEY=VALUE (e.g. optimizer.lr=0.1)")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    if isinstance(parsed, str) or parsed is None:
        # YAML reads 1e-3 as a string (no dot); be kind and accept it as a float.
        try:
            parsed = float(value) if parsed is not None and any(c in value.lower() for c in "e.") else parsed
        except ValueError:
            pass
    return key.split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    items = overrides.items() if isinstance(overrides, dict) else [(None, o) for o in overrides]
    for key, value in items:
        if key is None:
            path, value = parse_override(value)
        else:
            path = key.split(".")
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif isinstance(child, str) and part in ("model", "loss", "optimizer", "scheduler"):
                child = node[part] = {"name": child}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {'.'.join(path)}: {part!r} holds {child!r}, not a mapping")
            node = child
        node[path[-1]] = value
    return raw


def _normalise(raw: dict[str, Any]) -> dict[str, Any]:
    """Accept `model: mlp` as shorthand for `model: {name: mlp}`."""
    for key in ("model", "loss", "optimizer", "scheduler"):
        if isinstance(raw.get(key), str):
            raw[key] = {"name": raw[key]}
    return raw


def _format_validation_error(err: ValidationError, raw: dict[str, Any]) -> str:
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        key = ".".join(loc)
        if e["type"] == "extra_forbidden":
            model: Any = Config
            for part in loc[:-1]:
                field = model.model_fields.get(part)
                ann = field.annotation if field else None
                model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
                if model is None:
                    break
            names = list(model.model_fields) if model else []
            lines.append(f"unknown key {key!r}{did_you_mean(loc[-1], names)}")
            continue
        value = e.get("input")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "missing":
            lines.append(f"{key}: required key missing")
            continue
        # A value that fits none of a union's types (`bool | Literal["auto"]`) gets one error per
        # type, located at key.<type>: one line for the key, with every type's message.
        key = ".".join(loc[:_field_depth(loc)])
        line = f"{key}: bad value {value!r}: "
        if lines and lines[-1].startswith(line):
            lines[-1] += f", or {msg[0].lower()}{msg[1:]}"
        else:
            lines.append(line + msg)
    return "invalid config: " + "; ".join(lines)


def _field_depth(loc: list[str]) -> int:
    """How many leading parts of a pydantic error location are config keys (the rest name union types)."""
    model: Any = Config
    for depth, part in enumerate(loc):
        if model is None:  # below a plain field: list indices are keys, anything else a union's type
            if not part.isdigit():
                return depth
            continue
        field = model.model_fields.get(part)
        if field is None:
            return len(loc)
        ann = field.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return len(loc)


def validate(raw: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(_normalise(copy.deepcopy(raw)))
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, raw)) from None


def load_config(source: str | Path | dict[str, Any] | None = None,
                overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Read a config from a YAML path or a dict (None: the built-in default example), apply overrides."""
    from trainlab.registry import add_user_path

    if source is None:
        raw = _read_yaml(DEFAULT_CONFIG)
    elif isinstance(source, dict):
        raw = copy.deepcopy(source)
    else:
        path = Path(source)
        raw = _read_yaml(path)
        add_user_path(path.parent)
        raw.setdefault("name", path.stem)
    raw = apply_overrides(raw, overrides or [])
    return validate(raw)
