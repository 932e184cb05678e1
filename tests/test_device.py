"""Device, precision and the state that crosses devices, on a CPU machine: `train.precision` resolution
(CUDA's answers by a faked compute capability), TF32 / cudnn.benchmark / determinism flags, the
CUDA RNG state in checkpoints (a faked CUDA), a checkpoint written on CUDA evaluated and predicted on
the CPU, resuming across device types, out-of-memory messages, and `train.device: cuda` without CUDA.
The same paths on a real GPU are in test_cuda.py."""

from __future__ import annotations

import csv
import io
import warnings
import weakref
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import cli_in_process
from trainlab.engine import checkpoint as ckpt
from trainlab.engine.device import (
    apply_backend_flags,
    apply_determinism,
    check_resume_device,
    device_state,
    inference_device,
    resolve_compile,
    resolve_precision,
)
from trainlab.engine.memory import is_out_of_memory, oom_message, out_of_memory_guard
from trainlab.errors import CheckpointError, ConfigError, OutOfMemory

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
needs_no_cuda = pytest.mark.skipif(
    torch.cuda.is_available(), reason="tests the behaviour of a machine without CUDA"
)


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA device of the given compute capability, as far as resolve_precision asks."""

    def make(capability: tuple[int, int], name: str = "Fake GPU") -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(torch.version, "hip", None)

    return make


@pytest.fixture
def restore_backend_flags():
    """The process-wide flags these tests change, put back afterwards."""
    saved = (
        torch.get_float32_matmul_precision(),
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    yield
    torch.set_float32_matmul_precision(saved[0])
    torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = (
        saved[1:4]
    )
    torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])


# ----------------------------------------------------------------------------- precision


def test_precision_on_cpu_auto_is_fp32_bf16_autocasts_and_fp16_is_a_config_error():
    auto = resolve_precision("auto", CPU)
    assert (auto.name, auto.dtype, auto.needs_scaler, auto.tf32) == ("fp32", None, False, False)
    assert auto.scaler(CPU) is None
    with auto.autocast(CPU)():
        assert not torch.is_autocast_enabled("cpu")
    bf16 = resolve_precision("bf16", CPU)
    with bf16.autocast(CPU)():
        assert (nn.Linear(4, 2)(torch.ones(1, 4))).dtype == torch.bfloat16
    assert bf16.peak_label == "bf16" and auto.peak_label == "fp32"
    with pytest.raises(ConfigError, match="train.precision: fp16 needs a CUDA device"):
        resolve_precision("fp16", CPU)


@pytest.mark.parametrize(
    "capability, expected, scaler", [((9, 0), "bf16", False), ((8, 0), "bf16", False), ((7, 5), "fp16", True)]
)
def test_auto_on_cuda_is_bf16_where_native_else_fp16_with_a_grad_scaler(
    fake_gpu, capability, expected, scaler
):
    fake_gpu(capability)
    p = resolve_precision("auto", CUDA)
    assert p.name == expected and p.needs_scaler is scaler
    assert p.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[expected]


def test_bf16_asked_for_on_a_gpu_without_native_bf16_names_the_key_and_the_gpu(fake_gpu):
    fake_gpu((7, 5), "Tesla T4")
    with pytest.raises(ConfigError, match=r"train.precision: bf16 .*Tesla T4.*7\.5"):
        resolve_precision("bf16", CUDA)


def test_tf32_is_on_for_fp32_on_cuda_and_off_for_fp32_strict(fake_gpu, restore_backend_flags):
    fake_gpu((9, 0))
    fp32, strict = resolve_precision("fp32", CUDA), resolve_precision("fp32-strict", CUDA)
    assert fp32.tf32 and fp32.peak_label == "tf32" and not strict.tf32 and strict.peak_label == "fp32"
    flags = apply_backend_flags(fp32, CUDA, nn.Linear(2, 2))
    assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32
    assert flags["tf32"] is True and flags["cudnn_benchmark"] is False  # no convolution: nothing to tune
    apply_backend_flags(strict, CUDA, nn.Linear(2, 2))
    assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cudnn.allow_tf32


def test_cudnn_benchmark_only_for_a_fixed_shape_conv_net_and_never_under_determinism(
    fake_gpu, restore_backend_flags
):
    fake_gpu((9, 0))
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten())
    p = resolve_precision("auto", CUDA)
    assert apply_backend_flags(p, CUDA, conv)["cudnn_benchmark"] is True
    assert apply_backend_flags(p, CUDA, conv, fixed_shapes=False)["cudnn_benchmark"] is False
    assert apply_backend_flags(p, CUDA, conv, deterministic=True)["cudnn_benchmark"] is False


def test_backend_flags_on_the_cpu_leave_cuda_settings_alone(restore_backend_flags):
    torch.backends.cudnn.benchmark = True
    apply_backend_flags(resolve_precision("auto", CPU), CPU, nn.Conv2d(1, 1, 1))
    assert torch.backends.cudnn.benchmark is True and torch.get_float32_matmul_precision() == "highest"


def test_deterministic_sets_the_algorithms_the_cublas_workspace_and_says_so(
    monkeypatch, restore_backend_flags
):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert apply_determinism(False) is None
    assert not torch.are_deterministic_algorithms_enabled()
    torch.backends.cudnn.benchmark = True
    line = apply_determinism(True)
    assert (
        torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    )
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    import os

    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert "CUBLAS_WORKSPACE_CONFIG=:4096:8" in line and "use_deterministic_algorithms" in line
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's own setting is kept
    assert "CUBLAS_WORKSPACE_CONFIG=:16:8" in apply_determinism(True)


def test_compile_auto_is_on_for_cuda_only():
    assert resolve_compile("auto", CUDA) and not resolve_compile("auto", CPU)
    assert resolve_compile(True, CPU) and not resolve_compile(False, CUDA)


def test_precision_and_compile_config_values(capsys):
    from trainlab.config import load_config

    cfg = load_config({})
    assert cfg.train.precision == "auto" and cfg.train.compile == "auto"
    assert load_config({}, ["train.precision=fp32-strict"]).train.precision == "fp32-strict"
    code, _, err = cli_in_process(capsys, "train", "train.compile=sometimes", "--quiet")
    assert code == 2 and "train.compile" in err


# ----------------------------------------------------------------------------- device errors


@needs_no_cuda
def test_train_device_cuda_without_cuda_is_exit_2_naming_the_key(tmp_path, capsys):
    code, _, err = cli_in_process(
        capsys, "train", "train.device=cuda", "--out", str(tmp_path / "run"), "--quiet"
    )
    assert code == 2
    assert "train.device" in err and "CUDA is not available" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


@needs_no_cuda
def test_eval_and_predict_devices_fall_back_to_the_cpu():
    assert (
        inference_device("cuda") == CPU
        and inference_device("cuda:1") == CPU
        and inference_device("auto") == CPU
    )


# ----------------------------------------------------------------------------- CUDA RNG state in checkpoints


def test_cuda_rng_states_travel_through_a_checkpoint_as_plain_tensors(monkeypatch, tmp_path):
    states = [torch.arange(16, dtype=torch.uint8), torch.arange(16, 32, dtype=torch.uint8)]
    restored: list[tuple[int, torch.Tensor]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in states])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.append((device, s)))
    ckpt.save_checkpoint({"rng": ckpt.rng_state()}, tmp_path / "last.pt")
    loaded = ckpt.load_checkpoint(tmp_path / "last.pt", need={})["rng"]  # weights_only: plain types only
    assert [s.dtype for s in loaded["cuda"]] == [torch.uint8] * 2
    ckpt.set_rng_state(loaded)
    assert [i for i, _ in restored] == [0, 1]
    assert all(torch.equal(s, states[i]) for i, s in restored)

    monkeypatch.setattr(
        torch.cuda, "device_count", lambda: 1
    )  # fewer devices now: the first ones, with a note
    restored.clear()
    with pytest.warns(UserWarning, match="2 CUDA device.*has 1"):
        ckpt.set_rng_state(loaded)
    assert [i for i, _ in restored] == [0]


def test_cuda_rng_entries_on_a_machine_without_cuda_restore_the_rest_with_a_note(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    state = ckpt.rng_state()
    assert "cuda" not in state
    expected = torch.rand(3)
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8)]  # as written by a CUDA run
    with pytest.warns(UserWarning, match="CUDA random streams not restored"):
        ckpt.set_rng_state(state)
    assert torch.equal(torch.rand(3), expected)  # the CPU stream was restored


# ------------------------------------------------------------------------- a CUDA run's checkpoint on the CPU


def as_if_written_on_cuda(path: Path) -> None:
    """Rewrites a checkpoint so that every tensor says it was saved from cuda:0 (the storage location
    in torch.save's pickle), its config says train.device: cuda, and it carries CUDA RNG states: what
    a GPU run writes. Loading it without map_location fails on a machine without CUDA."""
    state = ckpt.load_checkpoint(path)
    state["config"]["train"]["device"] = "cuda"
    state.update(device="cuda", device_name="NVIDIA H200")
    state.setdefault("rng", {})["cuda"] = [torch.zeros(16, dtype=torch.uint8)]
    buffer = io.BytesIO()
    torch.save(state, buffer)
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as zin,
        zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout,
    ):
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):  # pickle protocol 2: 'X' + 4-byte length + text
                assert data.count(b"X\x03\x00\x00\x00cpu") == 1  # memoised: one location string
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            zout.writestr(info, data)
    path.write_bytes(out.getvalue())
    ckpt.sha_path(path).write_text(
        f"{__import__('hashlib').sha256(out.getvalue()).hexdigest()}  {path.name}\n"
    )


@needs_no_cuda
def test_a_checkpoint_written_on_cuda_evaluates_and_predicts_on_the_cpu(tmp_path, capsys, no_report):
    run = tmp_path / "run"
    code, _, err = cli_in_process(
        capsys,
        "train",
        "data.source=iris",
        "model.name=mlp",
        "model.hidden=[8]",
        "train.epochs=2",
        "train.device=cpu",
        "--out",
        str(run),
        "--quiet",
    )
    assert code == 0, err
    code, before, err = cli_in_process(capsys, "eval", str(run))
    assert code == 0, err
    for name in ("best.pt", "last.pt"):
        as_if_written_on_cuda(run / "checkpoints" / name)
    with pytest.raises(RuntimeError, match="CUDA"):  # what the file holds: tensors of a CUDA device
        torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    code, after, err = cli_in_process(capsys, "eval", str(run))
    assert code == 0, err
    assert after == before  # the same weights, evaluated on the CPU

    from sklearn.datasets import load_iris

    iris = load_iris()
    features = ckpt.load_checkpoint(run / "checkpoints" / "best.pt")["preprocessing"]["feature_names"]
    rows = tmp_path / "rows.csv"
    with open(rows, "w", newline="") as f:
        csv.writer(f).writerows([features, *iris.data[::50].tolist()])
    code, text, err = cli_in_process(capsys, "predict", str(run), str(rows))
    assert code == 0, err
    assert len(text.strip().splitlines()) == 1 + 3 and "prob_" in text


# ----------------------------------------------------------------------------- resuming across device types


@needs_no_cuda
def test_resuming_a_cuda_run_without_cuda_is_refused_with_the_way_to_continue_on_the_cpu():
    state = {"device": "cuda", "device_name": "NVIDIA H200"}
    for setting in ("auto", "cuda"):
        with pytest.raises(CheckpointError, match="train.device=cpu") as e:
            check_resume_device(state, setting, "run/checkpoints/last.pt")
        assert "bit-identical" in str(e.value) and "NVIDIA H200" in str(e.value)
    note = check_resume_device(state, "cpu")
    assert note.startswith("note:") and "cuda" in note and "not be bit-identical" in note


def test_resuming_on_the_same_device_type_or_from_an_older_checkpoint_says_nothing():
    assert check_resume_device({"device": "cpu"}, "cpu") is None
    assert check_resume_device({}, "cpu") is None  # written before checkpoints held a device
    assert device_state(CPU) == {"device": "cpu"}


def test_auto_picking_another_device_type_than_the_run_used_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(CheckpointError, match="train.device=cpu to continue exactly"):
        check_resume_device({"device": "cpu"}, "auto")


def test_a_split_lives_on_the_gpu_when_it_fits_a_share_of_free_memory_else_on_the_host():
    from trainlab.data.loaders import GPU_DATA_SHARE, data_placement

    gib = 1 << 30
    assert data_placement(10 * gib, CPU) == "device"  # on the CPU there is only one place
    assert data_placement(int(GPU_DATA_SHARE * 100 * gib), CUDA, free_bytes=100 * gib) == "device"
    assert data_placement(int(GPU_DATA_SHARE * 100 * gib) + 1, CUDA, free_bytes=100 * gib) == "pinned"
    assert data_placement(gib, CUDA, share=0.5, free_bytes=2 * gib) == "device"


# ----------------------------------------------------------------------------- out of memory


def test_out_of_memory_in_a_step_becomes_a_message_naming_the_batch_size():
    activations: list[weakref.ref] = []

    def step() -> None:
        hidden = torch.ones(1000)  # a tensor of the failed step
        activations.append(weakref.ref(hidden))
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    with pytest.raises(OutOfMemory) as e, out_of_memory_guard(256, 1, device=CPU):
        step()
    assert activations[0]() is None  # freed at once, though the error object lives on
    message = str(e.value)
    assert "batch size 256" in message and "data.batch_size=128 train.grad_accum=2" in message
    assert (
        "effective batch size of 256" in message
        and "No checkpoint was written from the failed step" in message
    )
    assert "data.eval_batch_size=512" in oom_message(1024, evaluating=True, device=CPU)
    assert "x train.grad_accum 4" in oom_message(64, 4, device=CPU)


def test_other_errors_pass_through_the_out_of_memory_guard():
    with pytest.raises(ValueError, match="shape"), out_of_memory_guard(8):
        raise ValueError("shape mismatch")
    assert is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def test_a_run_failing_out_of_memory_exits_1_with_the_message_and_no_traceback(monkeypatch, capsys):
    import trainlab.run

    def oom(*args, **kwargs):
        raise OutOfMemory(oom_message(64, device=CPU))

    monkeypatch.setattr(trainlab.run, "train", oom)
    code, _, err = cli_in_process(capsys, "train", "--quiet")
    assert code == 1
    assert "error: cpu out of memory in a training step at batch size 64" in " ".join(err.split())
    assert "Traceback" not in err


def test_mfu_figure_names_the_peak_it_is_measured_against():
    from trainlab.engine.perf import format_mfu, peak_flops

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        peak = peak_flops(CPU, torch.bfloat16, n=64, repeats=1)
    assert peak > 0 and peak_flops(CPU, torch.bfloat16, n=64, repeats=1) == peak  # cached per dtype
    assert format_mfu(0.25, 4e14, "bf16") == "MFU 25.0% of the measured bf16 peak (400.0 TFLOP/s)"


# ----------------------------------------------------------------------------- through the loop and the CLI
# These need the Trainer and run.py to call the functions above (the lead's wiring of issue 19); until
# then they are expected failures, and strict: once wired they pass and the mark must go.


class OutOfMemoryAt(nn.Module):
    """A model whose `step`-th training forward fails the way CUDA's allocator does."""

    def __init__(self, step: int):
        super().__init__()
        self.linear, self.step, self.calls = nn.Linear(4, 2), step, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls == self.step:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.linear(x)


def test_out_of_memory_in_the_loop_fails_the_run_and_last_pt_keeps_the_step_before(tmp_path):
    from trainlab.data.base import ArrayDataset
    from trainlab.engine.loop import Trainer

    g = torch.Generator().manual_seed(0)
    data = ArrayDataset(torch.randn(64, 4, generator=g), torch.randint(0, 2, (64,), generator=g))
    trainer = Trainer.from_datasets(
        OutOfMemoryAt(step=5),
        data,
        loss_fn=nn.CrossEntropyLoss(),
        batch_size=8,
        device="cpu",
        checkpoint_dir=tmp_path,
        checkpoint_every_n_steps=2,
        epochs=1,
    )
    with pytest.raises(OutOfMemory, match="batch size 8"):
        trainer.fit()
    assert trainer.status == "failed"
    assert ckpt.load_checkpoint(tmp_path / "last.pt")["global_step"] == 4  # not the failed step 5


def test_resuming_a_cuda_run_on_a_cpu_machine_needs_train_device_cpu(tmp_path, capsys, no_report):
    run = tmp_path / "run"
    args = [
        "data.source=iris",
        "data.batch_size=64",
        "model.name=mlp",
        "model.hidden=[8]",
        "train.epochs=2",
        "train.max_steps=2",  # 105 training samples: 2 batches, one epoch
        "--out",
        str(run),
        "--quiet",
    ]
    code, _, err = cli_in_process(capsys, "train", *args)  # train.device: auto, the CPU here
    assert code == 0, err
    as_if_written_on_cuda(run / "checkpoints" / "last.pt")
    code, _, err = cli_in_process(
        capsys, "train", *args[:-3], "train.max_steps=4", "--out", str(run), "--resume", "--quiet"
    )
    err = " ".join(err.split())
    assert code == 2 and "resume with train.device=cpu" in err and "Traceback" not in err
    code, _, err = cli_in_process(
        capsys,
        "train",
        *args[:-3],
        "train.max_steps=4",
        "train.device=cpu",
        "--out",
        str(run),
        "--resume",
        "--quiet",
    )
    assert code == 0, err
    assert "not be bit-identical" in " ".join(err.split())
    saved = ckpt.load_checkpoint(run / "checkpoints" / "last.pt")
    assert saved["global_step"] == 4 and saved["device"] == "cpu"


def test_a_deterministic_run_says_what_it_set(
    tmp_path, capsys, no_report, restore_backend_flags, monkeypatch
):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    code, out, err = cli_in_process(
        capsys,
        "train",
        "model.name=mlp",
        "train.max_steps=2",
        "train.device=cpu",
        "train.deterministic=true",
        "--out",
        str(tmp_path / "run"),
    )
    assert code == 0, err
    assert (
        "deterministic: torch.use_deterministic_algorithms(True" in out
        and "CUBLAS_WORKSPACE_CONFIG=:4096:8" in out
    )
    summary = __import__("json").loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["precision"] == "fp32" and summary["peak_flops_precision"] == "fp32"
