"""`compare_runs`: the config keys that differ between runs, their best and final metrics, and their
loss curves overlaid (the "shallow vs deep model" comparison), as text, compare.png and compare.html."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from trainlab.errors import TrainlabError
from trainlab.logging import output_path
from trainlab.report.html import CSS, flatten, fmt, table
from trainlab.report.rundir import RunFiles, epoch_rows, read_run

# config keys that differ between runs without being a difference in the experiment
IGNORED_KEYS = {"name"}


def default_compare_dir() -> Path:
    """runs/compare, or runs/compare-2, -3, ... when that already holds a comparison (never the current
    folder: the files would land at a project's root)."""
    base = Path("runs") / "compare"
    for i in range(1, 10_000):
        path = base if i == 1 else base.with_name(f"compare-{i}")
        if not (path / "compare.html").exists():
            return path
    return base


def compare_runs(run_dirs: list[Path], out_dir: Path | None = None, echo: bool = False) -> dict[str, Any]:
    """Compare runs; write out_dir/compare.png and out_dir/compare.html (default: `default_compare_dir()`).

    Returns {"text": the table as text, "header": [...], "rows": [[key, value per run], ...],
    "config_diff": {dotted key: [value per run]}, "png": Path, "html": Path}; prints the text when `echo`.
    """
    runs = [_load(Path(d)) for d in run_dirs]
    if not runs:
        raise TrainlabError("compare needs at least one run directory.")
    out_dir = default_compare_dir() if out_dir is None else output_path(out_dir, folder=True)
    out_dir.mkdir(parents=True, exist_ok=True)

    labels = _labels(runs)
    configs = [{k: v for k, v in flatten(r.config).items() if k not in IGNORED_KEYS} for r in runs]
    keys = sorted(set().union(*configs))
    config_diff = {k: [c.get(k) for c in configs] for k in keys if len({repr(c.get(k)) for c in configs}) > 1}
    metrics = [_metric_values(r) for r in runs]
    metric_keys = list(dict.fromkeys(k for m in metrics for k in m))

    header = ["", *labels]
    rows = [[k, *vals] for k, vals in config_diff.items()]
    rows += [[k, *(m.get(k) for m in metrics)] for k in metric_keys]
    text = _text_table(header, rows, n_config=len(config_diff))
    png = plot_compare(runs, labels, out_dir / "compare.png")
    html_path = out_dir / "compare.html"
    html_path.write_text(_html(header, rows, len(config_diff), png), encoding="utf-8")
    if echo:
        print(text)
        print(f"\nwrote {png} and {html_path}")
    return {
        "text": text,
        "header": header,
        "rows": rows,
        "config_diff": config_diff,
        "png": png,
        "html": html_path,
    }


def plot_compare(runs: list[RunFiles], labels: list[str], path: Path) -> Path:
    """Loss per epoch of every run: one colour per run, val solid, train dashed."""
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    for i, (run, label) in enumerate(zip(runs, labels)):
        color = f"C{i % 10}"
        for split, style in (("train", "--"), ("val", "-")):
            pts = [
                (r["epoch"], r["loss"])
                for r in epoch_rows(run.metrics)
                if r.get("split") == split and isinstance(r.get("loss"), (int, float))
            ]
            if pts:
                ax.plot(*zip(*pts), style, color=color, marker="o", ms=3, label=f"{label} {split}")
    ax.set(xlabel="epoch", ylabel="loss", title="loss per epoch (train dashed, val solid)")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no loss values in the runs' metrics.jsonl", ha="center", transform=ax.transAxes)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def _load(path: Path) -> RunFiles:
    if not path.is_dir():
        raise TrainlabError(f"compare: run directory {str(path)!r} does not exist (or is not a directory).")
    if not any((path / f).is_file() for f in ("config.yaml", "summary.json", "metrics.jsonl")):
        raise TrainlabError(
            f"compare: {str(path)!r} is not a trainlab run directory: it has no config.yaml, "
            "summary.json or metrics.jsonl."
        )
    return read_run(path)


def _labels(runs: list[RunFiles]) -> list[str]:
    """Run names, or directory paths where names repeat (two runs of the same config)."""
    names = [r.path.name for r in runs]
    return names if len(set(names)) == len(names) else [str(r.path) for r in runs]


def _metric_values(run: RunFiles) -> dict[str, Any]:
    """best.<key> and final.<split>.<metric> from summary.json, falling back to the last epoch rows."""
    s = run.summary
    out = {f"best.{k}": v for k, v in flatten(s.get("best") or {}).items()}
    final = s.get("final") or {}
    if not any(final.values()):  # an unfinished run: its last epoch row per split
        final = {}
        for r in epoch_rows(run.metrics):
            final[r.get("split", "train")] = {
                k: v for k, v in r.items() if k not in ("epoch", "step", "split", "kind")
            }
    for split in ("train", "val", "test"):
        for k, v in (final.get(split) or {}).items():
            out[f"final.{split}.{k}"] = v
    out["status"] = s.get("status")
    out["epochs_completed"] = s.get("epochs_completed")
    return out


def _text_table(header: list[str], rows: list[list[Any]], n_config: int) -> str:
    cells = [[str(h) for h in header]] + [[fmt(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    line = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
    out = [line(cells[0])]
    out.append("-- config differences --" if n_config else "-- no config differences --")
    for i, row in enumerate(cells[1:]):
        if i == n_config:
            out.append("-- metrics --")
        out.append(line(row))
    return "\n".join(out)


def _html(header: list[str], rows: list[list[Any]], n_config: int, png: Path) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return "\n".join(
        [
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>trainlab compare</title>'
            f"<style>{CSS}</style></head><body><h1>Run comparison</h1>",
            "<h2>Config differences</h2>",
            table(header, rows[:n_config], table_id="config-diff")
            if n_config
            else '<p class="muted">The configs are the same.</p>',
            "<h2>Metrics</h2>",
            table(header, rows[n_config:], table_id="metrics"),
            '<h2>Loss curves</h2><figure><img alt="loss curves" '
            f'src="data:image/png;base64,{data}"></figure>',
            "</body></html>",
        ]
    )
