"""The CUDA paths on a real GPU (`pytest -m cuda`; skipped with the reason on a machine without one;
benchmarks/gpu_check.sh runs them): the fast path's GPU and pinned placements and its shards, an
interrupted CUDA run resuming bit-identically under train.deterministic, bf16/fp16/auto steps, the CUDA
RNG state through a checkpoint, out of memory at a deliberately huge batch, DDP with one process on
nccl. The CPU side of the same rules is in test_device.py."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from trainlab.data import loaders
from trainlab.data.base import ArrayDataset
from trainlab.data.loaders import TensorLoader
from trainlab.data.transforms import BatchTransform
from trainlab.engine import checkpoint as ckpt
from trainlab.engine.callbacks import Callback
from trainlab.engine.device import resolve_device
from trainlab.engine.loop import Trainer
from trainlab.engine.memory import out_of_memory_guard
from trainlab.errors import ConfigError, Interrupted, OutOfMemory

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (on one: pytest -m cuda)"),
]

CUDA = torch.device("cuda")


def images(n: int = 200) -> ArrayDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, 6, 6), generator=g, dtype=torch.uint8)
    return ArrayDataset(
        x, torch.arange(n), BatchTransform(["ToTensor", {"Normalize": {"mean": [0.4], "std": [0.3]}}])
    )


def test_fast_path_keeps_a_split_that_fits_on_the_gpu_and_pins_one_that_does_not(monkeypatch):
    on_gpu = TensorLoader(images(), 16, shuffle=True, seed=1, device=CUDA)
    assert on_gpu.placement == "device" and on_gpu.x.is_cuda and on_gpu.inputs.is_cuda
    monkeypatch.setattr(loaders, "GPU_DATA_SHARE", 0.0)  # nothing fits: host memory, pinned copies
    on_host = TensorLoader(images(), 16, shuffle=True, seed=1, device=CUDA)
    assert on_host.placement == "pinned" and not on_host.x.is_cuda
    data = images()  # as a split of a memory-mapped cache: row numbers, the rows stay on the host
    by_rows = TensorLoader(
        ArrayDataset(data.x, data.y, data.transform, rows=torch.arange(len(data))), 16, seed=1, device=CUDA
    )
    assert by_rows.placement == "pinned" and not by_rows.x.is_cuda
    for _ in range(2):  # two epochs: the same batches, on the GPU, either way
        for (xa, ya), (xb, yb), (xc, yc) in zip(on_gpu, on_host, by_rows, strict=True):
            assert xb.is_cuda and yb.is_cuda and xc.is_cuda
            assert torch.equal(ya, yb) and torch.equal(ya, yc)  # the same samples in the same order
            torch.testing.assert_close(xa, xb)  # normalised on the GPU vs the CPU: equal up to rounding
            torch.testing.assert_close(xa, xc)


@pytest.mark.parametrize("world_size", [2, 3])
def test_fast_path_shards_on_the_gpu_cover_the_data(world_size):
    seen = torch.cat(
        [
            y
            for rank in range(world_size)
            for _, y in TensorLoader(images(50), 8, seed=2, device=CUDA, rank=rank, world_size=world_size)
        ]
    )
    assert seen.is_cuda and set(seen.tolist()) == set(range(50))


def test_a_cuda_device_index_this_machine_lacks_is_a_config_error():
    with pytest.raises(ConfigError, match="train.device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_cuda_rng_state_round_trips_through_a_checkpoint(tmp_path):
    torch.cuda.manual_seed_all(5)
    torch.rand(3, device=CUDA)
    ckpt.save_checkpoint({"rng": ckpt.rng_state()}, tmp_path / "last.pt")
    expected = torch.rand(4, device=CUDA)
    dropped = nn.functional.dropout(torch.ones(64, device=CUDA), 0.5)
    torch.rand(10, device=CUDA)
    state = ckpt.load_checkpoint(tmp_path / "last.pt")["rng"]
    assert len(state["cuda"]) == torch.cuda.device_count() and state["cuda"][0].device.type == "cpu"
    ckpt.set_rng_state(state)
    assert torch.equal(torch.rand(4, device=CUDA), expected)
    assert torch.equal(nn.functional.dropout(torch.ones(64, device=CUDA), 0.5), dropped)


def _data(n: int = 512, features: int = 16) -> tuple[ArrayDataset, ArrayDataset]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, features, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return ArrayDataset(x[: n - 128], y[: n - 128]), ArrayDataset(x[n - 128 :], y[n - 128 :])


@pytest.mark.parametrize(
    "precision, dtype, scaled",
    [("bf16", torch.bfloat16, False), ("fp16", torch.float16, True), ("auto", torch.bfloat16, False)],
)
def test_mixed_precision_steps_on_cuda_compute_in_half_and_learn(precision, dtype, scaled):
    if precision == "auto" and torch.cuda.get_device_capability() < (8, 0):
        dtype, scaled = torch.float16, True  # auto is fp16 + GradScaler below compute capability 8.0
    train, val = _data()
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 2))
    seen: list[torch.dtype] = []
    model[0].register_forward_hook(
        lambda m, i, out: seen.append(out.dtype) if m.training else None
    )  # train steps
    trainer = Trainer.from_datasets(
        model,
        train,
        val,
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(model.parameters(), lr=0.01),
        epochs=5,
        batch_size=32,
        device="cuda",
        precision=precision,
    )
    history = trainer.fit()
    assert set(seen) == {dtype}
    assert all(p.dtype == torch.float32 and p.is_cuda for p in model.parameters())  # autocast, fp32 weights
    assert history[-1]["train_loss"] < history[0]["train_loss"] and history[-1]["val_accuracy"] > 0.8
    assert (trainer.scaler is not None) is scaled
    if scaled:
        assert trainer.state_dict()["scaler"]["scale"] > 0


class InterruptAt(Callback):
    """Sends this process SIGINT after global step `step`: the loop saves last.pt mid-epoch and stops."""

    def __init__(self, step: int):
        self.step = step

    def on_batch_end(self, step, logs):
        if step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def test_an_interrupted_cuda_run_resumes_bit_identically_under_deterministic(tmp_path, no_report):
    import trainlab

    config = {
        "name": "cuda-resume",
        "seed": 0,
        "data": {"source": "digits", "batch_size": 64},
        "model": {"name": "mlp", "hidden": [64], "dropout": 0.3},  # dropout draws from the CUDA RNG
        "scheduler": {"name": "cosine"},
        "train": {
            "epochs": 2,
            "device": "cuda",
            "deterministic": True,
            "compile": False,
            "checkpoint_every_n_steps": 5,
        },
    }
    reference = trainlab.train(config, out=tmp_path / "reference", quiet=True)
    with pytest.raises(Interrupted):
        trainlab.train(config, out=tmp_path / "run", quiet=True, callbacks=[InterruptAt(27)])  # mid epoch 2
    saved = ckpt.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert saved["global_step"] == 27 and saved["rng"]["cuda"]
    assert saved.get("device") == "cuda"
    resumed = trainlab.train(config, out=tmp_path / "run", resume=True, quiet=True)
    assert resumed.status == "completed"
    a = ckpt.load_checkpoint(tmp_path / "reference" / "checkpoints" / "last.pt")["model"]
    b = ckpt.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    timings = ("samples_per_second", "data_wait_fraction")  # the rest of the final metrics must match exactly
    assert {
        split: {k: v for k, v in values.items() if k not in timings}
        for split, values in resumed.final.items()
    } == {
        split: {k: v for k, v in values.items() if k not in timings}
        for split, values in reference.final.items()
    }


def test_out_of_memory_guard_turns_a_real_cuda_oom_into_the_message():
    before = torch.cuda.memory_allocated()
    with pytest.raises(OutOfMemory, match="batch size 4096"), out_of_memory_guard(4096, device=CUDA):
        torch.empty(1 << 50, dtype=torch.uint8, device=CUDA)  # a petabyte
    assert torch.cuda.memory_allocated() == before


def test_a_deliberately_huge_batch_fails_with_out_of_memory_and_writes_no_checkpoint(tmp_path):
    g = torch.Generator().manual_seed(0)
    n = 1 << 20
    data = ArrayDataset(torch.randn(n, 8, generator=g), torch.randint(0, 2, (n,), generator=g))
    # (2^20, 2^17) hidden activations: 512 GiB in fp32, more than any GPU has
    model = nn.Sequential(nn.Linear(8, 1 << 17), nn.ReLU(), nn.Linear(1 << 17, 2))
    trainer = Trainer.from_datasets(
        model,
        data,
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        batch_size=n,
        device="cuda",
        precision="fp32",
        max_steps=1,
        checkpoint_dir=tmp_path,
    )
    with pytest.raises(OutOfMemory, match=f"batch size {n}.*data.batch_size={n // 2} train.grad_accum=2"):
        trainer.fit()
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "best.pt").exists()
    del trainer, model
    gc.collect()
    small = nn.Linear(8, 2).cuda()
    small(torch.randn(4, 8, device=CUDA)).sum().backward()  # the GPU is usable again


def test_ddp_with_one_process_on_nccl_trains_and_gathers_its_state(tmp_path):
    script = textwrap.dedent("""
        import torch, torch.distributed as dist
        from torch import nn
        from trainlab.engine import distributed, checkpoint as ckpt
        port = distributed.free_port()
        torch.cuda.set_device(0)
        dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                                device_id=torch.device("cuda", 0))
        assert dist.get_backend() == "nccl"
        device = torch.device("cuda", 0)
        model = distributed.wrap_model(nn.Linear(8, 2).to(device), device)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        before = model.module.weight.detach().clone()
        for _ in range(3):
            opt.zero_grad()
            # gradients all-reduced by nccl
            model(torch.randn(16, 8, device=device)).square().mean().backward()
            opt.step()
        assert not torch.equal(before, model.module.weight)
        loss_sum, n = distributed.all_reduce_sums(torch.tensor(2.5, device=device), 4)
        assert (loss_sum, n) == (2.5, 4), (loss_sum, n)
        states = distributed.gather_rank_states({"rng": ckpt.rng_state()})
        assert len(states) == 1 and states[0]["rng"]["cuda"]
        dist.destroy_process_group()
        print("ddp-ok")
    """)
    env = {**os.environ, "WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=240, env=env
    )
    assert proc.returncode == 0 and "ddp-ok" in proc.stdout, proc.stderr[-3000:]
