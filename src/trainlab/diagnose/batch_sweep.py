"""Batch size against time: time per update, samples per second and time per epoch.

On parallel hardware a larger batch costs about the same time per update until the device is full
("free"); from then on time per update grows about linearly with the batch size and time per
epoch stops falling. The sweep times `step_fn(batch_size)` (one forward/backward/step, say) for
powers of two and flags the first batch size where doubling it roughly doubles the update time.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _is_out_of_memory(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or "out of memory" in str(e).lower()


def batch_size_sweep(
    step_fn: Callable[[int], None],
    dataset_size: int,
    sizes: list[int] | None = None,
    time_limit: float = 30.0,
    clock: Callable[[], float] = time.perf_counter,
    repeats: int = 3,
    warmup: int = 1,
    linear_growth: float = 1.6,
) -> list[dict[str, Any]]:
    """One row per batch size: {batch_size, time_per_update, samples_per_second, time_per_epoch,
    growth (time per update ÷ the previous size's, scaled to a doubling), free}.

    `step_fn(b)` must finish its work before returning (synchronise CUDA inside it). Each size runs
    `warmup` untimed calls, then `repeats` timed ones (the median counts). The sweep stops at the
    first size that runs out of memory or once `time_limit` seconds are spent. `free` is False from
    the first size whose update time grew by at least `linear_growth` per doubling (2 = linear).
    """
    sizes = sizes or [2**k for k in range(int(math.log2(max(1, dataset_size))) + 1)]
    start = clock()
    rows: list[dict[str, Any]] = []
    free = True
    for b in sorted(sizes):
        try:
            for _ in range(warmup):
                step_fn(b)
            times = []
            for _ in range(repeats):
                t0 = clock()
                step_fn(b)
                times.append(clock() - t0)
        except (RuntimeError, MemoryError) as e:
            if not _is_out_of_memory(e):
                raise
            if rows:
                rows[-1]["stopped"] = f"batch size {b}: out of memory"
            break
        t = statistics.median(times)
        growth = None
        if rows and rows[-1]["time_per_update"] > 0:
            # per doubling, so that sizes that are not consecutive powers of two compare alike
            growth = (t / rows[-1]["time_per_update"]) ** (1 / math.log2(b / rows[-1]["batch_size"]))
            free = free and growth < linear_growth
        rows.append(
            {
                "batch_size": b,
                "time_per_update": t,
                "samples_per_second": b / t if t > 0 else math.inf,
                "time_per_epoch": math.ceil(dataset_size / b) * t,
                "growth": growth,
                "free": free,
            }
        )
        if clock() - start > time_limit:
            rows[-1]["stopped"] = f"time limit {time_limit:g}s"
            break
    return rows


def largest_free_batch(rows: list[dict[str, Any]]) -> int | None:
    """The largest batch size that still cost about the same time per update as the smaller ones."""
    free = [r["batch_size"] for r in rows if r["free"]]
    return max(free) if free else None


def plot_batch_sweep(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Time per update and time per epoch against batch size (log2 axis); writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = [r["batch_size"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(b, [r["time_per_update"] for r in rows], marker="o")
    ax1.set_ylabel("seconds per update")
    ax2.plot(b, [r["time_per_epoch"] for r in rows], marker="o", color="C1")
    ax2.set_ylabel("seconds per epoch")
    limit = largest_free_batch(rows)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        if limit is not None and limit < b[-1]:
            ax.axvline(limit, color="gray", linestyle="--", label=f"free up to {limit}")
            ax.legend()
    fig.suptitle("Batch size sweep")
    from trainlab.report.plots import save_figure

    return save_figure(fig, path)
