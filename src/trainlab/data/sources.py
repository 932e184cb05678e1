"""Imports every source module so that its `@DATASETS.register` lines run.

`registry.load_builtins()` and `data.build_data` import this module. The image, torchvision and
user-code modules are imported when present (they are optional while they are being written);
an error inside a module that exists is not hidden.
"""

from __future__ import annotations

import importlib

from trainlab.data import builtin, csv_source  # noqa: F401

for _name in ("images", "vision", "user"):
    try:
        importlib.import_module(f"trainlab.data.{_name}")
    except ModuleNotFoundError as e:
        if e.name != f"trainlab.data.{_name}":
            raise
