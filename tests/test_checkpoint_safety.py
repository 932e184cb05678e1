"""Checkpoints never run code, corrupt files are named, saves are atomic, bad run folders and unsafe
YAML are clean errors. Most cases call the CLI in-process (`trainlab.cli.main`: the same parsing,
error mapping and exit codes, without paying the import of torch per case); one case runs the real
`trainlab` executable with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 in its environment."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainlab.cli import main
from trainlab.engine import checkpoint as ckpt
from trainlab.errors import CheckpointError

TRAINLAB = Path(sys.executable).with_name("trainlab")
TINY = [
    "data.source=iris",
    "model.name=mlp",
    "model.hidden=[8]",
    "train.epochs=2",
    "data.batch_size=32",
    "scheduler.name=none",
]


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, " ".join((out + err).split())  # messages wrap at 100 columns


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("safety") / "run"
    assert main(["train", *TINY, "--out", str(run), "--quiet"]) == 0
    return run


class Payload:
    """Unpickling this calls os.system, which would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_malicious(path: Path, marker: Path) -> None:
    torch.save({"model": Payload(marker), "epoch": 0}, path)
    # A matching sidecar: the hash check passes, so the refusal must come from the safe unpickler.
    ckpt.sha_path(path).write_text(hashlib.sha256(path.read_bytes()).hexdigest() + f"  {path.name}\n")


@pytest.fixture
def poisoned(trained, tmp_path, monkeypatch) -> tuple[Path, Path]:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    marker = tmp_path / "pwned"
    write_malicious(run / "checkpoints" / "best.pt", marker)
    write_malicious(run / "checkpoints" / "last.pt", marker)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # must not turn safe loading off
    return run, marker


def test_malicious_checkpoint_refused_by_eval_predict_and_resume(poisoned, tmp_path, capsys):
    run, marker = poisoned
    rows = tmp_path / "rows.csv"
    rows.write_text("0,1,2,3\n5.1,3.5,1.4,0.2\n")
    for args in (
        ["eval", run],
        ["predict", run, rows],
        ["train", *TINY, "--out", run, "--resume", "--quiet"],
    ):
        code, text = run_cli(capsys, *args)
        assert code == 2, (args, text)
        assert "unsafe checkpoint refused" in text and "Traceback" not in text
        assert not marker.exists(), f"{args[0]} executed the payload"


def test_malicious_checkpoint_refused_by_the_real_command(poisoned):
    run, marker = poisoned  # the fixture set TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1; the child inherits it
    proc = subprocess.run([str(TRAINLAB), "eval", str(run)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "unsafe checkpoint refused" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flip":
        data[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(data))
    elif how == "truncate-no-sidecar":
        path.write_bytes(data[: len(data) // 2])
        ckpt.sha_path(path).unlink()


@pytest.mark.parametrize("how", ["truncate", "flip", "truncate-no-sidecar"])
def test_damaged_checkpoint_is_a_named_exit_2_error(trained, tmp_path, capsys, how):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    best = run / "checkpoints" / "best.pt"
    damage(best, how)
    code, text = run_cli(capsys, "eval", run)
    assert code == 2
    assert f"corrupt checkpoint: {best}" in text


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint({"w": torch.ones(3), "step": 1}, path)

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt.os, "fsync", disk_full)
    with pytest.raises(CheckpointError, match="No space left on device.*previous checkpoint is intact"):
        ckpt.save_checkpoint({"w": torch.zeros(3), "step": 2}, path)
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path, need={})["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.pt.sha256"]  # no temp files left


def test_kill_between_the_two_renames_is_completed_on_load(tmp_path):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint({"step": 1}, path)
    old_sidecar = ckpt.sha_path(path).read_text()
    ckpt.save_checkpoint({"step": 2}, path)
    # The state a kill between `os.replace(tmp, path)` and the sidecar's rename leaves behind:
    pending = tmp_path / f".last.pt.sha256{ckpt.TMP_MARK}999"
    pending.write_text(ckpt.sha_path(path).read_text())
    ckpt.sha_path(path).write_text(old_sidecar)
    assert ckpt.load_checkpoint(path, need={})["step"] == 2
    assert not pending.exists() and ckpt.sha_path(path).read_text() != old_sidecar
    (tmp_path / f".last.pt{ckpt.TMP_MARK}123").write_bytes(b"half a checkpoint")
    ckpt.clean_temp_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.pt.sha256"]


def test_run_directory_that_cannot_be_created_is_a_clean_error(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, text = run_cli(capsys, "train", *TINY, "--out", blocker / "run", "--quiet")
    assert code == 2 and "not writable" in text and str(blocker / "run") in text and "Traceback" not in text


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="running as root: chmod does not stop root from writing, so a read-only folder is writable",
)
def test_read_only_run_directory_is_a_clean_error(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, text = run_cli(capsys, "train", *TINY, "--out", locked / "run", "--quiet")
    finally:
        locked.chmod(0o755)
    assert code == 2 and "not writable" in text and "Traceback" not in text


def test_yaml_with_python_tags_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    config = tmp_path / "evil.yaml"
    config.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\ndata: {{source: iris}}\n")
    code, text = run_cli(capsys, "train", config, "--out", tmp_path / "run", "--quiet")
    assert code == 2 and "Traceback" not in text
    assert str(config) in text
    assert not marker.exists()
