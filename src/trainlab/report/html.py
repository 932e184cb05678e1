"""`write_report(run_dir)`: one self-contained report.html (inline CSS, PNGs embedded as base64, no
script, nothing loaded from the network), so it can be mailed or opened years later as it is."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import yaml

from trainlab.report.plots import CAPTIONS, caption, write_plots
from trainlab.report.rundir import RunFiles, read_run

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
       max-width: 1100px; padding: 1.5em; color: #1d1d1f; background: #fff; line-height: 1.45; }
h1 { margin-bottom: .2em; } h2 { border-bottom: 2px solid #e3e3e8; padding-bottom: .2em; margin-top: 1.8em; }
.status { display: inline-block; padding: .15em .6em; border-radius: .8em; font-weight: 600; color: #fff;
          background: #888; }
.status-completed { background: #2e7d32; } .status-interrupted { background: #ef6c00; }
.status-failed { background: #c62828; }
.status-pruned { background: #6d4c41; }
table { border-collapse: collapse; margin: .6em 0; font-size: .92em; display: block; max-width: 100%;
        overflow-x: auto; }
th, td { border: 1px solid #d8d8de; padding: .3em .7em; text-align: right; }
th { background: #f3f3f6; } td:first-child, th:first-child { text-align: left; }
pre { background: #f6f6f8; border: 1px solid #e3e3e8; padding: .8em; overflow-x: auto; font-size: .82em;
      max-height: 32em; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #e3e3e8; }
figcaption { color: #555; font-size: .9em; margin-top: .3em; }
.muted { color: #777; } .verdict { font-size: 1.1em; font-weight: 600; }
ul.skipped { color: #777; font-size: .9em; }
"""


def write_report(run_dir: Path) -> Path:
    """Write run_dir/plots/*.png and run_dir/report.html; return the report's path."""
    run_dir = Path(run_dir)
    skipped: dict[str, str] = {}
    plots = write_plots(run_dir, skipped)
    run = read_run(run_dir)
    path = run_dir / "report.html"
    path.write_text(render(run, plots, skipped), encoding="utf-8")
    return path


def render(run: RunFiles, plots: dict[str, Path], skipped: dict[str, str]) -> str:
    s = run.summary
    status = str(s.get("status", "unknown"))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(run.name)} · trainlab report</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(run.name)}</h1>",
        f'<p>Status: <span class="status status-{_e(status)}" id="status">{_e(status)}</span> · '
        f"task: {_e(run.task)} · epochs completed: {_e(s.get('epochs_completed', '?'))} · "
        f"steps: {_e(s.get('global_step', '?'))}"
        + (
            f" · {float(s['samples_per_second']):,.0f} samples/s"
            if _is_num(s.get("samples_per_second"))
            else ""
        )
        + "</p>",
        _diagnosis(s.get("diagnosis")),
        "<h2>Metrics</h2>",
        _metrics_tables(s),
        "<h2>Plots</h2>",
        _plots(run, plots, skipped),
        "<h2>Dataset</h2>",
        _dataset(s.get("data_info"), run.class_names),
        "<h2>Model</h2>",
        f"<pre>{_e(run.model_summary)}</pre>"
        if run.model_summary
        else '<p class="muted">No model_summary.txt.</p>',
        "<h2>Config</h2>",
        f"<pre>{_e(yaml.safe_dump(run.config, sort_keys=False))}</pre>"
        if run.config
        else '<p class="muted">No config.yaml.</p>',
        f'<p class="muted">Run directory: {_e(run.path.resolve())}</p>',
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)


def _metrics_tables(summary: dict[str, Any]) -> str:
    """Final metrics (one row per split, one column per metric) and the best checkpoint's values."""
    final = {split: m for split, m in (summary.get("final") or {}).items() if isinstance(m, dict) and m}
    out = []
    if final:
        cols = list(dict.fromkeys(k for m in final.values() for k in m))
        rows = [[split] + [m.get(c) for c in cols] for split, m in final.items()]
        out.append("<h3>Final</h3>" + table(["split", *cols], rows, table_id="final-metrics"))
    best = summary.get("best")
    if isinstance(best, dict) and best:
        out.append("<h3>Best</h3>" + _best(best))
    return (
        "\n".join(out)
        or '<p class="muted">No summary.json metrics (the run may not have finished an epoch).</p>'
    )


def _best(best: dict[str, Any]) -> str:
    """The best checkpoint: which epoch and why in a sentence, its metrics as one row per split (like
    the Final table, so the page never needs one column per split-and-metric), anything else below."""
    splits: dict[str, dict[str, Any]] = {}
    other: dict[str, Any] = {}
    for key, value in flatten(best).items():
        split, _, name = key.partition("_")
        if split in ("train", "val", "test") and name:
            splits.setdefault(split, {})[name] = value
        elif key not in ("metric", "value", "epoch"):
            other[key] = value
    said = []
    if best.get("epoch") is not None:
        said.append(f"epoch {_e(best['epoch'])}")
    if best.get("metric") is not None:
        said.append(f"chosen by {_e(best['metric'])} = {_e(fmt(best.get('value')))}")
    out = [f"<p>Best checkpoint: {', '.join(said)}.</p>"] if said else []
    if splits:
        cols = list(dict.fromkeys(k for m in splits.values() for k in m))
        out.append(
            table(
                ["split", *cols],
                [[split] + [m.get(c) for c in cols] for split, m in splits.items()],
                table_id="best-metrics",
            )
        )
    if other:
        out.append(table(["", "value"], [[k, v] for k, v in other.items()]))
    return "\n".join(out)


def _plots(run: RunFiles, plots: dict[str, Path], skipped: dict[str, str]) -> str:
    out = []
    for name in CAPTIONS:  # the report's order
        if name in plots:
            out.append(figure_html(name, plots[name], caption(name, run)))
    if skipped:
        out.append(
            '<p class="muted">Not drawn for this run:</p><ul class="skipped">'
            + "".join(f"<li>{_e(name.replace('_', ' '))}: {_e(why)}</li>" for name, why in skipped.items())
            + "</ul>"
        )
    return "\n".join(out)


def _dataset(info: Any, class_names: list[str]) -> str:
    """Split sizes, the class balance per split (counts and shares), and any other facts in data_info."""
    if not isinstance(info, dict) or not info:
        return '<p class="muted">No data_info in summary.json.</p>'
    out = []
    sizes = info.get("sizes")
    if isinstance(sizes, dict) and sizes:
        out.append(table(["split", "samples"], [[k, v] for k, v in sizes.items()], table_id="dataset-sizes"))
    counts = info.get("class_counts")
    if isinstance(counts, dict) and counts:
        if all(isinstance(v, int) for v in counts.values()):  # one mapping class -> count, not per split
            counts = {"all": counts}
        per_split = {split: _as_counts(c, class_names) for split, c in counts.items()}
        classes = list(dict.fromkeys(k for c in per_split.values() for k in c))
        rows = []
        for cls in classes:
            row: list[Any] = [cls]
            for c in per_split.values():
                total = sum(c.values()) or 1
                row.append(f"{c.get(cls, 0)} ({100 * c.get(cls, 0) / total:.1f}%)")
            rows.append(row)
        out.append("<h3>Class balance</h3>" + table(["class", *per_split], rows, table_id="class-balance"))
    rest = {k: v for k, v in info.items() if k not in ("sizes", "class_counts")}
    if rest:
        out.append(table(["", "value"], [[k, _value(v)] for k, v in rest.items()]))
    return "\n".join(out)


def _value(v: Any) -> Any:
    """A data_info value for a table cell: lines of text (e.g. the data notes) one after another, other
    lists and mappings as JSON with their characters (64×64, not 64\\u00d764)."""
    if isinstance(v, list) and v and all(isinstance(line, str) for line in v):
        return " · ".join(v)
    return json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v


def _diagnosis(diag: Any) -> str:
    if not isinstance(diag, dict) or not diag:
        return ""
    out = ['<h2 id="diagnosis">Diagnosis</h2>']
    if diag.get("verdict"):
        out.append(f'<p class="verdict">{_e(diag["verdict"])}</p>')
    if diag.get("explanation"):
        out.append(f"<p>{_e(diag['explanation'])}</p>")
    steps = diag.get("next_steps")
    if steps:
        steps = steps if isinstance(steps, list) else [steps]
        out.append("<h3>Next steps</h3><ol>" + "".join(f"<li>{_e(s)}</li>" for s in steps) + "</ol>")
    for key in diag:
        if key not in ("verdict", "explanation", "next_steps") and diag[key] is not None:
            out.append(
                f"<h3>{_e(key.replace('_', ' ').capitalize())}</h3>"
                f"<pre>{_e(json.dumps(diag[key], indent=2, default=str))}</pre>"
            )
    return "\n".join(out)


def table(header: list[Any], rows: list[list[Any]], table_id: str | None = None) -> str:
    """An escaped HTML table; floats shown with 4 significant digits."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    ident = f' id="{_e(table_id)}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _as_counts(c: Any, class_names: list[str]) -> dict[str, int]:
    """Class counts given as a list (index = class) or a mapping, keyed by class name."""
    if isinstance(c, dict):
        return {str(k): int(v) for k, v in c.items()}
    if isinstance(c, list):
        return {(class_names[i] if i < len(class_names) else str(i)): int(v) for i, v in enumerate(c)}
    return {}


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def figure_html(ident: str, png: Path, caption_text: str) -> str:
    """A PNG inlined as a `<figure>` (base64: the page stays one self-contained file)."""
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (
        f'<figure id="plot-{ident}"><img alt="{_e(ident)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_e(caption_text)}</figcaption></figure>"
    )
