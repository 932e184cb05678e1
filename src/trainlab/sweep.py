"""`trainlab sweep`: a hyperparameter search over config keys with Optuna, on a real study database.

    result = trainlab.run_sweep("examples/sweep_digits.yaml", trials=8)   # or `trainlab sweep CONFIG`
    result.summary["best"]            # {"trial", "value", "params", "run_dir"}

The search space is the config's `sweep.params` (or `--grid KEY=[v1,...]`); each trial is a normal
training run (`run.train`) in DIR/trials/<number>/, with the config's seed. The study lives in an
Optuna RDB storage (DIR/study.db, SQLite, unless `storage` names another database), so that several
worker processes, or machines sharing a database, run trials of one study; a killed sweep continues
with `resume=True`. What each worker needs travels as a `SweepPlan` of plain types (DIR/sweep_plan.json).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainlab.config import Config, ParamSpec, SweepConfig, load_config, validate
from trainlab.engine.callbacks import Callback
from trainlab.engine.monitor import resolve_mode, resolve_name
from trainlab.errors import ConfigError, Interrupted, TrainingDiverged, TrainlabError
from trainlab.logging import RunDir, write_json_atomic
from trainlab.sweep_space import check_component_keys, describe, grid_params, grid_space, suggest

HEARTBEAT_SECONDS = 60  # a trial's process writes a heartbeat; a trial silent for GRACE_SECONDS is dead
GRACE_SECONDS = 300


@dataclass
class SweepPlan:
    """Everything a worker process needs, in plain types."""

    base: dict[str, Any]  # the config without its sweep section, overrides applied
    params: dict[str, dict[str, Any]]  # dotted key -> ParamSpec fields (by alias)
    metric: str
    direction: str  # maximize | minimize
    trials: int  # finished (complete + pruned) trials to reach
    sampler: dict[str, Any]  # {"name": ..., **kwargs}
    pruner: dict[str, Any]
    out: str
    storage: str
    study_name: str
    grid: bool = False

    @property
    def specs(self) -> dict[str, ParamSpec]:
        return {k: ParamSpec.model_validate(v) for k, v in self.params.items()}


@dataclass
class SweepResult:
    out: Path
    summary: dict[str, Any]
    report: Path | None
    study: Any = field(repr=False, default=None)


class WorkerFailed(TrainlabError):
    """A worker process ended with an error (its own message is printed above)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


# ----------------------------------------------------------------------------- the verb


def run_sweep(
    config: str | Path | dict[str, Any] | None,
    overrides: list[str] | dict[str, Any] | None = None,
    *,
    trials: int | None = None,
    out: str | Path | None = None,
    storage: str | None = None,
    workers: int = 1,
    resume: bool = False,
    grid: list[str] | None = None,
    quiet: bool = False,
) -> SweepResult:
    """Run (or with `resume`, continue) the sweep of a config;
    write sweep_summary.json and sweep_report.html."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, not {workers}")
    cfg = load_config(config, overrides)
    plan = make_plan(cfg, trials=trials, out=out, storage=storage, resume=resume, grid=grid or [])
    study = open_study(plan, create=True, resume=resume)
    if resume and trials is None and study.user_attrs.get("trials"):
        plan.trials = study.user_attrs["trials"]  # the number the sweep was started with (--trials N)
    study.set_user_attr("trials", plan.trials)
    out_dir = Path(plan.out)
    write_json_atomic(out_dir / "sweep_plan.json", asdict(plan))
    if not quiet:
        print(
            f"sweep: {plan.study_name}, {plan.trials} trials, {plan.direction} {plan.metric}, "
            f"sampler {plan.sampler['name']}, pruner {plan.pruner['name']}; study {plan.storage}"
        )
    try:
        _run_rounds(plan, study, workers, out_dir / "sweep_plan.json")
    finally:
        summary = write_summary(study, plan)
        report = _write_report(out_dir, study, plan, summary) if summary["trials"] else None
    if not quiet:
        best = summary["best"]
        if best:
            print(
                f"\nbest: trial {best['trial']} {plan.metric}={best['value']:.4g} {describe(best['params'])}"
                f"\n      {best['run_dir']}"
            )
        print(f"summary: {out_dir / 'sweep_summary.json'}\nreport: {report}")
    return SweepResult(out_dir, summary, report, study)


def make_plan(
    cfg: Config,
    *,
    trials: int | None,
    out: str | Path | None,
    storage: str | None,
    resume: bool,
    grid: list[str],
) -> SweepPlan:
    """Check the search space and resolve the metric, direction, folder and storage, before any trial runs."""
    sweep_cfg = cfg.sweep.model_copy(deep=True) if cfg.sweep is not None else SweepConfig()
    if grid:  # the notes' comparison: every combination, full curves (no pruning)
        sweep_cfg.params = grid_params(grid)
        sweep_cfg.sampler = sweep_cfg.sampler.model_validate("grid")
        sweep_cfg.pruner = sweep_cfg.pruner.model_validate("none")
        cfg = validate({**cfg.to_dict(), "sweep": sweep_cfg.model_dump(by_alias=True, exclude_none=True)})
    if not sweep_cfg.params:
        raise ConfigError(
            "sweep.params: nothing to search; give sweep.params (e.g. optimizer.lr: {loguniform: "
            "[1.0e-4, 0.1]}) in the config, or --grid KEY=[v1,v2,...]"
        )
    base = cfg.to_dict()
    base.pop("sweep", None)
    check_component_keys(base, sweep_cfg.params)
    if cfg.data.k_fold:
        raise ConfigError(
            "sweep: data.k_fold runs are not swept (a trial is one run); sweep without k_fold, "
            "then cross-validate the best trial's config"
        )
    metric = sweep_cfg.metric or resolve_monitor(cfg)
    if metric.partition("_")[0] not in ("train", "val") or not metric.partition("_")[2]:
        raise ConfigError(
            f"sweep.metric: {metric!r} is not a logged value; name one as val_<name> or train_<name> "
            f"(val_loss, val_accuracy, train_loss, ...)"
        )
    mode = cfg.train.mode if metric == cfg.train.monitor else "auto"
    direction = sweep_cfg.direction or ("minimize" if resolve_mode(metric, mode) == "min" else "maximize")
    is_grid = sweep_cfg.sampler.name == "grid"
    n_trials = trials or sweep_cfg.trials
    if is_grid:  # at most the grid's size; --grid: the whole grid unless --trials says fewer
        n_grid = math.prod(len(v) for v in grid_space(sweep_cfg.params).values())
        n_trials = min(trials or (n_grid if grid else sweep_cfg.trials), n_grid)
    out_dir = Path(out) if out is not None else default_sweep_dir(cfg, existing=resume)
    plan = SweepPlan(
        base=base,
        params={k: v.model_dump(by_alias=True, exclude_defaults=True) for k, v in sweep_cfg.params.items()},
        metric=metric,
        direction=direction,
        trials=n_trials,
        sampler={"name": sweep_cfg.sampler.name, **sweep_cfg.sampler.kwargs()},
        pruner={"name": sweep_cfg.pruner.name, **sweep_cfg.pruner.kwargs()},
        out=str(out_dir),
        storage=storage or f"sqlite:///{(out_dir / 'study.db').resolve()}",
        study_name=cfg.name,
        grid=is_grid,
    )
    make_sampler(plan)  # their arguments are checked before anything is written
    make_pruner(plan)
    out_dir.mkdir(parents=True, exist_ok=True)
    return plan


def default_sweep_dir(cfg: Config, existing: bool = False) -> Path:
    """runs/<name>-sweep; when that already holds a sweep,
    runs/<name>-sweep-2, -3, ... (`existing`: the latest)."""
    base = Path("runs") / f"{cfg.name}-sweep"
    latest = base
    for path in [base] + [base.with_name(f"{base.name}-{i}") for i in range(2, 10_000)]:
        if not (path / "study.db").exists() and not (path / "sweep_summary.json").exists():
            return latest if existing else path
        latest = path
    return latest


def resolve_monitor(cfg: Config) -> str:
    """train.monitor, with `auto` resolved as the run does: val_accuracy for classification/binary,
    val_loss for regression, train_<...> where there is no validation split."""
    if cfg.train.monitor != "auto":
        return cfg.train.monitor
    from trainlab.data import build_data
    from trainlab.registry import load_builtins

    load_builtins()
    bundle = build_data(cfg)  # the task and the splits (a sweep's trials build it again each)
    return resolve_name("auto", bundle.task, bundle.val is not None and len(bundle.val) > 0)


# ----------------------------------------------------------------------------- one trial


class PruningCallback(Callback):
    """Reports the sweep's metric to the trial at every epoch end; stops training when the pruner says so."""

    def __init__(self, trial: Any, metric: str):
        self.trial, self.metric = trial, metric
        self.pruned_at: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        split, _, name = self.metric.partition("_")
        value = (logs.get(split) or {}).get(name)
        if value is None or not math.isfinite(value):
            return
        self.trial.report(float(value), epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch
            self.stop_training = True


class Objective:
    """One trial: draw the values, train in DIR/trials/<number>, return the best value of the metric."""

    def __init__(self, plan: SweepPlan):
        self.plan = plan
        self.specs = plan.specs

    def __call__(self, trial: Any) -> float:
        import optuna

        from trainlab.run import train

        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        for attr in (
            "interrupted",
            "diverged",
        ):  # a queued retry inherits the attributes of the trial it repeats
            trial.set_user_attr(attr, None)
        values = suggest(trial, self.plan.base, self.specs)
        run_dir = Path(self.plan.out) / "trials" / str(trial.number)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("values", values)  # the config values (choices decoded)
        pruning = PruningCallback(trial, self.plan.metric)
        try:
            train(self.plan.base, values, out=run_dir, quiet=True, callbacks=[pruning])
        except TrainingDiverged as e:  # hopeless: pruned (the run itself says failed)
            trial.set_user_attr("diverged", str(e).split(".")[0])
            raise optuna.TrialPruned(f"diverged: {e}") from None
        except Interrupted:
            trial.set_user_attr("interrupted", True)  # --resume runs it again
            raise
        except TrainlabError as e:
            raise type(e)(f"trial {trial.number} ({describe(values)}): {e}") from None
        if pruning.pruned_at is not None:
            mark_pruned(run_dir, pruning.pruned_at)
            raise optuna.TrialPruned(f"pruned after epoch {pruning.pruned_at}")
        return trial_value(run_dir, self.plan.metric, self.plan.direction, self.plan.base["train"]["mode"])


def mark_pruned(run_dir: Path, epoch: int) -> None:
    """summary.json says `pruned`, and the report shows it."""
    RunDir.open(run_dir).update_summary(status="pruned", pruned_after_epoch=epoch)
    from trainlab.report import write_report

    write_report(run_dir)


def trial_value(run_dir: Path, metric: str, direction: str, mode: str = "auto") -> float:
    """The best value of `metric` over the run's epochs: summary.json's best when it is the monitored
    value, kept by the same rule (`mode`: train.mode), else from the epoch rows of metrics.jsonl."""
    run = RunDir.open(run_dir)
    best = run.read_summary().get("best") or {}
    if (
        best.get("metric") == metric
        and best.get("value") is not None
        and resolve_mode(metric, mode) == ("min" if direction == "minimize" else "max")
    ):
        return float(best["value"])
    split, _, name = metric.partition("_")
    rows = [r for r in run.read_metrics() if r.get("kind", "epoch") == "epoch" and r.get("split") == split]
    values = [
        float(r[name]) for r in rows if isinstance(r.get(name), (int, float)) and math.isfinite(r[name])
    ]
    if not values:
        logged = sorted(
            {
                f"{r.get('split')}_{k}"
                for r in run.read_metrics()
                if r.get("kind", "epoch") == "epoch"
                for k, v in r.items()
                if isinstance(v, (int, float)) and k not in ("epoch", "step")
            }
        )
        raise ConfigError(
            f"sweep.metric: {metric!r} is not a logged value of the trials; logged: {', '.join(logged)}"
        )
    return min(values) if direction == "minimize" else max(values)


# ----------------------------------------------------------------------------- the study


def make_storage(url: str) -> Any:
    """Optuna's RDB storage with a heartbeat: a trial whose process stopped beating for GRACE_SECONDS
    (another machine's dead worker) is failed and queued again by whichever worker notices."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=GRACE_SECONDS,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(),
        )


def make_sampler(plan: SweepPlan, offset: int = 0) -> Any:
    """The sampler, seeded with the config's seed + `offset` (the worker's index plus the trials already
    in the study, so that workers and resumed sweeps do not draw the same points again); the grid keeps
    the config's seed, so that every worker walks the same shuffled grid."""
    import optuna

    from trainlab.registry import check_kwargs

    name, kwargs = plan.sampler["name"], {k: v for k, v in plan.sampler.items() if k != "name"}
    classes = {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "grid": optuna.samplers.GridSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
    }
    check_kwargs(classes[name], kwargs, "sweep.sampler", skip=("search_space",))
    kwargs.setdefault("seed", plan.base.get("seed", 0) + (0 if plan.grid else offset))
    if name == "grid":
        return optuna.samplers.GridSampler(grid_space(plan.specs), **kwargs)
    if name == "cmaes":
        try:
            import cmaes  # noqa: F401 - Optuna's CmaEsSampler needs it
        except ImportError:
            raise ConfigError("sweep.sampler: cmaes needs the cmaes package (pip install cmaes)") from None
    return classes[name](**kwargs)


def make_pruner(plan: SweepPlan) -> Any:
    import optuna

    from trainlab.registry import check_kwargs

    name, kwargs = plan.pruner["name"], {k: v for k, v in plan.pruner.items() if k != "name"}
    classes = {
        "median": optuna.pruners.MedianPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "none": optuna.pruners.NopPruner,
    }
    check_kwargs(classes[name], kwargs, "sweep.pruner")
    if name == "hyperband":
        kwargs.setdefault("max_resource", plan.base["train"]["epochs"])  # resource = epochs
    return classes[name](**kwargs)


def open_study(plan: SweepPlan, *, create: bool = False, resume: bool = False, worker: int = 0) -> Any:
    """Create or load the study. A study already in DIR/study.db is continued only with `resume`; on a
    storage given by URL, the same command on several machines joins one study."""
    import optuna

    storage = make_storage(plan.storage)
    existing = plan.study_name in {s.study_name for s in storage.get_all_studies()}
    if create and existing and not resume and plan.storage.endswith(f"{Path(plan.out).resolve()}/study.db"):
        raise TrainlabError(
            f"{plan.out} already holds a sweep (study.db); --resume continues it, --out DIR starts another"
        )
    study = optuna.create_study(
        storage=storage,
        study_name=plan.study_name,
        direction=plan.direction,
        sampler=make_sampler(plan),
        pruner=make_pruner(plan),
        load_if_exists=True,
    )
    space = {"metric": plan.metric, "direction": plan.direction, "params": plan.params}
    saved = study.user_attrs.get("space")
    if saved is None:
        study.set_user_attr("space", space)
    elif saved != space:
        raise ConfigError(
            f"study {plan.study_name!r} in {plan.storage} holds another sweep ({_diff(saved, space)}); "
            f"change sweep.params back, or use --out / --storage for a new study"
        )
    study.sampler = make_sampler(plan, offset=worker + 1000 * len(study.get_trials(deepcopy=False)))
    return study


def _diff(saved: dict[str, Any], now: dict[str, Any]) -> str:
    return "; ".join(
        f"{k}: {saved.get(k)!r} in the study, {now.get(k)!r} now" for k in now if saved.get(k) != now.get(k)
    )


def recover_trials(study: Any) -> list[int]:
    """Trials a dead process left RUNNING on this machine, and trials stopped by Ctrl-C/SIGTERM: failed
    (the RUNNING ones) and queued again with the same values (RetryHeartbeatStaleTrialCallback, as the
    heartbeat does for other machines). Returns the numbers queued again."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    host = socket.gethostname()
    again = []
    for t in trials:
        dead = (
            t.state == TrialState.RUNNING
            and t.user_attrs.get("host") == host
            and not _alive(t.user_attrs.get("pid"))
        )
        stopped = t.state == TrialState.FAIL and t.user_attrs.get("interrupted") and t.number not in retried
        if dead:
            try:
                study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # it finished after all
            run = RunDir(t.user_attrs["run_dir"]) if t.user_attrs.get("run_dir") else None
            if run is not None and run.read_summary().get("status") in ("running", None):
                run.update_summary(status="failed", failure="its sweep process was killed")
        if dead or stopped:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                RetryHeartbeatStaleTrialCallback()(study, study._storage.get_trial(t._trial_id))
            again.append(t.number)
    return again


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _counts(study: Any) -> tuple[int, int]:
    """(finished = complete + pruned, running) trials."""
    from optuna.trial import TrialState

    states = [t.state for t in study.get_trials(deepcopy=False)]
    return (
        sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states),
        states.count(TrialState.RUNNING),
    )


# ----------------------------------------------------------------------------- workers


def _run_rounds(plan: SweepPlan, study: Any, workers: int, plan_path: Path) -> None:
    """Run trials until `plan.trials` are finished: the missing number is split among the workers (each
    runs exactly its share, so none is lost or run twice); another round replaces the trials a dead
    worker left, and stops when a round finishes nothing."""
    before = -1
    while True:
        recover_trials(study)
        finished, running = _counts(study)
        remaining = plan.trials - finished - running
        if remaining <= 0 or finished == before:
            return
        before = finished
        shares = [remaining // workers + (i < remaining % workers) for i in range(workers)]
        shares = [s for s in shares if s > 0]
        if len(shares) == 1:
            optimize(plan, study, shares[0])
        else:
            _spawn(plan_path, shares)


def optimize(plan: SweepPlan, study: Any, n_trials: int) -> None:
    study.optimize(Objective(plan), n_trials=n_trials, callbacks=[_print_trial], gc_after_trial=False)


def _spawn(plan_path: Path, shares: list[int]) -> None:
    """One process per share (`python -c ... worker_main`), OpenMP threads split among them."""
    threads = str(max(1, (os.cpu_count() or 1) // len(shares)))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads)}
    code = "import sys; from trainlab.sweep import worker_main; sys.exit(worker_main(*sys.argv[1:]))"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(plan_path), str(n), str(i), str(os.getpid())], env=env
        )
        for i, n in enumerate(shares)
    ]
    codes = [p.wait() for p in procs]
    failed = [(i, c) for i, c in enumerate(codes) if c != 0]
    if failed:
        i, c = failed[0]
        raise WorkerFailed(
            f"sweep worker {i} exited with code {c} (its message is above); finished trials are "
            f"kept, --resume continues",
            exit_code=2 if c == 2 else 1,
        )


def worker_main(plan_path: str, n_trials: str, index: str, parent: str) -> int:
    """A worker process: `n_trials` trials of the study in the plan. It gets SIGTERM when the sweep
    command dies (a killed command leaves no worker drawing trials that --resume does not count)."""
    import optuna

    _term_with_parent(int(parent))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    plan = SweepPlan(**json.loads(Path(plan_path).read_text()))
    try:
        optimize(plan, open_study(plan, worker=int(index)), int(n_trials))
    except TrainlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        return e.exit_code
    return 0


def _term_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1  # the name in <sys/prctl.h>
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl
        raise SystemExit(143)


def _print_trial(study: Any, trial: Any) -> None:
    value = (
        f"{study.user_attrs['space']['metric']}={trial.value:.4g}" if trial.value is not None else "no value"
    )
    state = trial.state.name.lower() + (" (diverged)" if trial.user_attrs.get("diverged") else "")
    print(
        f"trial {trial.number} {state}: {value} | {describe(trial.user_attrs.get('values', trial.params))}",
        flush=True,
    )


# ----------------------------------------------------------------------------- results


def write_summary(study: Any, plan: SweepPlan) -> dict[str, Any]:
    """DIR/sweep_summary.json: the metric, direction, best trial and every trial."""
    from optuna.trial import TrialState

    trials = [
        {
            "number": t.number,
            "state": t.state.name.lower(),
            "value": t.value,
            "params": t.user_attrs.get("values", t.params),
            "run_dir": t.user_attrs.get("run_dir"),
        }
        for t in study.get_trials(deepcopy=False)
        if t.state != TrialState.WAITING
    ]
    complete = [t for t in trials if t["state"] == "complete" and t["value"] is not None]
    best = None
    if complete:
        b = (min if plan.direction == "minimize" else max)(complete, key=lambda t: t["value"])
        best = {"trial": b["number"], "value": b["value"], "params": b["params"], "run_dir": b["run_dir"]}
    summary = {"metric": plan.metric, "direction": plan.direction, "best": best, "trials": trials}
    write_json_atomic(Path(plan.out) / "sweep_summary.json", summary)
    return summary


def _write_report(out_dir: Path, study: Any, plan: SweepPlan, summary: dict[str, Any]) -> Path:
    from trainlab.report.sweep import write_sweep_report

    return write_sweep_report(out_dir, study, summary, grid=plan.grid)
