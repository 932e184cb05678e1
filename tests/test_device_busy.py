"""engine/device.py: unwrapping wrappers, the busy-machine check."""

import torch
from torch import nn

from trainlab.engine.device import unwrap


def test_unwrap_takes_off_ddp_and_compile_but_not_a_user_models_own_module_attribute():
    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.module = nn.Linear(2, 2)  # a user's attribute that happens to be called `module`

    holder = Holder()
    assert unwrap(holder) is holder
    assert unwrap(torch.compile(holder)) is holder


def test_busy_machine_note_names_the_fix_only_when_the_cores_are_taken(monkeypatch):
    from trainlab.engine.device import busy_machine_note

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    note = busy_machine_note("cpu", load=5.2, cores=2, threads=2)
    assert (
        note.startswith("note: this machine is busy (load average 5.2 on 2 cores)")
        and "OMP_NUM_THREADS=1" in note
    )
    assert "\n" not in note
    assert busy_machine_note("cpu", load=0.4, cores=2, threads=2) is None  # idle
    assert busy_machine_note("cpu", load=5.2, cores=2, threads=1) is None  # one thread: nothing to fight over
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert busy_machine_note("cpu", load=5.2, cores=2, threads=2) is None  # the user chose


def test_train_prints_the_busy_machine_note_once_on_stderr(tmp_path, capsys, monkeypatch):
    import os

    import yaml

    from conftest import cli_in_process, tiny_config

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(train={"epochs": 1, "max_steps": 2, "device": "cpu"})))
    code, _, err = cli_in_process(capsys, "train", str(cfg), "--quiet", "--out", str(tmp_path / "run"))
    assert code == 0, err
    assert len([line for line in err.splitlines() if line.startswith("note: this machine is busy")]) == 1
    assert "OMP_NUM_THREADS=1" in err
