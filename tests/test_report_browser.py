"""report.html rendered by a real headless browser (Debian's chromium): the screenshot is not blank."""

from __future__ import annotations

import pytest

from conftest import CHROMIUM, chromium_screenshot
from test_report import make_regression_run
from trainlab.report import write_report


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (apt-get install -y chromium); "
    "the HTML structure test in test_report.py still runs",
)
def test_report_renders_in_headless_chromium(tmp_path):
    run = make_regression_run(tmp_path / "run")
    report = write_report(run)
    pixels = chromium_screenshot(report, tmp_path)  # (H, W, 3) floats in [0, 1]
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels.std() > 0.05, "the rendered report is blank"
    # the top of the page is the heading and the status on white; the plots further down add colour
    assert (pixels.max(axis=2) - pixels.min(axis=2)).max() > 0.3, "no coloured pixels: plots did not render"
