"""Data-parallel training with torchrun + DDP, on CPU with gloo and two processes.

Loader-level tests (no processes): the shards of an epoch cover the training split, the order changes
between epochs, and the union of two rank batches of 32 is the single-process batch of 64 (what makes
DDP equivalent to one large batch). Evaluation shards hold every sample exactly once.

End-to-end tests (real `trainlab train --nproc 2` / torchrun processes, breast_cancer: 398 training
samples -> 7 steps per epoch at 2 x 32 or 1 x 64): the same weights as one process with batch 64,
only rank 0 writes, the reported validation numbers equal a single-process `trainlab eval`, and a
worker that dies at step 5 is restarted by torchrun and ends with the same weights (max-restarts 1)
or fails the job naming its rank (max-restarts 0).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from trainlab.data.base import ArrayDataset
from trainlab.data.loaders import TensorLoader, epoch_order
from trainlab.engine import distributed

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this build",
)

# SGD with momentum, no dropout and no augmentation: the only randomness is the sample order.
ARGS = [
    "data.source=breast_cancer",
    "data.standardize=true",
    "data.batch_size=32",
    "model.name=mlp",
    "model.hidden=[16]",
    "optimizer.name=SGD",
    "optimizer.lr=0.05",
    "optimizer.momentum=0.9",
    "scheduler.name=none",
    "train.epochs=2",
    "train.checkpoint_every_n_steps=2",
    "train.device=cpu",
]
WORKER_ENV = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def run_cli(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainlab", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **WORKER_ENV, **(env or {})},
        timeout=300,
    )


def torchrun(
    cwd: Path, max_restarts: int, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    cmd = distributed.torchrun_command(2, list(args), max_restarts=max_restarts)
    return subprocess.run(
        cmd,
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **WORKER_ENV, **(env or {})},
        timeout=300,
    )


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


def assert_close_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=lambda m, k=k: f"{k}: {m}")


# ----------------------------------------------------------------------------- loaders, no processes


def test_rank_shards_cover_the_epoch_and_the_order_changes_between_epochs():
    n, world = 398, 2
    for epoch in (0, 1):
        shards = [epoch_order(n, epoch, seed=3, shuffle=True, rank=r, world_size=world) for r in range(world)]
        assert [len(s) for s in shards] == [199, 199]
        assert sorted(torch.cat(shards).tolist()) == list(range(n))  # every sample exactly once
    e0 = torch.cat([epoch_order(n, 0, 3, True, r, world) for r in range(world)])
    e1 = torch.cat([epoch_order(n, 1, 3, True, r, world) for r in range(world)])
    assert not torch.equal(e0, e1)
    # An odd count is padded by wrapping (DistributedSampler): one sample twice, none missing.
    odd = torch.cat([epoch_order(7, 0, 3, True, r, world) for r in range(world)])
    assert len(odd) == 8 and set(odd.tolist()) == set(range(7))


def test_two_rank_batches_of_32_are_the_single_process_batch_of_64():
    ds = ArrayDataset(torch.arange(398).float().unsqueeze(1), torch.zeros(398, dtype=torch.long))
    single = TensorLoader(ds, 64, shuffle=True, seed=5)
    ranks = [TensorLoader(ds, 32, shuffle=True, seed=5, rank=r, world_size=2) for r in range(2)]
    for epoch in (0, 1):
        for loader in (single, *ranks):
            loader.set_epoch(epoch)
        batches = list(zip(single, *ranks, strict=True))
        assert len(batches) == 7
        for (x, _), (x0, _), (x1, _) in batches:
            assert sorted(torch.cat([x0, x1]).flatten().tolist()) == sorted(x.flatten().tolist())


def test_eval_shards_hold_every_sample_once_with_no_padding():
    ds = ArrayDataset(torch.arange(57).float().unsqueeze(1), torch.zeros(57, dtype=torch.long))
    shards = [distributed.eval_shard(ds, r, 2) for r in range(2)]
    assert [len(s) for s in shards] == [29, 28]
    assert sorted(torch.cat([s.x for s in shards]).flatten().long().tolist()) == list(range(57))
    plain = torch.utils.data.TensorDataset(torch.arange(5))  # the DataLoader path: a Subset
    assert [plain_shard[0][0].item() for plain_shard in [distributed.eval_shard(plain, 1, 2)]] == [1]
    assert distributed.eval_shard(ds, 0, 1) is ds


def test_resume_with_another_process_count_states_the_new_effective_batch_size():
    assert distributed.world_size_change(2, 2, 32) is None
    msg = distributed.world_size_change(2, 4, 32)
    assert "from 64 to 128" in msg and "2 process(es) on 4" in msg
    assert distributed.rescale_position(6, 2, 4) == 3  # same fraction of the epoch
    states = [
        {"epoch_progress": {"loss_sum": 1.0, "samples": 10, "seconds": 2.0}},
        {"epoch_progress": {"loss_sum": 3.0, "samples": 12, "seconds": 3.0}},
    ]
    merged = {"loss_sum": 4.0, "samples": 22, "seconds": 3.0}  # sums; the wall clock is the longest rank's
    assert distributed.merge_progress(states) == merged
    assert distributed.own_rank_state({"rank_states": [{"a": 0}, {"a": 1}]}, 1, 2) == {"a": 1}
    assert distributed.own_rank_state({"rank_states": [{"a": 0}, {"a": 1}]}, 1, 3) is None


def test_launch_command_binds_the_rendezvous_to_localhost_and_drops_the_launch_options():
    argv = distributed.strip_launch_options(
        ["train", "c.yaml", "--nproc", "2", "--max-restarts=1", "--quiet"]
    )
    assert argv == ["train", "c.yaml", "--quiet"]
    cmd = distributed.torchrun_command(2, argv, max_restarts=1, port=12345)
    assert cmd[cmd.index("--rdzv-endpoint") + 1] == "127.0.0.1:12345"
    assert cmd[cmd.index("--max-restarts") + 1] == "1"
    assert cmd[-4:] == ["trainlab", "train", "c.yaml", "--quiet"]


# ----------------------------------------------------------------------------- real processes


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, Path]:
    """`trainlab train --nproc 2` (cwd: an empty folder) and, meanwhile in this process, the same
    config with one process and batch 64 (the same samples per step as 2 x 32). Trained once."""
    from trainlab.cli import main

    cwd, single = tmp_path_factory.mktemp("ddp"), tmp_path_factory.mktemp("single") / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainlab", "train", *ARGS, "--out", "run", "--nproc", "2"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **WORKER_ENV},
    )
    assert main(["train", *ARGS, "data.batch_size=64", "--out", str(single), "--quiet"]) == 0
    stdout, stderr = proc.communicate(timeout=300)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert result.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return cwd / "run", result, single


@pytest.fixture(scope="module")
def ddp_run(runs) -> tuple[Path, subprocess.CompletedProcess]:
    return runs[0], runs[1]


@pytest.fixture(scope="module")
def single_run(runs) -> Path:
    return runs[2]


def test_two_processes_x_32_give_the_weights_of_one_process_x_64(ddp_run, single_run):
    run, result = ddp_run
    assert "effective batch size 64" in result.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == 14  # 2 epochs x 7 steps
    assert_close_weights(weights(run), weights(single_run))


def test_only_rank_0_writes_and_other_ranks_stay_silent(ddp_run):
    run, result = ddp_run
    outside = [p for p in run.parent.rglob("*") if run not in p.parents and p != run]
    assert outside == []  # nothing written next to the run directory (cwd)
    assert len(list((run / "tensorboard").iterdir())) == 1  # one SummaryWriter, rank 0's
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["split"], r["epoch"], r["step"]) for r in rows]
    assert len(keys) == len(set(keys)) and ("val", 2, 14) in keys  # no line written twice
    assert result.stdout.count("effective batch size") == 1  # rank 1 printed nothing
    assert "Traceback" not in result.stderr


def test_reported_validation_and_test_numbers_are_over_the_whole_split(ddp_run, single_run):
    from trainlab.finished import evaluate_run

    run, _ = ddp_run
    summary = json.loads((run / "summary.json").read_text())
    for split in ("val", "test"):  # val has 57 samples: padded shards would count one twice
        reference = evaluate_run(run, split)  # one process, the same (best) weights
        reported = summary["final"][split] if split == "test" else summary["best"]
        key = "accuracy" if split == "test" else "val_accuracy"
        assert reported[key] == pytest.approx(reference["accuracy"], abs=1e-9)
    # The saved validation predictions are the whole split, in the dataset's order.
    ddp, one = (
        torch.from_numpy(__import__("numpy").load(r / "predictions" / "val.npz")["target"])
        for r in (run, single_run)
    )
    assert torch.equal(ddp, one) and len(ddp) == 57


def test_a_worker_killed_at_step_5_is_restarted_and_ends_with_the_same_weights(ddp_run, tmp_path):
    run, _ = ddp_run
    result = torchrun(
        tmp_path, 1, "train", *ARGS, "--out", "run", "--quiet", env={"TRAINLAB_FAULT_EXIT_AT_STEP": "5"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "TRAINLAB_FAULT_EXIT_AT_STEP=5" in result.stderr  # the fault did happen on the first attempt
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"
    assert_close_weights(weights(tmp_path / "run"), weights(run))


def test_bad_input_under_nproc_is_exit_2_with_the_message_and_no_traceback(tmp_path):
    result = run_cli(tmp_path, "train", *ARGS, "data.val_fraction=0.99", "--out", "run", "--nproc", "2")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "data.val_fraction" in result.stderr
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr


def test_with_max_restarts_0_the_job_fails_and_names_the_failing_rank(tmp_path):
    result = run_cli(
        tmp_path,
        "train",
        *ARGS,
        "--out",
        "run",
        "--quiet",
        "--nproc",
        "2",
        "--max-restarts",
        "0",
        env={"TRAINLAB_FAULT_EXIT_AT_STEP": "5"},
    )
    assert result.returncode == 1
    # one line per failed rank instead of torchrun's traceback
    assert "trainlab: rank 1 failed (exit code 1)" in result.stderr, result.stderr[-3000:]
    assert "ChildFailedError" not in result.stderr  # (rank 0's own traceback, its peer gone, stays)
    assert (
        not (tmp_path / "run" / "summary.json").exists()
        or json.loads((tmp_path / "run" / "summary.json").read_text())["status"] != "completed"
    )
