"""The `trainlab` command: parses arguments, calls the library, maps errors to exit codes.

Exit codes: 0 success; 2 bad usage, config, data or checkpoint (one paragraph, no traceback);
1 any other failure, a diverged run included; 130 after SIGINT and 143 after SIGTERM, in both cases
after saving a resumable checkpoint.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import click

from trainlab.errors import Interrupted, RunFailed, TrainlabError


def _fail(message: str, code: int = 2) -> None:
    import os

    if int(os.environ.get("WORLD_SIZE", 1)) > 1:  # under torchrun: say which process failed
        message = f"rank {os.environ.get('RANK', '?')}: {message}"
    click.echo(
        textwrap.fill("error: " + message, width=100, break_long_words=False, break_on_hyphens=False),
        err=True,
    )
    sys.exit(code)


class _Group(click.Group):
    """Turns trainlab's own errors into messages and exit codes."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TrainlabError as e:
            _fail(str(e), 2)
        except Interrupted as e:
            click.echo(f"interrupted ({e}); last.pt saved — continue with --resume", err=True)
            sys.exit(e.exit_code)
        except RunFailed as e:  # diverged, out of memory
            _fail(str(e), 1)
        except KeyboardInterrupt:  # Ctrl-C outside the training loop's own handler (start-up, test, report)
            click.echo(
                "interrupted (SIGINT); what was already written is kept — a run with checkpoints/last.pt "
                "continues (and finishes its report) with --resume",
                err=True,
            )
            sys.exit(130)


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """A warning on the console as one `warning: ...` line, not Python's file:line and source echo."""
    return f"warning: {message}\n"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="trainlab")
def cli() -> None:
    """trainlab: train, evaluate, diagnose and use PyTorch models from a short YAML file."""
    import warnings

    warnings.formatwarning = _format_warning


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1)
@click.option("--out", type=click.Path(path_type=Path), help="run directory (default runs/<name>)")
@click.option("--resume", is_flag=True, help="continue the run in --out from its last checkpoint")
@click.option("--quiet", "-q", is_flag=True, help="no progress bars or epoch lines")
@click.option(
    "--smoke", is_flag=True, help="2 training steps, 1 validation and 1 test batch (train.smoke=true)"
)
@click.option(
    "--nproc", type=int, default=None, help="train with N processes on this machine (torchrun + DDP)"
)
@click.option(
    "--max-restarts",
    type=int,
    default=0,
    show_default=True,
    help="with --nproc: restart all processes up to K times when one fails (they resume from last.pt)",
)
def train(
    args: tuple[str, ...],
    out: Path | None,
    resume: bool,
    quiet: bool,
    smoke: bool,
    nproc: int | None,
    max_restarts: int,
) -> None:
    """Train from CONFIG.yaml (default: the built-in digits example) with KEY=VALUE overrides."""
    from trainlab.config import load_config

    config = None
    overrides = list(args)
    if overrides and "=" not in overrides[0]:
        config = overrides.pop(0)
    for o in overrides:
        if "=" not in o:
            raise TrainlabError(
                f"argument {o!r} is neither a config file (it must come first) nor a KEY=VALUE override"
            )
    if smoke:
        overrides.append("train.smoke=true")
    if resume and config is None and out is not None and (out / "config.yaml").is_file():
        config = str(out / "config.yaml")  # `train --out DIR --resume`: the run's own resolved config
    cfg = load_config(config, overrides)  # a bad key or value is reported before torch is even imported
    from trainlab.run import default_run_dir

    if nproc and nproc > 1:
        from trainlab.engine.distributed import launch

        out = out or default_run_dir(cfg, existing=resume)  # one folder for all ranks
        argv = [
            "train",
            *([config] if config else []),
            *overrides,
            "--out",
            str(out),
            *(["--resume"] if resume else []),
            *(["--quiet"] if quiet else []),
        ]
        sys.exit(launch(nproc, argv, max_restarts))
    from trainlab.engine import distributed
    from trainlab.run import train as run_train

    rank, world_size, _ = distributed.env()
    if rank > 0:  # under torchrun only rank 0 talks; the others print errors only (stderr)
        import os
        import warnings

        quiet = True
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the worker
        warnings.simplefilter("ignore")
    if resume and out is None:
        out = default_run_dir(cfg, existing=True)
    if world_size == 1:  # workers of --nproc / torchrun get their thread count from the launcher
        from trainlab.engine.device import busy_machine_note

        note = busy_machine_note(cfg.train.device)
        if note:
            click.echo(note, err=True)
    try:
        run = run_train(cfg, out=out, resume=resume, quiet=quiet)
    finally:
        distributed.teardown()
    if quiet and rank == 0:  # --quiet still says where the run went
        click.echo(f"run directory: {run.run_dir}")


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1)
@click.option("--trials", type=int, default=None, help="finished trials to reach (default: sweep.trials)")
@click.option("--out", type=click.Path(path_type=Path), help="sweep folder (default runs/<name>-sweep)")
@click.option(
    "--storage", default=None, help="an Optuna RDB URL shared by machines (default: sqlite DIR/study.db)"
)
@click.option("--workers", type=int, default=1, show_default=True, help="trial processes on this machine")
@click.option("--resume", is_flag=True, help="continue the sweep in --out: killed trials run again")
@click.option(
    "--grid",
    multiple=True,
    metavar="KEY=[v1,v2,...]",
    help="repeatable: a full grid over these values, same seed, no pruning",
)
@click.option("--quiet", "-q", is_flag=True, help="no per-trial lines")
def sweep(
    args: tuple[str, ...],
    trials: int | None,
    out: Path | None,
    storage: str | None,
    workers: int,
    resume: bool,
    grid: tuple[str, ...],
    quiet: bool,
) -> None:
    """Hyperparameter search over the config's sweep.params (or --grid) with Optuna; one run per trial."""
    overrides = list(args)
    config = overrides.pop(0) if overrides and "=" not in overrides[0] else None
    for o in overrides:
        if "=" not in o:
            raise TrainlabError(
                f"argument {o!r} is neither a config file (it must come first) nor a KEY=VALUE override"
            )
    from trainlab.sweep import WorkerFailed, run_sweep

    try:
        run_sweep(
            config,
            overrides,
            trials=trials,
            out=out,
            storage=storage,
            workers=workers,
            resume=resume,
            grid=list(grid),
            quiet=quiet,
        )
    except WorkerFailed as e:
        _fail(str(e), e.exit_code)


@cli.command("eval")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True)
@click.option(
    "--checkpoint",
    type=click.Choice(["best", "last"]),
    default="best",
    show_default=True,
    help="the best weights (by train.monitor) or the last ones",
)
def eval_(run_dir: Path, split: str, checkpoint: str) -> None:
    """Evaluate a checkpoint of RUN_DIR and print its metrics."""
    from trainlab.finished import evaluate_run

    logs = evaluate_run(run_dir, split, checkpoint)
    click.echo(
        f"{split}: " + " ".join(f"{k}={v:.4f}" for k, v in logs.items()) + f" ({checkpoint} checkpoint)"
    )


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="CSV to write (default: print it)")
@click.option(
    "--backend",
    type=click.Choice(["torch", "onnx"]),
    default="torch",
    show_default=True,
    help="onnx: run RUN_DIR/export/model.onnx in ONNX Runtime (exported first when missing)",
)
def predict(run_dir: Path, input_path: Path, out: Path | None, backend: str) -> None:
    """Predict on a CSV of feature rows or on image files / a folder, with the run's preprocessing."""
    from trainlab.predict import predict as run_predict

    text = run_predict(run_dir, input_path, out, backend=backend)
    if out is None:
        click.echo(text, nl=False)
    else:
        click.echo(f"wrote {out}")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "format_",
    type=click.Choice(["onnx", "exported", "all"]),
    default="all",
    show_default=True,
    help="onnx: model.onnx; exported: model.pt2 (torch.export); all: both",
)
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="file to write (default RUN_DIR/export/model.onnx, model.pt2); with --format all its suffix "
    "becomes .onnx and .pt2",
)
@click.option("--opset", type=int, default=None, help="ONNX opset version (default: the exporter's)")
@click.option(
    "--rtol",
    type=float,
    default=1e-4,
    show_default=True,
    help="verification passes when max|exported - torch| <= rtol * max(1, max|torch|)",
)
def export(
    run_dir: Path, format_: str, checkpoint: str, out: Path | None, opset: int | None, rtol: float
) -> None:
    """Export the trained model to ONNX and/or a torch.export program, and verify them on the test data."""
    from trainlab.export import FORMATS, export_run

    result = export_run(
        run_dir,
        list(FORMATS) if format_ == "all" else [format_],
        checkpoint=checkpoint,
        out=out,
        opset=opset,
        rtol=rtol,
    )
    if not result.passed:
        _fail(
            "verification failed: an exported model's outputs differ from the PyTorch model's beyond the "
            "tolerance (see above)",
            1,
        )


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
def report(run_dir: Path) -> None:
    """(Re)write RUN_DIR/report.html and RUN_DIR/plots/*.png."""
    from trainlab.report import write_report

    if not (run_dir / "summary.json").is_file():
        raise TrainlabError(f"{run_dir} is not a run directory (no summary.json)")
    click.echo(f"report: {write_report(run_dir)}")


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="folder for compare.png and compare.html (default: runs/compare, then runs/compare-2, ...)",
)
def compare(run_dirs: tuple[Path, ...], out: Path | None) -> None:
    """Compare runs: config differences, best/final metrics, overlaid loss curves."""
    from trainlab.report.compare import compare_runs, default_compare_dir

    out = out or default_compare_dir()
    result = compare_runs(list(run_dirs), out)
    click.echo(result.get("text", ""))
    click.echo(f"wrote {out / 'compare.html'}")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--compare-shallow/--no-compare-shallow",
    default=None,
    help="train a shallower model to tell model bias from optimization (default: when the training loss "
    "is large and the run trained for at most a minute)",
)
@click.option("--batch-sizes", is_flag=True, help="also time updates for batch sizes 1, 2, 4, ...")
def doctor(run_dir: Path, compare_shallow: bool | None, batch_sizes: bool) -> None:
    """Why is training not good? Loss flowchart, critical point, gradient health."""
    from trainlab.diagnose.doctor import doctor as run_doctor
    from trainlab.diagnose.doctor import format_diagnosis

    click.echo(
        format_diagnosis(run_doctor(run_dir, compare_shallow=compare_shallow, batch_sizes=batch_sizes))
    )


@cli.command("lr-find")
@click.argument("args", nargs=-1)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="where to save lr_find.png")
def lr_find(args: tuple[str, ...], out: Path | None) -> None:
    """LR range test on CONFIG.yaml: prints the suggested learning rate and saves the plot."""
    from trainlab.diagnose.doctor import format_lr_find
    from trainlab.diagnose.doctor import lr_find as run_lr_find

    overrides = list(args)
    config = overrides.pop(0) if overrides and "=" not in overrides[0] else None
    click.echo(format_lr_find(run_lr_find(config, overrides, out=out)))


_ALSO = {
    "datasets": "any torchvision.datasets class by name (its arguments in data.options); "
    '"module:attr" for your own Dataset',
    "models": "sequential (model.layers: a list of torch.nn layers); "
    "torchvision:<name> (any torchvision.models "
    'builder); "module:attr" for your own nn.Module',
    "losses": 'any torch.nn loss class by name, with its keyword arguments; "module:attr"',
    "optimizers": 'any torch.optim class by name, with its keyword arguments; "module:attr"',
    "schedulers": "any torch.optim.lr_scheduler class by name; "
    "warmup_steps/warmup_epochs in front of any of them",
}


@cli.command("list")
@click.argument(
    "kind",
    required=False,
    type=click.Choice(["datasets", "models", "losses", "optimizers", "schedulers", "metrics"]),
)
def list_(kind: str | None) -> None:
    """List the names trainlab knows, with a one-line description each."""
    from trainlab.registry import KINDS, load_builtins

    load_builtins()
    for name in [kind] if kind else list(KINDS):
        click.echo(f"{name}:")
        for entry in KINDS[name].entries():
            click.echo(f"  {entry.name:<22} {entry.description}")
        if name in _ALSO:
            click.echo(f"  {'also:':<22} {_ALSO[name]}")
        if kind is None:
            click.echo("")


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="trainlab", standalone_mode=True)
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    return 0
