"""report.html rendered by a real headless browser (Debian's chromium): the screenshot is not blank."""

from __future__ import annotations

import shutil
import subprocess

import matplotlib.image as mpimg
import pytest

from test_report import make_regression_run
from trainlab.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (apt-get install -y chromium); "
    "the HTML structure test in test_report.py still runs",
)
def test_report_renders_in_headless_chromium(tmp_path):
    run = make_regression_run(tmp_path / "run")
    report = write_report(run)
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
        "--window-size=1200,2000",
        report.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
    pixels = mpimg.imread(shot)[..., :3]  # (H, W, 3) floats in [0, 1]
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels.std() > 0.05, "the rendered report is blank"
    # the top of the page is the heading and the status on white; the plots further down add colour
    assert (pixels.max(axis=2) - pixels.min(axis=2)).max() > 0.3, "no coloured pixels: plots did not render"
