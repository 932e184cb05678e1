"""Exact resume: a run killed with SIGKILL inside a checkpoint save and again mid-epoch, then resumed,
ends with weights bit-identical to an uninterrupted run (shuffling, dropout and random augmentation
on); resuming with a changed config is refused with the differences listed, except train.epochs.

The killed runs are real `trainlab` processes; the uninterrupted reference run and the final resume
run in-process (`trainlab.cli.main`) while the subprocesses work, to save interpreter start-ups."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trainlab.cli import main

TRAINLAB = Path(sys.executable).with_name("trainlab")
# digits: 1257 training images -> 20 batches of 64 per epoch; a checkpoint every 5 steps and per epoch.
ARGS = [
    "train.epochs=2",
    "data.batch_size=64",
    "model.name=mlp",
    "model.hidden=[32]",
    "model.dropout=0.3",
    "data.transforms=[{RandomCrop: {size: 8, padding: 1}}, RandomHorizontalFlip]",
    "train.checkpoint_every_n_steps=5",
    "scheduler.name=cosine",
    "optimizer.name=Adam",
]


def start(out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(out.parent / f"{out.name}.log", "a") as log:  # the child keeps its own copy of the handle
        return subprocess.Popen(
            [str(TRAINLAB), "train", *ARGS, *extra, "--out", str(out), "--quiet"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )


def wait_until(condition, proc: subprocess.Popen, what: str) -> None:
    """Poll (the process must still be running) until `condition()`; a generous limit only to fail cleanly."""
    deadline = time.monotonic() + 300
    while not condition():
        assert proc.poll() is None, f"trainlab exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


_REFERENCE: list[Path] = []


def reference_run(tmp_path_factory) -> Path:
    """The uninterrupted run (trained once per module, in this process)."""
    if not _REFERENCE:
        run = tmp_path_factory.mktemp("reference") / "run"
        assert main(["train", *ARGS, "--out", str(run), "--quiet"]) == 0
        _REFERENCE.append(run)
    return _REFERENCE[0]


@pytest.fixture
def reference(tmp_path_factory) -> Path:
    return reference_run(tmp_path_factory)


def test_sigkill_inside_a_save_and_mid_epoch_then_resume_is_bit_identical(tmp_path, tmp_path_factory):
    run, marker = tmp_path / "run", tmp_path / "in_save"
    last = run / "checkpoints" / "last.pt"
    # 1. Killed inside the save that would replace last.pt (the fault hook pauses after the temp file).
    proc = start(run, env={"TRAINLAB_FAULT_PAUSE_IN_SAVE": str(marker)})
    ref_run = reference_run(tmp_path_factory)  # trains in this process while the subprocess starts up
    wait_until(marker.exists, proc, "the paused save")
    kill(proc)
    leftovers = [p for p in last.parent.iterdir() if p.name.startswith(".last.pt.tmp-")]
    assert leftovers  # the unfinished write
    first = load(last)  # the previous checkpoint is intact
    assert first["global_step"] == 5 and first["loader"] == {"epoch": 0, "position": 5}

    # 2. Resumed, then killed mid-epoch once a newer checkpoint is in place.
    proc = start(run, "--resume")
    sidecar = last.with_name("last.pt.sha256")
    before = sidecar.read_text()
    wait_until(lambda: sidecar.read_text() != before, proc, "a new checkpoint")
    kill(proc)
    assert load(last)["global_step"] > 5
    assert not any(p.exists() for p in leftovers)  # cleaned up on resume

    # 3. Resumed to the end: the same weights, history and metrics rows as the uninterrupted run.
    assert main(["train", *ARGS, "--out", str(run), "--quiet", "--resume"]) == 0
    ref = load(ref_run / "checkpoints" / "last.pt")
    got = load(last)
    assert_same_weights(got["model"], ref["model"])
    assert_same_weights(
        load(run / "checkpoints" / "best.pt")["model"], load(ref_run / "checkpoints" / "best.pt")["model"]
    )
    assert got["optimizer"]["state"][0]["step"] == ref["optimizer"]["state"][0]["step"]

    def comparable(rows: list[dict]) -> list[dict]:  # timings differ between runs, values must not
        return [{k: v for k, v in r.items() if "second" not in k and "wait" not in k} for r in rows]

    assert comparable(got["history"]) == comparable(ref["history"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(line) for line in (ref_run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["split"], r["epoch"], r["step"]) for r in rows] == [
        (r["split"], r["epoch"], r["step"]) for r in ref_rows
    ]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == 40


def test_resume_with_a_changed_config_is_refused_listing_the_differences(reference, capsys):
    code = main(
        [
            "train",
            *ARGS,
            "optimizer.lr=0.5",
            "model.hidden=[16]",
            "--out",
            str(reference),
            "--resume",
            "--quiet",
        ]
    )
    text = " ".join(capsys.readouterr().err.split())
    assert code == 2
    assert "--resume refused" in text and "optimizer.lr" in text and "model.hidden" in text
    assert "data.batch_size" not in text  # only what differs


def test_resume_with_more_epochs_extends_the_run(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    before = load(run / "checkpoints" / "last.pt")["history"]
    assert main(["train", *ARGS, "train.epochs=3", "--out", str(run), "--resume", "--quiet"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert (
        summary["status"] == "completed" and summary["epochs_completed"] == 3 and summary["global_step"] == 60
    )
    after = load(run / "checkpoints" / "last.pt")
    assert after["history"][:2] == before and after["config"]["train"]["epochs"] == 3
