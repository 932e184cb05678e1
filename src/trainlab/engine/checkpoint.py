"""Checkpoints: atomic writes, a sha256 beside each file, and loading that never runs code.

Writing: the bytes go to a temp file in the same folder (flush, fsync), then its sha256 to a temp
sidecar, then both are renamed into place (the checkpoint first). A kill at any moment leaves the
previous checkpoint intact; a kill between the two renames leaves a finished temp sidecar that
`load_checkpoint` uses to complete the write. Leftover temp files are removed by `clean_temp_files`.

Loading: `torch.load(weights_only=True)` only — no fallback, whatever the environment says — so a
malicious pickle is refused without running anything. A checkpoint holds plain types only.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainlab.errors import CheckpointError

TMP_MARK = ".tmp-"


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_tmp(path: Path, data: bytes) -> Path:
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        path.parent.mkdir(
            parents=True, exist_ok=True
        )  # a run's checkpoints/ appears with its first checkpoint
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise CheckpointError(
            f"cannot write checkpoint {path}: {e.strerror} (the previous checkpoint is intact)"
        ) from None
    return tmp


def _fault_pause(path: Path) -> None:
    """Test-only fault hook: with TRAINLAB_FAULT_PAUSE_IN_SAVE=MARKER, the first save that replaces an
    existing checkpoint writes MARKER (holding the pid) once its temp file is written, then sleeps, so
    that a test can kill the process inside the save."""
    marker = os.environ.get("TRAINLAB_FAULT_PAUSE_IN_SAVE")
    if marker and path.exists() and not Path(marker).exists():
        Path(marker).write_text(str(os.getpid()))
        import time

        time.sleep(60)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    tmp = _write_tmp(path, data)
    _fault_pause(path)
    tmp_sha = _write_tmp(sha_path(path), f"{digest}  {path.name}\n".encode())
    os.replace(tmp, path)
    os.replace(tmp_sha, sha_path(path))
    _fsync_dir(path.parent)


def sha_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def clean_temp_files(folder: Path) -> None:
    for p in folder.glob(f".*{TMP_MARK}*"):
        with contextlib.suppress(OSError):
            p.unlink()


def _recorded_digest(path: Path) -> str | None:
    side = sha_path(path)
    return side.read_text().split()[0] if side.is_file() and side.read_text().strip() else None


@contextlib.contextmanager
def _no_unsafe_env():
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD must never turn safe loading off."""
    saved = {k: os.environ.pop(k) for k in ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD",) if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


# What every trainlab checkpoint holds (last.pt and best.pt alike are a Trainer's full state_dict), and
# the type of each: loading checks them, so that a foreign or damaged file is a CheckpointError naming
# what is missing instead of a KeyError deep inside a resume.
TRAINING_STATE: dict[str, type | tuple[type, ...]] = {
    "model": dict,
    "optimizer": dict,
    "epoch": int,
    "global_step": int,
    "best": dict,
    "history": list,
    "rng": dict,
}
# A run directory's checkpoints also hold the resolved config (a Python `Trainer`'s need not).
RUN_STATE: dict[str, type | tuple[type, ...]] = {**TRAINING_STATE, "config": dict}


def check_structure(state: Any, path: Path, need: dict[str, type | tuple[type, ...]]) -> None:
    """Refuse a checkpoint that lacks a key of `need` or holds a value of another type there."""
    if not isinstance(state, dict):
        raise CheckpointError(
            f"not a trainlab checkpoint: {path} holds a {type(state).__name__}, not a dict of "
            f"training state ({', '.join(need) or 'keys'})"
        )
    missing = [k for k in need if k not in state]
    if missing:
        raise CheckpointError(
            f"not a trainlab checkpoint: {path} has no {', '.join(missing)} "
            f"(it holds: {', '.join(map(str, list(state)[:10])) or 'nothing'})"
        )
    for key, kind in need.items():
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise CheckpointError(
                f"not a trainlab checkpoint: {path}: {key!r} is a {type(state[key]).__name__}"
            )
    if "model" in need:
        bad = [
            k
            for k, v in state["model"].items()
            if not isinstance(k, str) or not (isinstance(v, torch.Tensor) or k.endswith("_extra_state"))
        ]
        if bad or not state["model"]:
            raise CheckpointError(
                f"not a trainlab checkpoint: {path}: 'model' is not a state dict of named "
                f"tensors{f' (at {str(bad[0])[:60]!r})' if bad else ' (it is empty)'}"
            )
    if "optimizer" in need and not {"state", "param_groups"} <= set(state["optimizer"]):
        raise CheckpointError(
            f"not a trainlab checkpoint: {path}: 'optimizer' is not an optimizer's state dict "
            f"(no state and param_groups)"
        )


def load_checkpoint(
    path: str | Path, need: dict[str, type | tuple[type, ...]] = TRAINING_STATE
) -> dict[str, Any]:
    """The checkpoint at `path`, loaded safely and checked to hold `need` (default: a trainlab training
    state; {} for any dict of plain values)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    recorded = _recorded_digest(path)
    if recorded is not None and recorded != digest:
        # A kill between the two renames of a save leaves the new sidecar as a temp file.
        pending = [
            p
            for p in path.parent.glob(f".{sha_path(path).name}{TMP_MARK}*")
            if p.read_text().split()[:1] == [digest]
        ]
        if pending:
            os.replace(pending[0], sha_path(path))
        else:
            raise CheckpointError(
                f"corrupt checkpoint: {path} (its sha256 does not match {sha_path(path).name})"
            )
    try:
        with _no_unsafe_env():
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to load safely means we refuse the file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "Unsupported operand" in str(e):
            raise CheckpointError(
                f"unsafe checkpoint refused: {path} holds Python objects that loading would "
                f"execute or construct ({reason[:160]}); trainlab only loads plain tensors and "
                f"numbers"
            ) from None
        raise CheckpointError(f"corrupt checkpoint: {path} ({reason[:160]})") from None
    check_structure(state, path, need)
    return state


def nonfinite_tensors(state: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold NaN or Inf."""
    return [
        k
        for k, v in state.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]


# ----------------------------------------------------------------------------- RNG state, plain types


def rng_state() -> dict[str, Any]:
    """Every random stream a run draws from, in plain types: Python's and NumPy's as lists/ints, torch's
    CPU stream and (once CUDA has started) each CUDA device's stream as uint8 tensors on the CPU, the
    way `torch.get_rng_state()` / `torch.cuda.get_rng_state_all()` give them."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": _py_state_plain(random.getstate()),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # not started: nothing drawn from it
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]  # one per visible device
    return state


def _py_state_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores `rng_state()`. CUDA streams: each saved device's, on the devices this machine has; a
    checkpoint with CUDA streams on a machine without CUDA restores the rest and warns once."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if not cuda:
        return
    if not torch.cuda.is_available():
        warnings.warn(
            f"the checkpoint holds the random state of {len(cuda)} CUDA device(s) and this machine has "
            f"none: CUDA random streams not restored (dropout and augmentation on the CPU draw from the "
            f"CPU stream, which is restored)",
            stacklevel=2,
        )
        return
    n_here = torch.cuda.device_count()
    if len(cuda) != n_here:
        warnings.warn(
            f"the checkpoint holds the random state of {len(cuda)} CUDA device(s), this machine has "
            f"{n_here}: restored for the first {min(len(cuda), n_here)}",
            stacklevel=2,
        )
    for index, device_state in enumerate(cuda[:n_here]):
        torch.cuda.set_rng_state(torch.as_tensor(device_state, dtype=torch.uint8), index)
