"""The search space of a sweep: drawing a trial's config values from `sweep.params` (define-by-run, so
that a keyword of a component is drawn only for the names that take it), the grid of `--grid`, and
the checks that every swept key exists before any trial runs."""

from __future__ import annotations

from typing import Any

import yaml

from trainlab.config import Config, ParamSpec, apply_overrides, parse_override
from trainlab.errors import ConfigError

# config sections whose keys beyond their declared fields are keyword arguments of what `name` names
COMPONENTS = ("model", "loss", "optimizer", "scheduler")


def grid_params(grid: list[str]) -> dict[str, ParamSpec]:
    """`--grid optimizer.lr=[0.01,0.1]` (repeatable) -> {"optimizer.lr": choice [0.01, 0.1]}."""
    params = {}
    for text in grid:
        path, values = parse_override(text)
        key = ".".join(path)
        if not isinstance(values, list) or not values:
            raise ConfigError(f"--grid {text!r}: give a list of values, e.g. --grid {key}=[0.01,0.1]")
        params[key] = ParamSpec(choice=values)
    return params


def encode_choices(choices: list[Any]) -> list[Any]:
    """Optuna stores str/int/float/bool/None choices; lists and mappings (model.hidden: [64, 32], a whole
    optimizer mapping) travel as their YAML text, decoded by `decode_choice`."""
    if all(c is None or isinstance(c, (str, int, float, bool)) for c in choices):
        return list(choices)
    return [flow(c) for c in choices]


def flow(value: Any) -> str:
    """A value as one line of YAML, keys in their order: `{name: SGD, lr: 0.05}`, `[128, 64]`."""
    return (
        yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000)
        .strip()
        .removesuffix("...")
        .strip()
    )


def describe(values: dict[str, Any], short: bool = False) -> str:
    """`optimizer.lr=0.01, model.hidden=[64]` (`short`: the last part of each key, 3 digits)."""

    def text(v: Any) -> str:
        return (
            f"{v:.3g}" if short and isinstance(v, float) else f"{v:.4g}" if isinstance(v, float) else flow(v)
        )

    return ", ".join(f"{k.split('.')[-1] if short else k}={text(v)}" for k, v in values.items())


def decode_choice(spec: ParamSpec, value: Any) -> Any:
    return yaml.safe_load(value) if encode_choices(spec.choice) != list(spec.choice) else value


def grid_space(params: dict[str, ParamSpec]) -> dict[str, list[Any]]:
    """The GridSampler's search space: choices, or every integer of an `int` range."""
    space = {}
    for key, spec in params.items():
        if spec.kind == "choice":
            space[key] = encode_choices(spec.choice)
        elif spec.kind == "int" and not spec.log:
            low, high = spec.int_
            space[key] = list(range(low, high + 1, int(spec.step or 1)))
        else:
            raise ConfigError(
                f"sweep.params.{key}: the grid sampler takes choice or int values, not {spec.kind}"
            )
    return space


def suggest(trial: Any, base: dict[str, Any], specs: dict[str, ParamSpec]) -> dict[str, Any]:
    """Draw this trial's values (define-by-run): `<component>.name` keys first, then the rest; a keyword
    of a component that the drawn `name` does not take (optimizer.momentum for Adam) is not drawn."""
    values: dict[str, Any] = {}
    for key in sorted(specs, key=lambda k: (not k.endswith(".name"), list(specs).index(k))):
        spec = specs[key]
        if not _applies(key, apply_overrides(base, values)):
            continue
        kind = spec.kind
        if kind == "choice":
            values[key] = decode_choice(spec, trial.suggest_categorical(key, encode_choices(spec.choice)))
        elif kind == "int":
            values[key] = trial.suggest_int(key, *spec.int_, step=int(spec.step or 1), log=spec.log)
        else:
            low, high = spec.uniform or spec.loguniform
            values[key] = trial.suggest_float(key, low, high, log=kind == "loguniform", step=spec.step)
    return values


def _component_kwarg(key: str) -> tuple[str, str] | None:
    """("optimizer", "momentum") for a key that is a keyword argument of a component, else None."""
    section, _, rest = key.partition(".")
    if section not in COMPONENTS or not rest or "." in rest:
        return None
    declared = Config.model_fields[section].annotation.model_fields
    return None if rest in declared else (section, rest)


def _component_factory(section: str, name: str) -> tuple[Any, tuple[str, ...]] | None:
    """The registered class/factory a component name builds, and the arguments trainlab passes itself;
    None where the kwargs are checked only when building (sequential, torchvision:, auto)."""
    from trainlab.registry import LOSSES, MODELS, OPTIMIZERS, SCHEDULERS, load_builtins

    load_builtins()
    table = {"model": MODELS, "loss": LOSSES, "optimizer": OPTIMIZERS, "scheduler": SCHEDULERS}[section]
    skip = {
        "model": ("input_shape", "output_dim"),
        "optimizer": ("params",),
        "scheduler": ("optimizer", "last_epoch"),
    }.get(section, ())
    if section == "model" and name not in table:
        return None
    try:
        return table.get(name, f"{section}.name"), skip
    except ConfigError:
        return None


def _kwarg_error(section: str, name: str, kwarg: str) -> str | None:
    """Why `name` does not take `kwarg` (None: it does, or it is not known before building)."""
    from trainlab.registry import check_kwarg_names

    found = _component_factory(section, name)
    if found is None:
        return None
    try:
        check_kwarg_names(found[0], [kwarg], section, skip=found[1])
    except ConfigError as e:
        return str(e)
    return None


def _applies(key: str, config: dict[str, Any]) -> bool:
    target = _component_kwarg(key)
    if target is None:
        return True
    section, kwarg = target
    return _kwarg_error(section, str((config.get(section) or {}).get("name")), kwarg) is None


def check_component_keys(base: dict[str, Any], params: dict[str, ParamSpec]) -> None:
    """A swept keyword of a component must be taken by at least one name the sweep may use for it."""
    for key in params:
        target = _component_kwarg(key)
        if target is None:
            continue
        section, kwarg = target
        name_spec = params.get(f"{section}.name")
        names = (
            list(name_spec.choice) if name_spec is not None and name_spec.choice else [base[section]["name"]]
        )
        errors = [_kwarg_error(section, str(n), kwarg) for n in names]
        if all(errors):
            raise ConfigError(f"sweep.params.{key}: no {section} of this sweep takes {kwarg!r}: {errors[0]}")
