"""Name -> factory tables, one per kind of component, and `package.module:attr` imports of user code.

    @MODELS.register("mlp", "multi-layer perceptron: hidden, activation, dropout, batch_norm")
    def mlp(...): ...

    MODELS.get("mlp")          # the factory
    MODELS.get("my_net:Net")   # imports my_net.py from the config's folder or the working directory
"""
from __future__ import annotations

import importlib
import inspect
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
                f"{key}: cannot import module {module_name!r} for {spec!r}: no file {module_name.replace('.', '/')}.py "
                f"in the config's folder, the working directory or the Python path"
            ) from None
        raise
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise ConfigError(f"{key}: module {module_name!r} has no attribute {part!r}{did_you_mean(part, names)}")
        obj = getattr(obj, part)
    return obj


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
        raise ConfigError(f"{key}: unknown {self.kind} {name!r}{did_you_mean(name, known)}. "
                          f"`trainlab list {self.kind}s` shows the known names.")

    def get(self, name: str, key: str = "name") -> Callable[..., Any]:
        return self.entry(name, key).factory


DATASETS = Registry("dataset")
MODELS = Registry("model")
LOSSES = Registry("loss")
OPTIMIZERS = Registry("optimizer")
SCHEDULERS = Registry("scheduler")
METRICS = Registry("metric")

KINDS = {"datasets": DATASETS, "models": MODELS, "losses": LOSSES, "optimizers": OPTIMIZERS,
         "schedulers": SCHEDULERS, "metrics": METRICS}


def check_kwargs(factory: Callable, kwargs: dict[str, Any], key: str, skip: tuple[str, ...] = ()) -> None:
    """Refuse keyword arguments that `factory` does not take, before anything is built."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    params = sig.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items()
                if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
                and n not in skip and n != "self"]
    for name in kwargs:
        if name not in accepted:
            raise ConfigError(f"{key}.{name}: {getattr(factory, '__name__', factory)!s} takes no argument {name!r}"
                              f"{did_you_mean(name, accepted)}; it takes: {', '.join(accepted) or 'nothing'}")


def load_builtins() -> None:
    """Import the modules whose decorators fill the tables (idempotent)."""
    import trainlab.data.sources  # noqa: F401
    import trainlab.engine.optim  # noqa: F401
    import trainlab.losses  # noqa: F401
    import trainlab.metrics  # noqa: F401
    import trainlab.models  # noqa: F401
