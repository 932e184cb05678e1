"""What a run writes while it trains (trainlab/logging.py): the metrics.jsonl and summary.json schema,
TensorBoard scalars read back with tensorboard's own EventAccumulator, the checkpoints and
model.safetensors, and the console (progress bars off with --quiet / TQDM_DISABLE=1, one summary line
per epoch otherwise). Most tests read the session's digits run (conftest.py)."""

from __future__ import annotations

import io
import json
import math
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import cli_in_process

EPOCHS = 12  # the default example's train.epochs
SPLITS = {"train", "val", "test"}


def metrics_rows(run) -> list[dict]:
    return [
        json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines() if line.strip()
    ]


def summary_of(run) -> dict:
    return json.loads((run.path / "summary.json").read_text())


def test_metrics_jsonl_schema(digits_run):
    rows = metrics_rows(digits_run)
    for i, row in enumerate(rows, 1):
        assert {"epoch", "step", "split"} <= row.keys(), f"line {i}: {row}"
        assert row["split"] in SPLITS, f"line {i}"
        assert isinstance(row["epoch"], int) and 1 <= row["epoch"] <= EPOCHS, f"line {i}"
        assert isinstance(row["step"], int) and row["step"] >= 0, f"line {i}"
        assert math.isfinite(row["loss"]), f"line {i}"

    epoch_rows = [r for r in rows if r.get("kind") == "epoch"]
    for split in ("train", "val"):
        epochs = [r["epoch"] for r in epoch_rows if r["split"] == split]
        assert epochs == list(range(1, EPOCHS + 1)), split
        assert all("accuracy" in r for r in epoch_rows if r["split"] == split)
    # One test row, after training, with the metrics of the summary.
    test_rows = [r for r in rows if r["split"] == "test"]
    assert len(test_rows) == 1 and rows[-1] is test_rows[0]
    assert test_rows[0]["accuracy"] == pytest.approx(
        summary_of(digits_run)["final"]["test"]["accuracy"], abs=1e-9
    )

    # Step rows: strictly increasing steps, each within its epoch's steps.
    step_rows = [r for r in rows if r.get("kind") == "step"]
    assert step_rows, "no per-step rows"
    steps = [r["step"] for r in step_rows]
    assert steps == sorted(set(steps))
    end_step = {r["epoch"]: r["step"] for r in epoch_rows if r["split"] == "train"}
    for r in step_rows:
        assert end_step.get(r["epoch"] - 1, 0) < r["step"] <= end_step[r["epoch"]]
    assert all(r["split"] == "train" and r["lr"] > 0 for r in step_rows)


def test_summary_json_schema(digits_run):
    summary = summary_of(digits_run)
    rows = metrics_rows(digits_run)
    assert summary["status"] == "completed"
    assert summary["epochs_completed"] == EPOCHS
    last_train = [r for r in rows if r.get("kind") == "epoch" and r["split"] == "train"][-1]
    assert isinstance(summary["global_step"], int) and summary["global_step"] == last_train["step"] > 0
    assert isinstance(summary["samples_per_second"], float) and summary["samples_per_second"] > 0
    # speed accounting: evaluation samples/s, the share of time waiting for data, MFU from counted FLOPs
    assert summary["eval_samples_per_second"] > 0
    assert 0 <= summary["data_wait_fraction"] < 1
    assert summary["flops_per_sample"] > 0 and summary["peak_flops"] > 0
    assert summary["mfu"] == pytest.approx(
        summary["samples_per_second"] * summary["flops_per_sample"] / summary["peak_flops"], rel=1e-9
    )
    assert summary["channels_last"] is True  # the default example is a conv net on the CPU

    # best: the monitored value (train.monitor: auto -> val_accuracy for a classifier) is the highest
    # validation accuracy of the run, kept from the first epoch that reached it.
    val = {r["epoch"]: r for r in rows if r.get("kind") == "epoch" and r["split"] == "val"}
    best = summary["best"]
    assert best["metric"] == "val_accuracy" and summary["monitor"] == {
        "metric": "val_accuracy",
        "mode": "max",
    }
    assert best["value"] == pytest.approx(max(r["accuracy"] for r in val.values()))
    assert best["epoch"] == min(e for e, r in val.items() if r["accuracy"] == pytest.approx(best["value"]))

    final = summary["final"]
    assert set(final) == SPLITS | {"test_last"}  # the test split with the best and with the last weights
    for split in SPLITS:
        assert {"loss", "accuracy"} <= final[split].keys(), split
        assert 0 <= final[split]["accuracy"] <= 1
    assert {"f1"} <= final["val"].keys() and {"f1"} <= final["test"].keys()  # the classification defaults
    assert final["val"]["loss"] == pytest.approx(val[EPOCHS]["loss"])  # the last epoch's values


def test_tensorboard_scalars_read_back_one_value_per_epoch(digits_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(digits_run.path / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "val/loss", "val/accuracy", "train/lr"} <= tags
    assert "lr" not in tags  # one LR curve (train/lr, per step), not a per-epoch duplicate on another axis
    val = {
        r["epoch"]: r for r in metrics_rows(digits_run) if r.get("kind") == "epoch" and r["split"] == "val"
    }
    for tag in ("train/loss", "val/loss", "val/accuracy"):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == list(range(1, EPOCHS + 1)), tag
    for s in events.Scalars("val/loss"):
        assert s.value == pytest.approx(val[s.step]["loss"], rel=1e-6)  # stored as float32
    lrs = [s.value for s in events.Scalars("train/lr")]
    assert lrs[-1] < lrs[0]  # the default cosine schedule decays


def test_tensorboard_has_the_config_as_hyperparameters_in_the_same_run(digits_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    tb = digits_run.path / "tensorboard"
    assert not [p for p in tb.iterdir() if p.is_dir()]  # no sub-run (SummaryWriter.add_hparams makes one)
    events = EventAccumulator(str(tb))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    assert start.hparams["optimizer.name"].string_value == "Adam"
    assert start.hparams["optimizer.lr"].number_value == pytest.approx(0.003)
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metrics = {m.name.tag for m in experiment.metric_infos}
    assert {"val/loss", "val/accuracy", "test/accuracy"} <= metrics


def test_checkpoints_load_safely_and_safetensors_holds_the_best_weights(digits_run):
    checkpoints = digits_run.path / "checkpoints"
    best = torch.load(checkpoints / "best.pt", weights_only=True, map_location="cpu")
    last = torch.load(checkpoints / "last.pt", weights_only=True, map_location="cpu")
    summary = summary_of(digits_run)
    assert last["epoch"] == EPOCHS and last["global_step"] == summary["global_step"]
    assert best["epoch"] == summary["best"]["epoch"]
    tensors = load_file(str(digits_run.path / "model.safetensors"))
    model_tensors = {k: v for k, v in best["model"].items() if isinstance(v, torch.Tensor)}
    assert tensors.keys() == model_tensors.keys()
    for k in tensors:
        assert torch.equal(tensors[k], model_tensors[k]), k


def test_tqdm_disable_silences_the_bars_but_keeps_one_line_per_epoch(digits_run):
    # The session's run had TQDM_DISABLE=1 and no --quiet.
    err, out = digits_run.proc.stderr, digits_run.proc.stdout
    assert "\r" not in err and "%|" not in err
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == [f"{e}/{EPOCHS}" for e in range(1, EPOCHS + 1)]
    assert all("train" in line and "val" in line and "loss" in line for line in lines)


def short_run(capsys, tmp_path, *extra: str) -> tuple[int, str, str]:
    return cli_in_process(
        capsys,
        "train",
        "model.name=mlp",
        "model.hidden=[16]",
        "train.epochs=2",
        "train.max_steps=25",
        "data.batch_size=64",
        "train.device=cpu",
        "--out",
        str(tmp_path / "run"),
        *extra,
    )


def test_progress_bars_and_epoch_lines_without_quiet(tmp_path, capsys, monkeypatch, no_report):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # stderr is a terminal: bars
    code, out, err = short_run(capsys, tmp_path)
    assert code == 0, err
    assert "%|" in err and "epoch 1/2" in err  # a tqdm bar per epoch, on stderr
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epoch_lines] == ["1/2", "2/2"]
    assert all(" samples/s (eval " in line for line in epoch_lines)  # training and evaluation speed
    assert "%|" not in out


def test_progress_bar_shows_loss_speed_data_wait_and_mfu(monkeypatch):
    import io

    from trainlab.logging import ConsoleProgress

    monkeypatch.delenv("TQDM_DISABLE", raising=False)

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    progress = ConsoleProgress(steps_per_epoch=4, epochs=1, stream=Terminal())
    progress.on_epoch_begin(1, {})
    progress.on_batch_end(
        1,
        {
            "epoch": 1,
            "steps_since": 1,
            "loss": 0.5,
            "samples_per_second": 12345.0,
            "data_wait_fraction": 0.25,
            "mfu": 0.123,
        },
    )
    assert progress.bar.postfix == "loss=0.5000, samples/s=12,345, data wait=25%, mfu=12.3%"
    assert progress.bar.n == 1


def test_redirected_stderr_gets_one_line_per_epoch_and_no_bar_frames(
    tmp_path, capsys, monkeypatch, no_report
):
    """`trainlab train 2> log`: tqdm wrote a frame per refresh (58 for two short epochs) into the file."""
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert not sys.stderr.isatty()  # pytest's capture, like a file
    code, out, err = short_run(capsys, tmp_path)
    assert code == 0, err
    assert "\r" not in err and "%|" not in err and "it/s" not in err
    assert [line.split()[1] for line in out.splitlines() if line.startswith("epoch ")] == ["1/2", "2/2"]


def test_epoch_lines_have_fixed_width_numbers_that_align(capsys, monkeypatch):
    from trainlab.logging import ConsoleProgress

    progress = ConsoleProgress(steps_per_epoch=4, epochs=12, stream=io.StringIO())
    rows = [
        (
            1,
            {"loss": 0.8448, "accuracy": 0.9, "samples_per_second": 8090.0},
            {"loss": 0.3573, "accuracy": 0.8778},
        ),
        (
            12,
            {"loss": 0.001159, "accuracy": 1.0, "samples_per_second": 12627.0},
            {"loss": 1653.0, "accuracy": 1.0},
        ),
    ]
    capsys.readouterr()
    for epoch, train, val in rows:
        progress.on_epoch_end(epoch, {"train": train, "val": val, "lr": 0.003, "step": 40 * epoch})
    lines = capsys.readouterr().out.splitlines()
    assert "acc 1.0000" in lines[1] and "acc 0.9000" in lines[0] and "acc 1 " not in lines[1]
    assert (
        lines[0].startswith("epoch  1/12 |") and "loss 0.001159" in lines[1] and "loss     1653" in lines[1]
    )
    for word in ("train", "val", "lr", "samples/s"):  # every column starts at the same place
        assert lines[0].index(word) == lines[1].index(word), (word, lines)


def test_no_bars_in_a_notebook_without_ipywidgets(monkeypatch):
    import warnings

    import trainlab.logging as tl

    monkeypatch.setattr(tl, "in_notebook", lambda: True)
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # `import ipywidgets` raises ImportError
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tqdm's "IProgress not found" fallback warning would fail here
        assert tl.progress_bar_class(sys.stderr) is None
        assert tl.ConsoleProgress(steps_per_epoch=4, epochs=1).bars_off


def test_in_a_notebook_the_model_summary_is_one_collapsed_block(monkeypatch):
    import trainlab.logging as tl

    monkeypatch.setattr(tl, "in_notebook", lambda: True)
    shown = []
    display = pytest.importorskip("IPython.display")
    monkeypatch.setattr(display, "display", shown.append)
    tl.show_model_summary("Layer ...\nTotal params: 25,610\nTrainable params: 25,610")
    assert (
        len(shown) == 1 and "<details><summary>model summary (25,610 parameters)</summary>" in shown[0].data
    )


def test_quiet_prints_no_bars_and_no_epoch_lines(tmp_path, capsys, monkeypatch, no_report):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    code, out, err = short_run(capsys, tmp_path, "--quiet")
    assert code == 0, err
    assert "\r" not in err and "%|" not in err
    assert not [line for line in out.splitlines() if line.startswith("epoch ")]
    assert (tmp_path / "run" / "summary.json").is_file()


def test_each_param_group_learning_rate_is_logged(tmp_path, capsys, no_report):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code, out, err = short_run(
        capsys,
        tmp_path,
        "train.log_every_n_steps=1",
        "train.max_steps=3",
        "optimizer.name=SGD",
        "optimizer.lr=0.1",
        "optimizer.param_groups=[{params: '1.*', lr: 0.01}, {params: '3.*', lr: 0.02}]",
        "--quiet",
    )
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    step_rows = [r for r in rows if r.get("kind") == "step"]
    assert step_rows and all(sorted(r["lrs"].values()) == [0.01, 0.02] for r in step_rows)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    assert len([t for t in events.Tags()["scalars"] if t.startswith("lr/")]) == 2


def test_resume_truncation_drops_rows_of_an_epoch_the_checkpoint_did_not_finish(tmp_path):
    """A checkpoint at an epoch's last step, taken before the epoch's end (checkpoint_every_n_steps),
    shares its step with that epoch's rows; a process killed between the two leaves those rows behind."""
    from trainlab.logging import MetricsFile

    path = tmp_path / "metrics.jsonl"
    rows = [
        {"epoch": 1, "step": 15, "split": "train", "kind": "step", "loss": 1.0},
        {"epoch": 1, "step": 20, "split": "train", "kind": "step", "loss": 0.9},
        {"epoch": 1, "step": 20, "split": "train", "kind": "epoch", "loss": 0.95},
        {"epoch": 1, "step": 20, "split": "val", "kind": "epoch", "loss": 0.97},
        {"epoch": 2, "step": 25, "split": "train", "kind": "step", "loss": 0.8},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    MetricsFile(
        path, truncate_after_step=20, completed_epochs=0
    ).file.close()  # mid-epoch checkpoint at step 20
    kept = [json.loads(line) for line in path.read_text().splitlines()]
    assert kept == rows[:2]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    MetricsFile(path, truncate_after_step=20, completed_epochs=1).file.close()  # the epoch-end checkpoint
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:4]
