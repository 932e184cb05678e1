"""`trainlab sweep`: a TPE sweep in two worker processes through the CLI, read back with Optuna; a
SIGKILLed sweep resumed; pruning of a hopeless trial; bad search spaces; the grid; the report.

Trials are tiny (digits, an MLP with 16 hidden units, one or two epochs); most of their time is the
per-trial report, which a sweep keeps (every trial is a normal run directory), so the tests run as
few trials as their point needs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from conftest import CHROMIUM, chromium_screenshot, cli_in_process, run_cli, tiny_config
from trainlab.config import load_config
from trainlab.sweep import Objective, make_plan


def sweep_config(epochs: int = 1, **sweep: Any) -> dict[str, Any]:
    """digits, mlp [16], val_accuracy monitored; `sweep` keys replace the defaults (4
    TPE trials, no pruning)."""
    config = tiny_config(model={"hidden": [16]}, train={"epochs": epochs, "monitor": "val_accuracy"})
    config["sweep"] = {
        "trials": 4,
        "sampler": {"name": "tpe", "n_startup_trials": 2},
        "pruner": "none",
        "params": {
            "optimizer.lr": {"loguniform": [1.0e-3, 0.1]},
            "optimizer.name": {"choice": ["SGD", "Adam"]},
            "optimizer.momentum": {"uniform": [0.0, 0.9]},
        },
        **sweep,
    }
    return config


def write(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def load_study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}")


def best_over_epochs(run_dir: Path, split: str = "val", name: str = "accuracy") -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return max(r[name] for r in rows if r.get("kind") == "epoch" and r.get("split") == split)


# ----------------------------------------------------------------------------- a TPE sweep through the CLI


@pytest.fixture(scope="module")
def tpe_sweep(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """4 TPE trials drawn by 2 worker processes on one study.db."""
    tmp = tmp_path_factory.mktemp("tpe")
    proc = run_cli(
        "sweep", str(write(tmp / "tiny.yaml", sweep_config())), "--out", str(tmp / "sweep"), "--workers", "2"
    )
    return tmp / "sweep", proc


def test_tpe_sweep_writes_a_study_with_a_run_per_trial(tpe_sweep):
    out, proc = tpe_sweep
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load_study(out)
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]  # exactly the 4 asked for: none lost, none twice
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["pid"] for t in trials}) == 2  # two worker processes drew them
    values = {}
    for t in trials:
        run = Path(t.user_attrs["run_dir"])
        assert run == out / "trials" / str(t.number)
        assert json.loads((run / "summary.json").read_text())["status"] == "completed"
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert "sweep" not in config and config["seed"] == 0  # the trial's own config, the config's seed
        assert config["optimizer"]["lr"] == pytest.approx(t.params["optimizer.lr"])
        assert config["optimizer"]["name"] == t.params["optimizer.name"]
        # define-by-run: momentum is drawn for SGD only (Adam takes no momentum)
        assert ("optimizer.momentum" in t.params) == (t.params["optimizer.name"] == "SGD")
        values[t.number] = best_over_epochs(run)
        assert t.value == pytest.approx(values[t.number])
    assert study.best_value == pytest.approx(max(values.values()))

    summary = json.loads((out / "sweep_summary.json").read_text())
    assert summary["metric"] == "val_accuracy" and summary["direction"] == "maximize"
    assert summary["best"]["trial"] == study.best_trial.number
    assert summary["best"]["value"] == pytest.approx(study.best_value)
    assert sorted(t["number"] for t in summary["trials"]) == [0, 1, 2, 3]
    assert all(Path(t["run_dir"]).is_dir() and t["state"] == "complete" for t in summary["trials"])
    assert f"best: trial {study.best_trial.number} val_accuracy=" in proc.stdout


def test_sweep_report_is_self_contained(tpe_sweep):
    out, _ = tpe_sweep
    page = (out / "sweep_report.html").read_text()
    for figure in ("history", "parallel", "importances", "best"):
        assert f'id="plot-{figure}"><img alt="{figure}" src="data:image/png;base64,' in page
    assert page.count("<tr>") == 1 + 4  # header + one row per trial
    assert 'href="trials/0/report.html"' in page
    assert "http://" not in page and "https://" not in page


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (apt-get install -y chromium); "
    "the HTML structure test above still runs",
)
def test_sweep_report_renders_in_headless_chromium(tpe_sweep, tmp_path):

    out, _ = tpe_sweep
    pixels = chromium_screenshot((out / "sweep_report.html"), tmp_path)  # (H, W, 3) floats in [0, 1]
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels.std() > 0.05, "the rendered report is blank"
    assert (pixels.max(axis=2) - pixels.min(axis=2)).max() > 0.3, "no coloured pixels: plots did not render"


# ----------------------------------------------------------------------------- workers, kill and resume


def test_a_sigkilled_sweep_resumes_and_reruns_the_killed_trial(tmp_path, capsys, no_report, one_thread):
    config = write(tmp_path / "tiny.yaml", sweep_config(trials=2, sampler="random"))
    out = tmp_path / "sw"
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainlab", "sweep", str(config), "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while not (out / "trials" / "1" / "metrics.jsonl").exists():  # trial 1 has begun training
        assert proc.poll() is None and time.monotonic() < deadline, "the sweep ended before trial 1 ran"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = load_study(out).get_trials()
    assert [t.state.name for t in killed] == ["COMPLETE", "RUNNING"]

    code, _, err = cli_in_process(capsys, "sweep", str(config), "--out", str(out))
    assert code == 2 and "--resume" in err  # a second sweep into the folder is refused
    code, _, err = cli_in_process(capsys, "sweep", str(config), "--out", str(out), "--resume")
    assert code == 0, err[-3000:]
    trials = load_study(out).get_trials()
    states = {t.number: t.state.name for t in trials}
    assert states == {0: "COMPLETE", 1: "FAIL", 2: "COMPLETE"}
    retry = next(t for t in trials if t.system_attrs.get("retry_history") == [1])
    assert retry.params == trials[1].params  # the killed trial ran again, in its own folder
    assert retry.user_attrs["run_dir"] == str(out / "trials" / str(retry.number))
    assert json.loads((out / "trials" / "1" / "summary.json").read_text())["status"] == "failed"
    assert json.loads((out / "trials" / "0" / "summary.json").read_text())["status"] == "completed"  # kept
    summary = json.loads((out / "sweep_summary.json").read_text())
    assert sum(t["state"] == "complete" for t in summary["trials"]) == 2


# ----------------------------------------------------------------------------- pruning


def test_pruning_ends_a_hopeless_trial_after_its_first_epoch(tmp_path, no_report, one_thread):
    config = sweep_config(
        epochs=3,
        pruner={"name": "median", "n_startup_trials": 1},
        params={"optimizer.lr": {"loguniform": [1.0e-4, 100.0]}},
    )
    plan = make_plan(
        load_config(config), trials=None, out=tmp_path / "sw", storage=None, resume=False, grid=[]
    )
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    # a finished trial that reached 0.8 validation accuracy after one epoch
    study.add_trial(
        optuna.trial.create_trial(
            value=0.95,
            params={"optimizer.lr": 0.01},
            intermediate_values={1: 0.8, 2: 0.9, 3: 0.95},
            distributions={"optimizer.lr": optuna.distributions.FloatDistribution(1e-4, 100.0, log=True)},
        )
    )
    study.enqueue_trial({"optimizer.lr": 10.0})  # Adam at lr 10: chance accuracy, finite losses
    study.optimize(Objective(plan), n_trials=1)
    trial = study.get_trials()[-1]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.intermediate_values[1] < 0.5
    summary = json.loads((tmp_path / "sw" / "trials" / "1" / "summary.json").read_text())
    assert summary["status"] == "pruned" and summary["pruned_after_epoch"] == 1
    assert summary["epochs_completed"] == 1  # of 3


def test_a_diverged_trial_is_pruned_and_its_run_says_failed(tmp_path, no_report, one_thread):
    config = sweep_config(params={"optimizer.lr": {"loguniform": [1.0e-4, 1.0e31]}})
    config["optimizer"]["name"] = "SGD"
    plan = make_plan(
        load_config(config), trials=None, out=tmp_path / "sw", storage=None, resume=False, grid=[]
    )
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"optimizer.lr": 1.0e30})  # NaN/Inf within the first steps
    study.optimize(Objective(plan), n_trials=1)  # the sweep goes on: no exception
    trial = study.get_trials()[0]
    assert trial.state == optuna.trial.TrialState.PRUNED and "NaN/Inf" in trial.user_attrs["diverged"]
    assert json.loads((tmp_path / "sw" / "trials" / "0" / "summary.json").read_text())["status"] == "failed"


# ----------------------------------------------------------------------------- bad search spaces


@pytest.mark.parametrize(
    "key, spec, words",
    [
        ("optimizer.lr", {"loguniform": [0.1]}, ["give [low, high]"]),
        ("optimizer.lr", {"logunifrom": [0.1, 1.0]}, ["did you mean 'loguniform'"]),
        ("train.epochz", {"int": [1, 3]}, ["unknown key 'train.epochz'", "did you mean 'epochs'"]),
        ("optimizer.betaz", {"uniform": [0.8, 0.9]}, ["takes no argument 'betaz'"]),
        ("data.batch_size", {"uniform": [16, 64]}, ["use int: [low, high]"]),
        ("optimizer.lr", {"uniform": [-1.0, 1.0]}, ["greater than 0"]),
    ],
)
def test_a_bad_search_space_exits_2_naming_the_key(key, spec, words, tmp_path, capsys):
    config = write(tmp_path / "tiny.yaml", sweep_config(params={key: spec}))
    code, _, err = cli_in_process(capsys, "sweep", str(config), "--out", str(tmp_path / "sw"))
    assert code == 2
    assert f"sweep.params.{key}" in err.replace("\n", " ")
    for w in words:
        assert w in err.replace("\n", " ")
    assert "Traceback" not in err and not (tmp_path / "sw" / "study.db").exists()


def test_a_grid_that_is_not_a_list_exits_2(tmp_path, capsys):
    config = write(tmp_path / "tiny.yaml", sweep_config())
    code, _, err = cli_in_process(capsys, "sweep", str(config), "--grid", "optimizer.lr=0.1")
    assert code == 2 and "--grid" in err and "list of values" in err


def test_train_on_a_config_with_a_sweep_trains_the_base_config(tmp_path, no_report, one_thread):
    import trainlab

    run = trainlab.train(sweep_config(), {"train.max_steps": 2}, out=tmp_path / "run", quiet=True)
    assert (
        run.status == "completed" and run.config.optimizer.lr == 0.01 and run.config.optimizer.name == "Adam"
    )


# ----------------------------------------------------------------------------- the grid


def test_grid_runs_every_value_with_the_same_seed_and_overlays_all_losses(
    tmp_path, capsys, no_report, one_thread
):
    config = write(tmp_path / "tiny.yaml", sweep_config(epochs=2))
    code, _, err = cli_in_process(
        capsys,
        "sweep",
        str(config),
        "--out",
        str(tmp_path / "sw"),
        "--grid",
        "optimizer.lr=[0.001,0.03]",
        "--grid",
        "model.hidden=[[8, 8]]",
    )
    assert code == 0, err[-3000:]
    trials = load_study(tmp_path / "sw").get_trials()
    assert len(trials) == 2 and all(t.state.name == "COMPLETE" for t in trials)
    drawn = {(t.params["optimizer.lr"], t.params["model.hidden"]) for t in trials}
    assert drawn == {(0.001, "[8, 8]"), (0.03, "[8, 8]")}  # the full grid, once each
    for t in trials:
        config = yaml.safe_load((Path(t.user_attrs["run_dir"]) / "config.yaml").read_text())
        assert config["seed"] == 0 and config["model"]["hidden"] == yaml.safe_load(t.params["model.hidden"])
    page = (tmp_path / "sw" / "sweep_report.html").read_text()
    assert page.index('id="plot-all-trials"') < page.index('id="plot-history"')  # the first figure


def test_optimizers_grid_example_is_the_notes_five_optimizers(tmp_path):
    example = Path(__file__).resolve().parents[1] / "examples" / "optimizers_grid.yaml"
    plan = make_plan(
        load_config(example), trials=None, out=tmp_path / "sw", storage=None, resume=False, grid=[]
    )
    assert plan.grid and plan.trials == 5 and plan.pruner["name"] == "none"
    choices = plan.params["optimizer"]["choice"]
    assert [(c["name"], c.get("momentum")) for c in choices] == [
        ("SGD", None),
        ("SGD", 0.9),
        ("Adagrad", None),
        ("RMSprop", None),
        ("Adam", None),
    ]


# ----------------------------------------------------------------------------- recovery and folders


def test_recover_requeues_dead_and_interrupted_trials_once(tmp_path):
    import socket

    from trainlab.sweep import recover_trials

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    study = optuna.create_study()
    space = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}

    def running(pid: int) -> optuna.Trial:
        trial = study.ask(space)
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", pid)
        return trial

    killed, alive, stopped = running(dead.pid), running(os.getpid()), running(os.getpid())
    stopped.set_user_attr("interrupted", True)
    study.tell(stopped, state=optuna.trial.TrialState.FAIL)
    assert sorted(recover_trials(study)) == [killed.number, stopped.number]
    states = {t.number: t.state.name for t in study.get_trials()}
    assert (
        states[killed.number] == "FAIL" and states[alive.number] == "RUNNING"
    )  # a live process keeps its trial
    queued = [t for t in study.get_trials() if t.state.name == "WAITING"]
    assert sorted(t.params["x"] for t in queued) == sorted([killed.params["x"], stopped.params["x"]])
    assert recover_trials(study) == []  # queued once only


def test_default_sweep_folders_are_numbered_like_runs(tmp_path, monkeypatch):
    from trainlab.sweep import default_sweep_dir

    monkeypatch.chdir(tmp_path)
    cfg = load_config(sweep_config())
    assert default_sweep_dir(cfg) == Path("runs/tiny-sweep")
    Path("runs/tiny-sweep").mkdir(parents=True)
    (Path("runs/tiny-sweep") / "study.db").write_bytes(b"")
    assert default_sweep_dir(cfg) == Path("runs/tiny-sweep-2")
    assert default_sweep_dir(cfg, existing=True) == Path("runs/tiny-sweep")  # what --resume continues
