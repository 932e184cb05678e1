"""End to end through the command line: `trainlab train` with no config trains the built-in digits CNN
to at least 0.97 test accuracy and leaves every file of the run-directory contract; `trainlab eval`
re-computes the test metrics of the best checkpoint; precision settings behave on a CPU.

The digits run is trained once per session (the `digits_run` fixture in conftest.py)."""

from __future__ import annotations

import base64
import json
import math
import re

import pytest
import torch
import yaml

import trainlab
from conftest import cli_in_process, load_run_dir_checker, run_cli
from trainlab.config import validate

CONTRACT_FILES = (
    "config.yaml",
    "metrics.jsonl",
    "summary.json",
    "checkpoints/last.pt",
    "checkpoints/best.pt",
    "model.safetensors",
    "report.html",
)


def summary_of(run) -> dict:
    return json.loads((run.path / "summary.json").read_text())


def test_default_example_exits_0_and_reaches_97_percent_test_accuracy(digits_run):
    assert digits_run.proc.returncode == 0, digits_run.proc.stderr[-3000:]
    summary = summary_of(digits_run)
    assert summary["status"] == "completed"
    assert summary["final"]["test"]["accuracy"] >= 0.97


def test_run_directory_holds_every_file_of_the_contract(digits_run):
    run = digits_run.path
    for name in CONTRACT_FILES:
        assert (run / name).is_file(), f"missing {name}"
        assert (run / name).stat().st_size > 0, f"{name} is empty"
    assert list((run / "tensorboard").rglob("events.out.tfevents*")), "no TensorBoard event file"
    assert list((run / "plots").glob("*.png")), "no plots/*.png"

    # config.yaml is the resolved config: it validates again and names the default example.
    config = validate(yaml.safe_load((run / "config.yaml").read_text()))
    assert (config.data.source, config.model.name, config.train.epochs) == ("digits", "small_cnn", 12)

    # report.html embeds its curves as images (self-contained) and shows the final test accuracy.
    report = (run / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', report)
    assert images, "report.html has no embedded PNG"
    assert base64.b64decode(images[0])[:8] == b"\x89PNG\r\n\x1a\n"
    accuracy = summary_of(digits_run)["final"]["test"]["accuracy"]
    assert f"{accuracy:.3f}" in report

    checker = load_run_dir_checker()
    if checker is not None:
        assert checker.check(run, "completed") == []


def test_stdout_names_the_run_directory_the_report_and_the_test_metrics(digits_run):
    out = digits_run.proc.stdout
    run = digits_run.path
    assert f"run directory: {run}" in out
    assert f"report: {run / 'report.html'}" in out
    test_line = next(line for line in out.splitlines() if line.startswith("test: "))
    printed = dict(re.findall(r"(\w+)=([0-9.]+)", test_line))
    test = summary_of(digits_run)["final"]["test"]
    assert set(printed) >= {"loss", "accuracy"}
    for name, value in printed.items():
        assert float(value) == pytest.approx(test[name], abs=5e-5), name


def test_eval_prints_the_test_metrics_of_the_best_checkpoint(digits_run):
    proc = run_cli("eval", str(digits_run.path), "--split", "test")
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("test: ")
    printed = dict(re.findall(r"(\w+)=([0-9.]+)", line))
    test = summary_of(digits_run)["final"]["test"]
    # The command prints 4 decimals; the library call gives the exact values.
    assert float(printed["accuracy"]) == pytest.approx(test["accuracy"], abs=5e-5)
    logs = trainlab.evaluate_run(digits_run.path, "test")
    assert logs["accuracy"] == pytest.approx(test["accuracy"], abs=1e-6)
    assert logs["loss"] == pytest.approx(test["loss"], rel=1e-5)


def test_eval_val_split_gives_the_best_epochs_validation_metrics(digits_run, capsys):
    code, out, err = cli_in_process(capsys, "eval", str(digits_run.path), "--split", "val")
    assert code == 0, err
    printed = dict(re.findall(r"(\w+)=([0-9.]+)", out.strip().splitlines()[-1]))
    assert out.strip().splitlines()[-1].startswith("val: ")
    best = summary_of(digits_run)["best"]  # the values of the epoch whose weights best.pt holds
    assert float(printed["accuracy"]) == pytest.approx(best["val_accuracy"], abs=5e-5)
    assert float(printed["loss"]) == pytest.approx(best["val_loss"], abs=5e-5)


def test_eval_of_a_folder_that_is_no_run_exits_2(tmp_path, capsys):
    code, _, err = cli_in_process(capsys, "eval", str(tmp_path / "nowhere"))
    assert code == 2
    assert "nowhere" in err and "Traceback" not in err


def test_fp16_on_cpu_exits_2_naming_train_precision(tmp_path, capsys):
    code, _, err = cli_in_process(
        capsys,
        "train",
        "model.name=mlp",
        "train.epochs=1",
        "train.device=cpu",
        "train.precision=fp16",
        "--out",
        str(tmp_path / "run"),
        "--quiet",
    )
    assert code == 2
    assert "train.precision" in err and "Traceback" not in err


def test_a_precision_error_leaves_no_run_claiming_to_be_running(tmp_path, capsys):
    code, _, _ = cli_in_process(
        capsys,
        "train",
        "model.name=mlp",
        "train.epochs=1",
        "train.device=cpu",
        "train.precision=fp16",
        "--out",
        str(tmp_path / "run"),
        "--quiet",
    )
    assert code == 2
    summary = tmp_path / "run" / "summary.json"
    assert not summary.exists() or json.loads(summary.read_text())["status"] in (
        "completed",
        "interrupted",
        "failed",
    )


def test_bf16_on_cpu_trains_under_autocast(tmp_path, capsys, no_report, monkeypatch):
    # A model that records the dtype its Linear layer computes in: bfloat16 only under autocast.
    seen: list[torch.dtype] = []
    original = torch.nn.Linear.forward

    def recording_forward(self, x):
        out = original(self, x)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Linear, "forward", recording_forward)
    code, _, err = cli_in_process(
        capsys,
        "train",
        "model.name=mlp",
        "train.epochs=1",
        "train.max_steps=3",
        "train.device=cpu",
        "train.precision=bf16",
        "--out",
        str(tmp_path / "run"),
        "--quiet",
    )
    assert code == 0, err
    assert torch.bfloat16 in seen
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == 3
    assert math.isfinite(summary["final"]["train"]["loss"])
