"""`write_sweep_report(out_dir, study, summary)`: DIR/sweep_report.html, one self-contained page (PNGs
inlined as base64, like report.html): the trials table, Optuna's optimisation history, parallel
coordinates and parameter importances (optuna.visualization.matplotlib), and loss curves of trials
overlaid (every trial of a grid first; the best trial with the next best)."""

from __future__ import annotations

import html
import warnings
from pathlib import Path
from typing import Any

from trainlab.report.compare import plot_compare
from trainlab.report.html import CSS, figure_html, fmt
from trainlab.report.rundir import read_run
from trainlab.sweep_space import describe, flow


def write_sweep_report(out_dir: Path, study: Any, summary: dict[str, Any], grid: bool = False) -> Path:
    out_dir = Path(out_dir)
    plots = out_dir / "plots"
    plots.mkdir(exist_ok=True)
    figures: list[tuple[str, str, Path]] = []  # (id, caption, png)
    skipped: dict[str, str] = {}
    trials = summary["trials"]
    metric = summary["metric"]
    if grid:
        path = _overlay(trials, plots / "all_trials_loss.png")
        if path:
            figures.append(
                (
                    "all-trials",
                    (
                        "Training (dashed) and validation (solid) loss of every trial of "
                        "the grid, same seed: the comparison experiment."
                    ),
                    path,
                )
            )
    optuna_figures = [  # (id, title, caption, function of optuna.visualization.matplotlib)
        (
            "history",
            "Optimisation history",
            f"{metric} of each trial and the best so far.",
            "plot_optimization_history",
        ),
        (
            "parallel",
            "Parallel coordinates",
            (f"each line is a complete trial, through its parameter values to its {metric}."),
            "plot_parallel_coordinate",
        ),
        (
            "importances",
            "Parameter importances",
            (f"how much each parameter explains {metric} (fANOVA over the complete trials)."),
            "plot_param_importances",
        ),
    ]
    for name, title, caption, function in optuna_figures:
        if name == "importances" and sum(t["state"] == "complete" for t in trials) < 2:
            skipped[title] = "they need at least 2 complete trials"
            continue
        try:
            figures.append(
                (name, f"{title}: {caption}", _optuna_figure(function, study, plots / f"{name}.png", metric))
            )
        except Exception as e:  # noqa: BLE001 - a figure Optuna cannot draw for this study is noted, not fatal
            skipped[title] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    ranked = sorted(
        (t for t in trials if t["state"] == "complete" and t["value"] is not None and t["run_dir"]),
        key=lambda t: t["value"],
        reverse=summary["direction"] == "maximize",
    )
    if ranked:
        path = _overlay(ranked[:2], plots / "best_trials_loss.png")
        if path:
            figures.append(
                (
                    "best",
                    "Loss curves of the best trial"
                    + (" and the next best" if len(ranked) > 1 else "")
                    + " (train dashed, val solid).",
                    path,
                )
            )
    page = out_dir / "sweep_report.html"
    page.write_text(_render(out_dir, summary, figures, skipped), encoding="utf-8")
    return page


def _optuna_figure(function: str, study: Any, path: Path, metric: str) -> Path:
    import matplotlib
    import matplotlib.pyplot as plt

    # Importing Optuna's matplotlib module switches the global style to ggplot; keep that inside.
    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        import optuna.visualization.matplotlib as ovm

        plt.style.use("ggplot")
        ax = getattr(ovm, function)(study, target_name=metric)
    fig = ax.figure
    fig.set_size_inches(9, 5)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _overlay(trials: list[dict[str, Any]], path: Path) -> Path | None:
    runs = [
        (t, Path(t["run_dir"]))
        for t in trials
        if t.get("run_dir") and (Path(t["run_dir"]) / "metrics.jsonl").is_file()
    ]
    if not runs:
        return None
    labels = [f"#{t['number']} " + describe(t["params"], short=True) for t, _ in runs]
    return plot_compare([read_run(p) for _, p in runs], labels, path)


def _render(
    out_dir: Path, summary: dict[str, Any], figures: list[tuple[str, str, Path]], skipped: dict[str, str]
) -> str:
    best = summary.get("best")
    metric = summary["metric"]
    head = (
        f"<p>Best: trial {best['trial']}, {_e(metric)} = {_e(fmt(best['value']))} "
        f"({_e(describe(best['params'], short=True))})</p>"
        if best
        else '<p class="muted">No complete trial yet.</p>'
    )
    states: dict[str, int] = {}
    for t in summary["trials"]:
        states[t["state"]] = states.get(t["state"], 0) + 1
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(out_dir.name)} · trainlab sweep</title><style>{CSS}</style></head><body>",
        f"<h1>Sweep {_e(out_dir.name)}</h1>",
        f"<p>{_e(summary['direction'])} {_e(metric)} · "
        + " · ".join(f"{n} {_e(s)}" for s, n in states.items())
        + "</p>",
        head,
        "<h2>Figures</h2>",
    ]
    for ident, caption, png in figures:
        parts.append(figure_html(ident, png, caption))
    if skipped:
        parts.append(
            '<p class="muted">Not drawn:</p><ul class="skipped">'
            + "".join(f"<li>{_e(k)}: {_e(v)}</li>" for k, v in skipped.items())
            + "</ul>"
        )
    parts += ["<h2>Trials</h2>", _trials_table(out_dir, summary), "</body></html>"]
    return "\n".join(parts)


def _trials_table(out_dir: Path, summary: dict[str, Any]) -> str:
    """One row per trial: number, state, value, each parameter, a link to the trial's own report."""
    trials = summary["trials"]
    keys = list(dict.fromkeys(k for t in trials for k in t["params"]))
    head = "".join(f"<th>{_e(h)}</th>" for h in ["trial", "state", summary["metric"], *keys, "run"])
    rows = []
    for t in trials:
        run = Path(t["run_dir"]) if t.get("run_dir") else None
        link = ""
        if run is not None:
            target = run / "report.html"
            try:
                href = target.resolve().relative_to(out_dir.resolve()).as_posix()
            except ValueError:
                href = target.resolve().as_uri()
            link = f'<a href="{_e(href)}">{_e(run.name)}</a>'
        cells = [
            t["number"],
            t["state"],
            t["value"],
            *(
                p if isinstance(p, (float, str)) or p is None else flow(p)
                for p in (t["params"].get(k) for k in keys)
            ),
        ]
        rows.append("<tr>" + "".join(f"<td>{_e(fmt(c))}</td>" for c in cells) + f"<td>{link}</td></tr>")
    return f'<table id="trials"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)
