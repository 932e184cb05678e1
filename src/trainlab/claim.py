"""A run directory has one owner: `claim_run_dir` is how a training run takes its folder.

    run = claim_run_dir(out, resume=False)   # a RunDir, or an exit-2 error naming what is there
    ...train...
    run.release()       # or release_all() once the run is over; also done at interpreter exit

The lock is `<dir>/.trainlab.lock`, holding the owner's pid, host and start time (JSON), and held
with `fcntl.flock` for the life of the process: the kernel releases it when the owner dies however
it dies (kill -9 included), so a live owner is never taken over and a dead one always is. A second
writer into the same folder exits 2 at once naming the owner. A lock file whose flock is free was
left by a dead owner: it is taken over, with a one-line note.

What an existing folder may hold (checked before anything is written):
- nothing of a run (or only files trainlab does not write): a fresh run starts there;
- a run (a checkpoint, model.safetensors, or summary.json of a finished or interrupted run): only
  `--resume` continues it; without it the claim refuses, naming the files;
- the remains of a run killed before its first checkpoint (a dead owner's lock, or summary.json still
  saying "running"): a fresh start moves them into `<dir>/.aborted-<time>/` and says so in one line;
- files trainlab writes (config.yaml, metrics.jsonl, ...) that no run of this folder wrote (no
  summary.json beside them), e.g. `train proj/config.yaml --out proj`: refused, never overwritten.
  trainlab writes the resolved config to `<run dir>/config.yaml` and nowhere else, so the user
  chooses another folder (`--out proj/run`) rather than getting it under a surprising name.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from trainlab.errors import CheckpointError, TrainlabError
from trainlab.logging import RunDir

LOCK_NAME = ".trainlab.lock"
# Everything a run writes into its folder (the lock aside): what a fresh start moves out of a killed one.
RUN_FILES = (
    "summary.json",
    "metrics.jsonl",
    "config.yaml",
    "model.safetensors",
    "model_summary.txt",
    "layer_stats.jsonl",
    "report.html",
    "checkpoints",
    "tensorboard",
    "plots",
    "predictions",
)
_FINISHED = ("completed", "interrupted", "failed")

_held: dict[Path, RunClaim] = {}  # this process's claims, by resolved folder


class RunClaim:
    """The held lock of one run directory (an open file with an exclusive flock)."""

    def __init__(self, folder: Path, fd: int):
        self.folder, self.fd = folder, fd

    def release(self) -> None:
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.folder / LOCK_NAME)  # unlink while locked: no one else can hold this file
        os.close(self.fd)  # drops the flock
        self.fd = -1
        _held.pop(self.folder, None)


def _owner_text() -> str:
    return json.dumps(
        {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    )


def _describe(text: str) -> str:
    try:
        owner = json.loads(text)
        return f"pid {owner['pid']} on {owner['host']}, started {owner['started']}"
    except (ValueError, KeyError, TypeError):
        return "an unknown process"


def _lock(folder: Path) -> tuple[RunClaim, str | None]:
    """Take `folder`'s lock: (the claim, the description of a dead previous owner or None)."""
    path = folder / LOCK_NAME
    earlier = _held.get(folder.resolve())
    if earlier is not None:
        earlier.release()  # this process trains one run at a time: its earlier run into this folder ended
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            text = os.pread(fd, 4096, 0).decode(errors="replace")
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise TrainlabError(
                    f"{folder} is being written by another training run ({_describe(text)}); "
                    f"wait for it, or use --out for another folder"
                ) from None
            raise TrainlabError(f"cannot lock run directory {folder}: {e.strerror}") from None
        # The owner we waited for may have unlinked the file we opened: lock the one at the path.
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        os.close(fd)
    previous = os.pread(fd, 4096, 0).decode(errors="replace").strip()
    os.ftruncate(fd, 0)
    os.pwrite(fd, _owner_text().encode(), 0)
    claim = RunClaim(folder.resolve(), fd)
    _held[claim.folder] = claim
    return claim, (_describe(previous) if previous else None)


def _run_content(folder: Path) -> tuple[list[str], str | None, bool]:
    """(the run files present, summary.json's status, whether there is a checkpoint or exported weights)."""
    present = [f"checkpoints/{p.name}" for p in sorted((folder / "checkpoints").glob("*.pt"))]
    present += [
        name for name in RUN_FILES if (folder / name).exists() and not (name == "checkpoints" and present)
    ]
    status = None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        status = json.loads((folder / "summary.json").read_text()).get("status")
    weights = any(p.startswith("checkpoints/") for p in present) or "model.safetensors" in present
    return present, status, weights


def _move_aside(folder: Path, names: list[str]) -> Path:
    aside = folder / f".aborted-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while aside.exists():
        n += 1
        aside = aside.with_name(f"{aside.name.split('~')[0]}~{n}")
    aside.mkdir()
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.replace(folder / name, aside / name)
    return aside


def _check_content(
    folder: Path, resume: bool, restarted: bool, dead_owner: str | None, is_main: bool = True
) -> list[str]:
    """Refuse a folder holding a run (without --resume) or files of no run; returns the run files a fresh
    start must move aside (those of a run killed before its first checkpoint, or of a restarted job's
    attempt that saved none)."""
    present, status, weights = _run_content(folder)
    if not present:
        return []
    tops = list(dict.fromkeys(p.split("/")[0] for p in present))
    shown = ", ".join(present[:8]) + (" ..." if len(present) > 8 else "")
    if restarted:  # torchrun restarted this job: its own earlier attempt is there
        return [] if (folder / "checkpoints" / "last.pt").exists() else tops
    if weights or status in _FINISHED:
        if resume:
            return []
        what = f"a {status} run" if status in _FINISHED else "a run"
        how = (
            "use --resume to continue it, or --out for a new folder"
            if (folder / "checkpoints" / "last.pt").exists()
            else "it has no checkpoints/last.pt to resume from: use --out for a new folder, or remove it"
        )
        raise TrainlabError(
            f"{folder} already holds {what} ({shown}); {how} (trainlab never writes over an earlier run)"
        )
    if not is_main:  # rank 0 decides about partial and foreign files (it may be writing them already)
        return []
    if dead_owner or status == "running":
        return [] if resume else tops  # killed before its first checkpoint
    raise TrainlabError(
        f"{folder} holds {shown} but no run of it (no summary.json beside them): trainlab "
        f"would write over them; use --out for another folder, e.g. --out {folder / 'run'}"
    )


def claim_run_dir(
    path: str | Path, resume: bool = False, *, restarted: bool = False, is_main: bool = True
) -> RunDir | None:
    """Claim `path` for one training run: the RunDir (rank 0), or None on the other ranks of a torchrun
    job, which only check the folder (they must stop too when it is refused) and never lock it.

    `resume`: continue the run there (--resume); `restarted`: torchrun restarted this job after a failure
    (its folder holds the job's own earlier attempt). Raises TrainlabError (exit 2) naming what is there.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise TrainlabError(f"--out {folder}: a file is there, not a folder")
    if resume and not (folder / "checkpoints" / "last.pt").is_file():
        raise CheckpointError(
            f"--resume: no checkpoint to resume from at {folder / 'checkpoints' / 'last.pt'}"
        )
    if not is_main:
        if folder.is_dir():
            _check_content(folder, resume, restarted, dead_owner=None, is_main=False)
        return None
    run = RunDir(folder)  # creates the folder, checks that it is writable
    claim, dead_owner = _lock(folder)
    try:
        to_move = _check_content(folder, resume, restarted, dead_owner)
    except BaseException:
        claim.release()
        raise
    if to_move:
        aside = _move_aside(folder, to_move)
        why = f"by {dead_owner}" if dead_owner else "its summary.json still says running"
        print(
            f"note: {folder} held a run that stopped before its first checkpoint ({why}); "
            f"its files were moved to {aside.name}/ and this run starts clean"
        )
    elif dead_owner:
        print(
            f"note: took over the lock of {folder} left by a process that no longer holds it ({dead_owner})"
        )
    run.release = claim.release
    return run


@atexit.register
def release_all() -> None:
    """Give up every run directory this process claimed (at the end of `trainlab.train`, and at exit)."""
    for claim in list(_held.values()):
        claim.release()
