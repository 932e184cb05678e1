"""Plots, the self-contained report.html and run comparison, all read from a run directory.

`TensorBoardExtras` (images, graph, histograms) lives in `trainlab.report.tensorboard_extras`, not
imported here, so writing a report needs neither torch nor tensorboard to be loaded.
"""

from trainlab.report.compare import compare_runs
from trainlab.report.html import write_report
from trainlab.report.plots import write_plots

__all__ = ["compare_runs", "write_plots", "write_report"]
