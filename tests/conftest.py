"""Shared helpers for the tests: running the `trainlab` command (as a process or in-process), the one
digits run that the end-to-end tests share, and a small fast config.

The digits run is the built-in default example trained once per session with the default config
(all 12 epochs), so the accuracy and run-directory assertions test the real thing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

# The team's run-directory checker lives beside the repository (../shared/tools); it may be absent
# on another machine, in which case the tests that use it skip that sub-check.
CHECK_RUN_DIR = Path(__file__).resolve().parents[2] / "shared" / "tools" / "check_run_dir.py"


def run_cli(
    *args: str, cwd: str | Path | None = None, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess:
    """`python -m trainlab ARGS` as a separate process, progress bars off (TQDM_DISABLE=1)."""
    full_env = {**os.environ, "TQDM_DISABLE": "1", "OMP_WAIT_POLICY": "PASSIVE", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "trainlab", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_in_process(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """`trainlab ARGS` through `trainlab.cli.main` in this process: (exit code, stdout, stderr).
    Cheaper than a process (no interpreter and torch start-up) for commands that are not the subject
    of an end-to-end test."""
    from trainlab.cli import main

    capsys.readouterr()  # drop what earlier code printed
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def load_run_dir_checker() -> ModuleType | None:
    """../shared/tools/check_run_dir.py as a module, or None when it is not there."""
    if not CHECK_RUN_DIR.is_file():
        return None
    spec = importlib.util.spec_from_file_location("check_run_dir", CHECK_RUN_DIR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_config(**sections: Any) -> dict[str, Any]:
    """A fast config: digits with a small MLP, batch 64 (1257 training images -> 20 batches per epoch).
    Keyword arguments replace or extend whole sections, e.g. `train={"epochs": 2}`."""
    config: dict[str, Any] = {
        "name": "tiny",
        "seed": 0,
        "data": {"source": "digits", "batch_size": 64},
        "model": {"name": "mlp", "hidden": [32]},
        "optimizer": {"name": "Adam", "lr": 0.01},
        "train": {"epochs": 1, "device": "cpu"},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


@dataclass
class DigitsRun:
    path: Path
    proc: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> DigitsRun:
    """`trainlab train --out DIR` with no config (the built-in digits CNN), once per session."""
    path = tmp_path_factory.mktemp("digits") / "run"
    proc = run_cli("train", "--out", str(path), timeout=600)
    return DigitsRun(path, proc)


@pytest.fixture
def no_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip the plots and report.html at the end of a run (seconds of matplotlib) in tests whose subject
    is the training itself; the digits end-to-end run keeps the real report."""
    import trainlab.report

    def stub(run_dir: str | Path) -> Path:
        path = Path(run_dir) / "report.html"
        path.write_text("<!doctype html><title>stub</title>")
        return path

    monkeypatch.setattr(trainlab.report, "write_report", stub)


@pytest.fixture
def one_thread():
    """Tiny models train fastest on one thread; more only add contention on a shared 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_screenshot(page: Path, tmp_path: Path, width: int = 1200, height: int = 2000) -> Any:
    """`page` rendered by headless Chromium: the screenshot's (H, W, 3) pixels in [0, 1]."""
    import matplotlib.image as mpimg

    shot = tmp_path / "shot.png"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        f"--window-size={width},{height}",
        Path(page).resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert shot.is_file(), f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
    return mpimg.imread(shot)[..., :3]
