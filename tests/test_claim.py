"""A run directory has one owner: the lock (a second writer exits 2 at once, a dead owner's lock is taken
over), a used --out is refused without --resume, a run killed before its first checkpoint is moved aside
by the next fresh start, and a user's own config.yaml is never written over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import cli_in_process
from trainlab.claim import LOCK_NAME, claim_run_dir
from trainlab.errors import CheckpointError, TrainlabError

TINY = ["model.name=mlp", "model.hidden=[8]", "train.epochs=1", "train.max_steps=3", "train.device=cpu"]


def _killed_run(folder) -> None:
    """A process that claims `folder`, writes what a run writes before its first
    checkpoint, then dies by SIGKILL."""
    code = (
        "import os, signal, sys\n"
        "from trainlab.claim import claim_run_dir\n"
        "run = claim_run_dir(sys.argv[1])\n"
        "run.write_config({'name': 'killed'}); run.update_summary(status='running')\n"
        'run.metrics.write_text(\'{"epoch": 1, "step": 5, "split": "train", "loss": 1.0}\\n\')\n'
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(folder)], check=False, capture_output=True, text=True
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_a_second_writer_is_refused_at_once_naming_the_owner(tmp_path, capsys):
    code = (
        "import sys, time\nfrom trainlab.claim import claim_run_dir\nrun = claim_run_dir(sys.argv[1])\n"
        "print('claimed', flush=True)\nsys.stdin.read()\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "run")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout.readline().strip() == "claimed"
        status, _, err = cli_in_process(capsys, "train", *TINY, "--out", str(tmp_path / "run"), "--quiet")
        assert status == 2
        assert f"pid {owner.pid}" in err and "being written by another training run" in " ".join(err.split())
        assert not (tmp_path / "run" / "metrics.jsonl").exists()  # the second run wrote nothing
    finally:
        owner.communicate("")
    assert owner.returncode == 0 and not (tmp_path / "run" / LOCK_NAME).exists()  # released at exit


def test_a_used_out_is_refused_without_resume_and_nothing_is_rewritten(tmp_path, capsys, no_report):
    run = tmp_path / "run"
    assert cli_in_process(capsys, "train", *TINY, "--out", str(run), "--quiet")[0] == 0
    assert not (run / LOCK_NAME).exists()  # released at the end of the run
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    (run / "checkpoints" / "last.pt").unlink()  # the guard used to look at last.pt only
    del before[run / "checkpoints" / "last.pt"]
    status, _, err = cli_in_process(capsys, "train", *TINY, "--out", str(run), "--quiet")
    assert status == 2
    err = " ".join(err.split())  # the message is wrapped at 100 columns
    assert "already holds a completed run" in err and "best.pt" in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_run_killed_before_its_first_checkpoint_is_moved_aside_by_a_fresh_start(
    tmp_path, capsys, no_report
):
    run = tmp_path / "run"
    _killed_run(run)
    assert (run / LOCK_NAME).exists() and not (run / "checkpoints").exists()
    status, out, _ = cli_in_process(capsys, "train", *TINY, "--out", str(run), "--quiet")
    assert status == 0
    assert "stopped before its first checkpoint" in out and ".aborted-" in out
    (aside,) = run.glob(".aborted-*")
    assert json.loads((aside / "summary.json").read_text())["status"] == "running"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(
        r.get("loss") != 1.0 or r["step"] != 5 for r in rows
    )  # the killed run's row is not appended
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def test_a_users_config_file_is_never_written_over(tmp_path, capsys):
    own = (
        "# my commented config\nname: mine\nmodel: {name: mlp, hidden: [8]}\n"
        "train: {epochs: 1, device: cpu}\n"
    )
    (tmp_path / "config.yaml").write_text(own)
    status, _, err = cli_in_process(
        capsys, "train", str(tmp_path / "config.yaml"), "--out", str(tmp_path), "--quiet"
    )
    assert status == 2 and "config.yaml" in err and "--out" in err
    assert (tmp_path / "config.yaml").read_text() == own


def test_a_failed_start_leaves_no_lock_and_no_empty_checkpoints_folder(tmp_path, capsys):
    status, _, err = cli_in_process(
        capsys, "train", *TINY, "loss.name=NoSuchLoss", "--out", str(tmp_path / "run")
    )
    assert status == 2 and "NoSuchLoss" in err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []


def test_other_torchrun_ranks_check_but_do_not_lock(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"x")
    with pytest.raises(TrainlabError, match="already holds a run"):
        claim_run_dir(tmp_path, resume=False, is_main=False)  # every rank stops, not only rank 0
    assert claim_run_dir(tmp_path, resume=True, is_main=False) is None
    assert not (tmp_path / LOCK_NAME).exists()


def test_resume_of_a_missing_folder_creates_nothing(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        claim_run_dir(tmp_path / "nowhere", resume=True)
    assert not (tmp_path / "nowhere").exists()


def test_a_claim_is_released_when_its_process_exits(tmp_path):
    code = "import sys\nfrom trainlab.claim import claim_run_dir\nrun = claim_run_dir(sys.argv[1])\n"
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    assert not (tmp_path / LOCK_NAME).exists()
    run = claim_run_dir(tmp_path)  # and this process can take it
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    run.release()
    assert not (tmp_path / LOCK_NAME).exists()
