"""The config schema (every default lives here), YAML loading and dotted KEY=VALUE overrides.

A config is YAML read with a safe loader only (`ConfigLoader`: no Python objects, no alias bombs, no
duplicate keys), then validated by pydantic; unknown keys, wrong
types and out-of-range values become a `ConfigError` naming the key and the bad value.
"""

from __future__ import annotations

import contextlib
import copy
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainlab.errors import ConfigError, did_you_mean, short

DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class Component(BaseModel):
    """`name` plus the keyword arguments of what it names, side by side."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
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
    interval: Literal["epoch", "step"] | None = (
        None  # default: step for onecycle/linear warmup-style, epoch else
    )
    warmup_steps: int = Field(default=0, ge=0)
    warmup_epochs: int = Field(default=0, ge=0)
    warmup_start_factor: float = Field(default=0.1, gt=0, le=1)
    monitor: str = "auto"  # for plateau; auto: the run's train.monitor


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

    @field_validator("cache", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        # YAML reads a bare `off` (and `on`) as a boolean: `cache: off` / `data.cache=off` mean "off"
        return {False: "off", True: "auto"}.get(value, value) if isinstance(value, bool) else value


class EarlyStopping(_Strict):
    patience: int | None = Field(default=None, ge=1)  # None: off
    min_delta: float = Field(default=0.0, ge=0)


class TrainConfig(_Strict):
    epochs: int = Field(default=10, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    device: str = "auto"
    # decides best.pt, early stopping and plateau; auto: val_accuracy (classification, binary) or val_loss
    # (regression), the train_ value when there is no validation split (engine/monitor.py)
    monitor: str = "auto"
    mode: Literal["auto", "min", "max"] = "auto"
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    grad_accum: int = Field(default=1, ge=1)
    grad_clip: float | None = Field(default=None, gt=0)
    # auto: bf16 autocast on CUDA GPUs with native bf16, else fp16 + GradScaler; fp32 on CPU/MPS.
    # fp32 allows TF32 matmuls on CUDA; fp32-strict does not (engine/device.py resolve_precision)
    precision: Literal["auto", "bf16", "fp16", "fp32", "fp32-strict"] = "auto"
    compile: bool | Literal["auto"] = "auto"  # auto: torch.compile on CUDA (eager if it fails), eager on CPU
    # auto: on for 2-d conv nets on the CPU when the model's forward allows it (engine/device.py)
    channels_last: bool | Literal["auto"] = "auto"
    log_every_n_steps: int = Field(default=50, ge=1)
    checkpoint_every_n_steps: int | None = Field(default=None, ge=1)
    histogram_every: int | None = Field(default=None, ge=1)  # epochs between weight/grad histograms
    nan_policy: Literal["stop", "skip"] = "stop"
    deterministic: bool = (
        False  # deterministic kernels (torch.use_deterministic_algorithms, cuBLAS workspace)
    )
    peak_flops: float | None = Field(default=None, gt=0)  # for MFU; measured when not given
    # a value and the goal it must reach, e.g. {val_accuracy: 0.97}: summary.json's time_to_target
    target_metric: dict[str, float] | None = None
    # smoke run: 2 training steps, 1 validation and 1 test batch, a complete run directory
    smoke: bool = False

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        base = v.split(":")[0]
        if base not in ("auto", "cpu", "cuda", "mps", "xpu"):
            raise ValueError(f"unknown device {short(v)}; use auto, cpu, cuda, cuda:N or mps")
        return v


class ParamSpec(_Strict):
    """One swept config key: exactly one of `uniform: [low, high]`, `loguniform: [low, high]`,
    `int: [low, high]` (with `step` or `log`), `choice: [v1, v2, ...]` (any YAML values)."""

    uniform: list[float] | None = None
    loguniform: list[float] | None = None
    int_: list[int] | None = Field(default=None, alias="int")
    choice: list[Any] | None = None
    step: float | None = Field(default=None, gt=0)  # int (and uniform): the grid of values
    log: bool = False  # int: sample on a log scale

    @property
    def kind(self) -> str:
        return next(
            k for k in ("uniform", "loguniform", "int_", "choice") if getattr(self, k) is not None
        ).rstrip("_")

    @model_validator(mode="after")
    def _one_kind(self) -> ParamSpec:
        kinds = [
            k.rstrip("_") for k in ("uniform", "loguniform", "int_", "choice") if getattr(self, k) is not None
        ]
        if len(kinds) != 1:
            raise ValueError(
                "give exactly one of uniform: [low, high], loguniform: [low, high], int: [low, high] "
                "or choice: [values]" + (f" (got {' and '.join(kinds)})" if kinds else "")
            )
        kind = kinds[0]
        if kind == "choice":
            if not self.choice:
                raise ValueError("choice: give at least one value")
        else:
            bounds = getattr(self, "int_" if kind == "int" else kind)
            if len(bounds) != 2 or not bounds[0] < bounds[1]:
                raise ValueError(f"{kind}: give [low, high] with low < high, not {bounds}")
            if kind == "loguniform" and bounds[0] <= 0:
                raise ValueError(f"loguniform: low must be > 0, not {bounds[0]}")
        if self.log and kind != "int":
            raise ValueError("log: only with int (use loguniform for floats)")
        if self.log and self.step is not None:
            raise ValueError("int: step and log cannot go together")
        if self.step is not None and kind not in ("int", "uniform"):
            raise ValueError(f"step: only with int or uniform, not {kind}")
        if kind == "int" and self.step is not None and self.step != int(self.step):
            raise ValueError(f"int: step must be a whole number, not {self.step}")
        return self

    def values_to_check(self) -> list[Any]:
        """Values a trial may draw that together test what the key's type accepts: the bounds, and for
        floats one value strictly inside (an integer key rejects it: use `int`)."""
        if self.choice is not None:
            return list(self.choice)
        if self.int_ is not None:
            return list(self.int_)
        low, high = self.uniform or self.loguniform
        return [low, high, low + 0.37 * (high - low)]


class SweepComponent(Component):
    """A sampler or pruner: `name` plus the keyword arguments of Optuna's class (`{name: tpe, seed: 1}`)."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class SweepConfig(_Strict):
    """`trainlab sweep`: a hyperparameter search over config keys (Optuna); `trainlab train` ignores it."""

    metric: str | None = None  # any logged value, e.g. val_accuracy; default: the resolved train.monitor
    direction: Literal["maximize", "minimize"] | None = (
        None  # default: from the metric (loss/error: minimize)
    )
    trials: int = Field(default=20, ge=1)  # finished (complete or pruned) trials to reach; grid: its size
    sampler: SweepComponent = Field(default_factory=lambda: SweepComponent(name="tpe"))
    pruner: SweepComponent = Field(default_factory=lambda: SweepComponent(name="median"))
    params: dict[str, ParamSpec] = Field(default_factory=dict)  # dotted config key -> spec

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, v: SweepComponent) -> SweepComponent:
        if v.name not in SAMPLERS:
            raise ValueError(
                f"unknown sampler {v.name!r}{did_you_mean(v.name, SAMPLERS)}; "
                f"use one of {', '.join(SAMPLERS)}"
            )
        return v

    @field_validator("pruner")
    @classmethod
    def _pruner(cls, v: SweepComponent) -> SweepComponent:
        if v.name not in PRUNERS:
            raise ValueError(
                f"unknown pruner {v.name!r}{did_you_mean(v.name, PRUNERS)}; use one of {', '.join(PRUNERS)}"
            )
        return v


SAMPLERS = ("tpe", "random", "grid", "cmaes")
PRUNERS = ("median", "hyperband", "none")


class Config(_Strict):
    name: str = Field(default="run", min_length=1, max_length=100)  # the run folder's name: runs/<name>
    seed: int = Field(default=0, ge=0, lt=2**64)  # torch.manual_seed takes 64 bits
    task: Literal["auto", "classification", "binary", "regression"] = "auto"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    metrics: list[str] | None = None  # default: by task
    sweep: SweepConfig | None = None  # read by `trainlab sweep` only

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if any(c in v for c in "/\\\0") or v in (".", "..") or not v.isprintable():
            raise ValueError("a run name is one folder name: no '/', '\\' or control characters")
        return v

    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump(mode="json", by_alias=True)
        if d.get("sweep") is None:
            d.pop("sweep", None)  # configs without a sweep read as before
        return d


# ----------------------------------------------------------------------------- loading


class ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader for a config that may be hostile: it refuses what would cost time or memory later
    (aliases that expand a 1 KB file to a billion values, nesting deeper than any config needs, integers
    longer than Python reads) and duplicate keys (YAML would keep the last one silently), each as a
    ConfigError naming the file and line. Aliases stay allowed for the sharing configs use them for."""

    MAX_DEPTH = 64  # the deepest default-config value is 4 levels deep
    MAX_VALUES = 100_000  # scalars, lists and mappings once every alias is expanded

    def __init__(self, stream: str, source: str):
        super().__init__(stream)
        self.source, self.depth = source, 0

    def where(self, mark: Any) -> str:
        return f"{self.source}:{mark.line + 1}" if mark is not None else self.source

    def compose_node(self, parent: Any, index: Any) -> Any:
        # Composing recurses once per level: refuse deep nesting before Python's recursion limit does.
        self.depth += 1
        try:
            if self.depth > self.MAX_DEPTH:
                raise ConfigError(
                    f"{self.where(self.peek_event().start_mark)}: values nested more than "
                    f"{self.MAX_DEPTH} levels deep; a config is a few levels of keys and lists"
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def compose_document(self) -> Any:
        node = super().compose_document()
        sizes: dict[int, int] = {}  # per node object: an alias is the same node again, counted once here

        def expanded(n: Any) -> int:
            if id(n) not in sizes:
                sizes[id(n)] = 0  # a recursive alias counts as nothing more while it is being counted
                children = (
                    n.value
                    if isinstance(n, yaml.SequenceNode)
                    else [c for pair in n.value for c in pair]
                    if isinstance(n, yaml.MappingNode)
                    else []
                )
                sizes[id(n)] = min(1 + sum(expanded(c) for c in children), 10 * self.MAX_VALUES)
            return sizes[id(n)]

        if node is not None and expanded(node) > self.MAX_VALUES:
            raise ConfigError(
                f"{self.source}: its aliases (*name) expand it to more than {self.MAX_VALUES:,} values; "
                f"trainlab refuses such a file (an alias bomb) instead of expanding it"
            )
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(
                    f"{self.source}: key {short(key)} is given twice, on lines {seen[key]} and "
                    f"{key_node.start_mark.line + 1}; keep one"
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: Any) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # Python reads at most 4300 digits
            raise ConfigError(
                f"{self.where(node.start_mark)}: the integer {short(node.value)} is too long "
                f"({len(node.value)} digits)"
            ) from None


ConfigLoader.add_constructor("tag:yaml.org,2002:int", ConfigLoader.construct_yaml_int)


MAX_CONFIG_BYTES = 1_000_000  # a config is a few KB; a list of thousands of column names still fits


def _check_flow_depth(text: str, source: str) -> None:
    """Refuse deep `[[[...` / `{{{...` nesting before the YAML scanner, whose look-ahead for keys makes it
    slow on them (the composer's own depth check comes too late for that). Brackets inside quoted strings
    count too: only a string with dozens of unbalanced brackets could be refused by mistake."""
    depth = 0
    for bracket in re.findall(r"[\[\]{}]", text):
        depth += 1 if bracket in "[{" else -1
        if depth > ConfigLoader.MAX_DEPTH:
            raise ConfigError(
                f"{source}: values nested more than {ConfigLoader.MAX_DEPTH} levels deep; a config is "
                f"a few levels of keys and lists"
            )


def parse_yaml(text: str, source: str) -> Any:
    """YAML text -> plain Python values, read with `ConfigLoader` (no Python objects are constructed)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: {len(text):,} characters; a config has at most {MAX_CONFIG_BYTES:,}")
    _check_flow_depth(text, source)
    loader = ConfigLoader(text, source)
    try:
        return loader.get_single_data()
    except yaml.constructor.ConstructorError as e:
        raise ConfigError(
            f"{loader.where(e.problem_mark)}: YAML tag refused ({short(e.problem)}); trainlab configs "
            f"are plain YAML (safe loading) and never construct Python objects"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}: YAML syntax error: {problem[:200]}") from None
    finally:
        loader.dispose()


def _decode(data: bytes, source: str) -> str:
    """UTF-8 text (a BOM is dropped); other bytes are an error naming the line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"{source}:{line}: byte 0x{data[e.start]:02x} is not UTF-8; save the file as UTF-8"
        ) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    raw = parse_yaml(_decode(data, str(path)), str(path))
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: a config is a mapping of keys (name, data, model, ...), not a {type(raw).__name__}"
        )
    return raw


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optimizer.lr=1e-3' -> (['optimizer', 'lr'], 0.001); values are parsed as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {short(text)} is not of the form KEY=VALUE (e.g. optimizer.lr=0.1)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a byte that is not UTF-8 reaches sys.argv as a lone surrogate
        raise ConfigError(
            f"override {key[:80]}: its text is not UTF-8 (byte 0x{ord(text[e.start]) & 0xFF:02x} "
            f"at character {e.start + 1})"
        ) from None
    try:
        parsed = parse_yaml(value, f"override {key}") if value.strip() else None
    except ConfigError as e:
        if "YAML syntax error" not in str(e):
            raise  # an alias bomb, deep nesting or a refused tag in an override too
        parsed = value
    if isinstance(parsed, str) or parsed is None:
        # YAML reads 1e-3 as a string (no dot); be kind and accept it as a float.
        with contextlib.suppress(ValueError):
            parsed = float(value) if parsed is not None and any(c in value.lower() for c in "e.") else parsed
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
            elif isinstance(child, str) and part in (
                "model",
                "loss",
                "optimizer",
                "scheduler",
                "sampler",
                "pruner",
            ):
                child = node[part] = {"name": child}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {'.'.join(path)}: {part!r} holds {short(child)}, not a mapping")
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
            model = _model_at(loc[:-1])
            names = [f.alias or n for n, f in model.model_fields.items()] if model else []
            lines.append(f"unknown key {short(key)}{did_you_mean(loc[-1][:100], names)}")
            continue
        value = e.get("input")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "missing":
            lines.append(f"{key}: required key missing")
            continue
        # A value that fits none of a union's types (`bool | Literal["auto"]`) gets one error per
        # type, located at key.<type>: one line for the key, with every type's message.
        key = ".".join(loc[: _field_depth(loc)])
        line = f"{key}: bad value {short(value)}: "
        if lines and lines[-1].startswith(line):
            lines[-1] += f", or {msg[0].lower()}{msg[1:]}"
        else:
            lines.append(line + msg)
    return "invalid config: " + "; ".join(lines)


def _field_depth(loc: list[str]) -> int:
    """How many leading parts of a pydantic error location are config keys (the rest name union types)."""
    model: Any = Config
    mapping = False  # the part is a key of a `dict[str, Model]` field (sweep.params.<key>)
    for depth, part in enumerate(loc):
        if mapping:
            mapping = False
            continue
        if model is None:  # below a plain field: list indices are keys, anything else a union's type
            if not part.isdigit():
                return depth
            continue
        field = _field(model, part)
        if field is None:
            return len(loc)
        model, mapping = _field_model(field)
    return len(loc)


def _field(model: type[BaseModel], part: str) -> Any:
    """The pydantic field of `model` spelt `part` in a config (by its alias where it has one)."""
    return next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)


def _field_model(field: Any) -> tuple[type[BaseModel] | None, bool]:
    """(the model a field holds, or None for a plain value; whether it is a `dict[str, Model]`, whose
    next location part is a key of the mapping)."""
    ann = field.annotation
    if typing.get_origin(ann) is dict:
        value = typing.get_args(ann)[1]
        return (value, True) if isinstance(value, type) and issubclass(value, BaseModel) else (None, False)
    options = typing.get_args(ann) if typing.get_origin(ann) in (typing.Union, types.UnionType) else (ann,)
    return next((o for o in options if isinstance(o, type) and issubclass(o, BaseModel)), None), False


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    """The model whose keys sit below `loc` (None below a plain field or an unknown key)."""
    model: Any = Config
    mapping = False
    for part in loc:
        if mapping:
            mapping = False
            continue
        field = _field(model, part) if model is not None else None
        if field is None:
            return None
        model, mapping = _field_model(field)
    return None if mapping else model


def validate(raw: dict[str, Any]) -> Config:
    try:
        config = Config.model_validate(_normalise(copy.deepcopy(raw)))
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, raw)) from None
    if config.sweep is not None:
        check_sweep_values(config)
    return config


def check_sweep_values(config: Config) -> None:
    """Every value a sweep parameter may take, applied as an override, must give a valid config: a
    swept key that does not exist, or a value its type refuses, is an error naming sweep.params.<key>."""
    base = config.to_dict()
    base.pop("sweep")
    for key, spec in config.sweep.params.items():
        for value in spec.values_to_check():
            try:
                validate(apply_overrides(base, {key: value}))
            except ConfigError as e:
                reason = str(e).removeprefix("invalid config: ")
                if spec.kind != "int" and "valid integer" in reason:
                    reason += " (an integer key: use int: [low, high])"
                raise ConfigError(
                    f"sweep.params.{key}: the value {value!r} ({spec.kind}) gives a bad config: {reason}"
                ) from None


def load_config(
    source: str | Path | dict[str, Any] | None = None, overrides: list[str] | dict[str, Any] | None = None
) -> Config:
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
