"""Name -> factory tables, one per kind of component, and `package.module:attr` imports of user code.

@MODELS.register("mlp", "multi-layer perceptron: hidden, activation, dropout, batch_norm")
def mlp(...): ...

MODELS.get("mlp")          # the factory
MODELS.get("my_net:Net")   # imports my_net.py from the config's folder or the working directory
"""

from __future__ import annotations

import importlib
import inspect
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainlab.errors import ConfigError, did_you_mean

# Folders searched for `module:attr` user code, besides sys.path: the config file's folder is added
# by `config.load_config`, the working directory always.
_USER_PATHS: list[str] = []


def add_user_path(folder: str | Path) -> None:
    folder = str(Path(folder).resolve())
    if folder not in _USER_PATHS:
        _USER_PATHS.append(folder)


def import_object(spec: str, key: str = "name") -> Any:
    """Import `package.module:attr` (attr may be dotted). Errors name the config key."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{key}: {spec!r} is not of the form 'module:attr'")
    for folder in [str(Path.cwd()), *_USER_PATHS]:
        if folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise ConfigError(
                f"{key}: cannot import module {module_name!r} for {spec!r}: no file "
                f"{module_name.replace('.', '/')}.py "
                f"in the config's folder, the working directory or the Python path"
            ) from None
        raise ConfigError(
            f"{key}: importing module {module_name!r} ({_where(e)}) failed: it imports {e.name!r}, "
            f"which is not installed ({_first_line(e)})"
        ) from None
    except Exception as e:  # noqa: BLE001 - the user's module raised while it was imported
        raise ConfigError(
            f"{key}: importing module {module_name!r} ({_where(e)}) failed: {_first_line(e)}"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise ConfigError(
                f"{key}: module {module_name!r} has no attribute {part!r}{did_you_mean(part, names)}"
            )
        obj = getattr(obj, part)
    return obj


def _where(error: BaseException) -> str:
    """file:line of the user's code that raised `error` while being imported (its deepest frame outside
    Python's import machinery), or of the syntax error."""
    import traceback

    if isinstance(error, SyntaxError) and error.filename:
        return f"{error.filename}:{error.lineno}"
    frames = [
        f
        for f in traceback.extract_tb(error.__traceback__)
        if not f.filename.startswith("<frozen") and f.filename != __file__ and "/importlib/" not in f.filename
    ]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"


def _first_line(error: BaseException) -> str:
    text = error.msg if isinstance(error, SyntaxError) else str(error)
    return f"{type(error).__name__}: {(text.strip().splitlines() or [''])[0][:200]}"


@dataclass
class Entry:
    name: str
    factory: Callable[..., Any]
    description: str


class Registry:
    """One table of named factories. Lookups of unknown names suggest the closest known ones."""

    def __init__(self, kind: str):
        self.kind = kind  # "model", "dataset", ... (singular, for messages)
        self._entries: dict[str, Entry] = {}
        # A fallback resolver for names outside the table (e.g. any torch.optim class by name).
        self.fallback: Callable[[str], Entry | None] | None = None
        self.extra_names: Callable[[], list[str]] = lambda: []

    def register(self, name: str, description: str = "") -> Callable:
        def decorator(factory: Callable) -> Callable:
            doc = description or (inspect.getdoc(factory) or "").split("\n")[0]
            self._entries[name] = Entry(name, factory, doc)
            return factory

        return decorator

    def add(self, name: str, factory: Callable, description: str = "") -> None:
        self.register(name, description)(factory)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def entry(self, name: str, key: str) -> Entry:
        if name in self._entries:
            return self._entries[name]
        if ":" in name and not name.startswith("torchvision:"):
            obj = import_object(name, key)
            return Entry(name, obj, inspect.getdoc(obj) or "")
        if self.fallback is not None:
            found = self.fallback(name)
            if found is not None:
                return found
        known = self.names() + self.extra_names()
        raise ConfigError(
            f"{key}: unknown {self.kind} {name!r}{did_you_mean(name, known)}. "
            f"`trainlab list {self.kind}s` shows the known names."
        )

    def get(self, name: str, key: str = "name") -> Callable[..., Any]:
        return self.entry(name, key).factory


DATASETS = Registry("dataset")
MODELS = Registry("model")
LOSSES = Registry("loss")
OPTIMIZERS = Registry("optimizer")
SCHEDULERS = Registry("scheduler")
METRICS = Registry("metric")

KINDS = {
    "datasets": DATASETS,
    "models": MODELS,
    "losses": LOSSES,
    "optimizers": OPTIMIZERS,
    "schedulers": SCHEDULERS,
    "metrics": METRICS,
}


def check_kwargs(
    factory: Callable, kwargs: dict[str, Any], key: str, skip: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Check the keyword arguments a config gives `factory` before anything is built: a name it does
    not take, or a value that fits neither its annotation nor the type of its default, is a ConfigError
    naming `key.name`; so is a NaN or infinite number. Returns the kwargs with numbers written as strings
    converted (YAML 1.1 reads `1e-4` as a string), for every component kind in this one place."""
    try:
        sig = _signature(factory)
    except (TypeError, ValueError):
        return dict(kwargs)
    check_kwarg_names(factory, list(kwargs), key, skip, sig)
    checked = dict(kwargs)
    for name, value in kwargs.items():
        if name in sig.parameters:
            checked[name] = check_value(value, sig.parameters[name], f"{key}.{name}")
    return checked


def check_kwarg_names(
    factory: Callable,
    names: list[str],
    key: str,
    skip: tuple[str, ...] = (),
    sig: inspect.Signature | None = None,
) -> None:
    """A ConfigError naming `key.name` for a keyword `factory` does not take (any, with **kwargs)."""
    try:
        params = (sig or _signature(factory)).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [
        n
        for n, p in params.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and n not in skip
        and n != "self"
    ]
    for name in names:
        if name not in accepted:
            raise ConfigError(
                f"{key}.{name}: {getattr(factory, '__name__', factory)!s} takes no argument {name!r}"
                f"{did_you_mean(name, accepted)}; it takes: {', '.join(accepted) or 'nothing'}"
            )


def _signature(factory: Callable) -> inspect.Signature:
    try:
        return inspect.signature(factory, eval_str=True)  # torch's schedulers annotate with strings
    except (NameError, SyntaxError, TypeError, AttributeError):
        return inspect.signature(factory)


def _expected(param: inspect.Parameter) -> Any:
    """The type a keyword's value must fit: its annotation, else the type of its default (Any: unknown)."""
    if param.annotation is not inspect.Parameter.empty and not isinstance(param.annotation, str):
        return _loosen(param.annotation)
    default = param.default
    if isinstance(default, bool):
        return bool
    if isinstance(default, (int, float)):
        return float | int
    if isinstance(default, str):
        return str
    return Any


def _loosen(ann: Any) -> Any:
    """The annotation as a type a YAML value can be checked against: a tensor may be written as a number or
    a list, any other class (an optimizer, a callable, an enum) is not checked."""
    import types
    import typing
    from collections.abc import Iterable, Sequence

    import torch

    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if ann is torch.Tensor:
        return float | list
    if ann in (int, float, bool, str, type(None), list, tuple, dict) or origin is typing.Literal:
        return ann
    if origin in (typing.Union, types.UnionType):
        loose = tuple(_loosen(a) for a in args)
        return Any if Any in loose else typing.Union[loose]  # noqa: UP007 - built from a tuple
    if origin in (list, tuple, Sequence, Iterable) and args:
        if origin is tuple and Ellipsis not in args:
            return tuple[tuple(_loosen(a) for a in args)]
        return list[_loosen(args[0])]
    return Any


_ADAPTERS: dict[Any, Any] = {}


def check_value(value: Any, param: inspect.Parameter, key: str) -> Any:
    """`value` checked against what `param` expects (pydantic, lax: '1e-4' is a float); returns it with
    numeric strings converted to numbers, anything else as it was."""
    from pydantic import ConfigDict, TypeAdapter, ValidationError

    from trainlab.errors import short

    expected = _expected(param)
    if expected is Any or (value is None and param.default is None):  # None where None is the default
        return value
    if expected not in _ADAPTERS:
        try:
            _ADAPTERS[expected] = TypeAdapter(expected, config=ConfigDict(arbitrary_types_allowed=True))
        except Exception:  # noqa: BLE001 - an annotation pydantic cannot read is not checked
            _ADAPTERS[expected] = None
    adapter = _ADAPTERS[expected]
    if adapter is None:
        return value
    try:
        converted = adapter.validate_python(value)
    except ValidationError as e:
        wanted = getattr(expected, "__name__", None) or str(expected).replace("typing.", "")
        reason = e.errors()[0]["msg"]
        raise ConfigError(f"{key}: {short(value)} does not fit {wanted} ({reason})") from None
    default_finite = not isinstance(param.default, float) or math.isfinite(param.default)
    if default_finite and any(isinstance(v, float) and not math.isfinite(v) for v in _leaves(converted)):
        raise ConfigError(f"{key}: {short(value)} is not a finite number")
    return _numbers_for_strings(value, converted)


def _leaves(value: Any) -> list[Any]:
    return [leaf for v in value for leaf in _leaves(v)] if isinstance(value, (list, tuple)) else [value]


def _numbers_for_strings(original: Any, converted: Any) -> Any:
    """The original value, with each string that `converted` holds as a number replaced by that number."""
    if isinstance(original, str) and isinstance(converted, (int, float)) and not isinstance(converted, bool):
        return converted
    if (
        isinstance(original, (list, tuple))
        and isinstance(converted, (list, tuple))
        and len(original) == len(converted)
    ):
        return type(original)(_numbers_for_strings(o, c) for o, c in zip(original, converted))
    return original


def load_builtins() -> None:
    """Import the modules whose decorators fill the tables (idempotent)."""
    import trainlab.data.sources  # noqa: F401
    import trainlab.engine.optim  # noqa: F401
    import trainlab.losses  # noqa: F401
    import trainlab.metrics  # noqa: F401
    import trainlab.models  # noqa: F401
